"""Stage compress: cheaper-to-serve variants of the trained model, each scored on the test split.

Builds ``compress.variants`` under ``models/variants/`` (ONNX fp32, int8 static quantization by
ONNX Runtime), scores each beside the PyTorch model on the same test images and writes
``metrics/variants.json``: accuracy, delta vs fp32, latency, throughput, size, USD per 1k
predictions, and the variant ``serving.variant`` chooses; ``plots/variants.csv`` (a DVC plot)
and ``plots/variants.png`` draw accuracy against USD per 1k. The work is ``frugalml.ship.variants``.
"""

from __future__ import annotations

from frugalml.contracts import VARIANTS_PNG, VariantsReport
from frugalml.core import charts
from frugalml.core.config import Params
from frugalml.core.console import info
from frugalml.core.costs import CostMeter
from frugalml.ship import variants
from tasks._stage import stage_main


def run(cfg: Params, meter: CostMeter) -> VariantsReport:
    scores = variants.measure(cfg)
    chosen, why = variants.choose(cfg, scores)
    report = VariantsReport(variants=scores, chosen=chosen, why=why)
    report.write()
    variants.write_plot(report)
    charts.plot_variants(report, VARIANTS_PNG, cfg.gates.max_variant_accuracy_drop)
    for s in scores:
        if s.status == "built":
            info(
                f"compress: {s.name:5s} accuracy {s.accuracy:.4f} ({s.accuracy_delta:+.4f}), "
                f"p50 {s.latency_ms_p50:.2f} ms, {s.throughput_images_per_s:.0f} img/s at batch 16, "
                f"{s.size_bytes / 1e6:.2f} MB, ${s.usd_per_1k:.6f} per 1k"
            )
    info(f"compress: chosen {chosen} ({why})")
    return report


def main() -> None:
    stage_main("compress", run)


if __name__ == "__main__":
    main()
