"""Charts people would rather look at than read, drawn with matplotlib (Agg, PNG, atomic write).

matplotlib is imported inside each function: it adds about half a second to start-up, and the
commands that draw nothing should not pay for it.
"""

from __future__ import annotations

import io
from pathlib import Path

from frugalml.contracts import STAGES, LabelCurve, RunRecord, SweepRecord, VariantsReport
from frugalml.core.config import GatesConfig
from frugalml.core.fsutil import atomic_write_bytes

STAGE_COLORS = dict(zip(STAGES, ("#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd")))
OTHER_COLOR = "#999999"  # dvc push and orchestration
LABEL_COLOR = "#dd8452"


def _figure(width: float, height: float, ncols: int = 1):
    import matplotlib  # lazy: matplotlib: ~1.5 s to import; only charts pay for it

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt  # lazy: matplotlib: ~1.5 s to import; only charts pay for it

    return plt, *plt.subplots(1, ncols, figsize=(width, height), squeeze=False)


def _save(plt, fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_cost_per_run(records: list[RunRecord], path: Path) -> None:
    """Two panels per run: compute + S3 stacked by stage (linear $), and labeling vs compute
    on a log scale (they differ by orders of magnitude, so one linear axis would hide compute)."""
    plt, fig, axes = _figure(max(8.0, 3.5 + 0.9 * len(records)), 4.2, ncols=2)
    by_stage, by_kind = axes[0]
    x = list(range(len(records)))
    names = [r.run_id[4:8] + " " + r.run_id[9:13] for r in records]
    bottom = [0.0] * len(records)
    for stage in (*STAGES, "other"):
        values = [
            sum(
                s.usd - s.labeling_usd
                for s in r.stages
                if (s.stage == stage) or (stage == "other" and s.stage not in STAGES)
            )
            for r in records
        ]
        if any(values):
            by_stage.bar(x, values, bottom=bottom, label=stage, color=STAGE_COLORS.get(stage, OTHER_COLOR))
            bottom = [b + v for b, v in zip(bottom, values)]
    for i, r in enumerate(records):
        note = "no change" if r.no_change else ("" if r.status == "succeeded" else r.status)
        by_stage.annotate(f"{r.wall_s:.0f} s\n{note}".strip(), (i, bottom[i]), ha="center", va="bottom", fontsize=7)
    by_stage.set(title="Compute + S3 by stage", ylabel="USD per run", xticks=x)
    by_stage.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    by_stage.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    compute = [r.total_usd - r.labeling_usd for r in records]
    labeling = [r.labeling_usd for r in records]
    w = 0.4
    by_kind.bar([i - w / 2 for i in x], compute, w, label="compute + S3", color=STAGE_COLORS["train"])
    by_kind.bar([i + w / 2 for i in x], labeling, w, label="labeling", color=LABEL_COLOR)  # $0 draws nothing
    positive = [v for v in compute + labeling if v > 0]
    by_kind.set_yscale("log")
    if positive:
        by_kind.set_ylim(min(positive) / 3, max(positive) * 3)
    by_kind.set(title="Labeling vs compute (log scale)", ylabel="USD per run", xticks=x)
    by_kind.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    by_kind.legend(fontsize=7)
    _save(plt, fig, path)


def plot_frontier(record: SweepRecord, path: Path, gates: GatesConfig) -> None:
    """USD vs accuracy per trial (and p95 latency vs accuracy), the Pareto front joined, the
    accuracy gate drawn, the recommendation circled."""
    plt, fig, axes = _figure(10.0, 4.2, ncols=2)
    cost_ax, lat_ax = axes[0]
    obj = record.objective
    scored = [t for t in record.trials if t.score(obj) is not None]
    colors = {"complete": STAGE_COLORS["ingest"], "pruned": OTHER_COLOR}
    for ax, xs, xlabel in (
        (cost_ax, [t.usd for t in scored], "USD per trial"),
        (lat_ax, [t.latency_ms_p95 or 0.0 for t in scored], "p95 latency, ms (batch 1)"),
    ):
        for t, x in zip(scored, xs):
            passed = t.gate is not None and t.gate.decision == "accept"
            y = t.score(obj)
            ax.scatter(x, y, color=colors.get(t.state, OTHER_COLOR), marker="o" if passed else "x", s=36)
            ax.annotate(str(t.number + 1), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        floor, name = (
            (gates.min_macro_f1, "min_macro_f1") if obj == "macro_f1" else (gates.min_accuracy, "min_accuracy")
        )
        if floor is not None:
            ax.axhline(floor, color=STAGE_COLORS["train"], linestyle="--", linewidth=1)
            ax.text(ax.get_xlim()[0], floor, f" gates.{name}", va="bottom", fontsize=7)
        ax.set(xlabel=xlabel, ylabel="test macro-F1" if obj == "macro_f1" else "test accuracy")
    front = [next(t for t in scored if t.number == n) for n in record.front]
    cost_ax.plot([t.usd for t in front], [t.score(obj) for t in front], color=STAGE_COLORS["ingest"], linewidth=1)
    if gates.max_train_usd is not None:
        cost_ax.axvline(gates.max_train_usd, color=STAGE_COLORS["train"], linestyle=":", linewidth=1)
    rec = next((t for t in scored if t.number == record.recommended), None)
    if rec is not None:
        cost_ax.scatter(rec.usd, rec.score(obj), s=220, facecolors="none", edgecolors=LABEL_COLOR, linewidths=2)
    cost_ax.set_title(f"Sweep {record.id}: Pareto front (line), recommended (ring)", fontsize=9)
    lat_ax.set_title("o: passes the gates, x: rejected; grey: pruned", fontsize=9)
    _save(plt, fig, path)


def plot_label_curve(curve: LabelCurve, path: Path) -> None:
    """Test accuracy vs labeled train images: the measured points, the fitted power law out to
    4x the labels with its band at 1.5x/2x/4x, the target drawn, a second axis in USD of labels."""
    import numpy as np

    plt, fig, axes = _figure(7.0, 4.2)
    ax = axes[0][0]
    a, b, c = curve.fit["a"], curve.fit["b"], curve.fit["c"]
    ns = [p.n for p in curve.points]
    grid = np.linspace(min(ns), max(p.n for p in curve.projections), 200)
    ax.plot(
        grid, a - b * grid**-c, color=STAGE_COLORS["train"], linewidth=1.2, label=f"fit: {a:.3f} - {b:.3g} n^-{c:.2f}"
    )
    ax.scatter(ns, [p.accuracy for p in curve.points], color=STAGE_COLORS["ingest"], zorder=3, label="measured")
    for p in curve.projections:
        ax.errorbar(
            p.n,
            p.accuracy,
            yerr=[[p.accuracy - p.low], [p.high - p.accuracy]],
            fmt="s",
            color=LABEL_COLOR,
            capsize=3,
            markersize=4,
        )
        ax.annotate(
            f"{p.multiple:g}x: +${p.labels_usd:,.0f}",
            (p.n, p.accuracy),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=7,
        )
    ax.axhline(curve.target_accuracy, color=OTHER_COLOR, linestyle="--", linewidth=1)
    ax.text(grid[0], curve.target_accuracy, " labels.target_accuracy", va="bottom", fontsize=7)
    ax.set(xlabel="labeled train images", ylabel="test accuracy")
    usd = ax.secondary_xaxis(
        "top",
        functions=(lambda n: n * curve.labeling_usd_per_image, lambda d: d / max(curve.labeling_usd_per_image, 1e-12)),
    )
    usd.set_xlabel("USD of train labels", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    _save(plt, fig, path)


def plot_variants(report: VariantsReport, path: Path, max_drop: float | None) -> None:
    """Test accuracy vs USD per 1k predictions per built variant (marker area: file size), the
    allowed accuracy drop below fp32 drawn, the chosen variant circled. Each variant's figures
    are in the legend, not beside its marker: variants of one model sit close together (ONNX and
    int8 often on the same pixel), and labels at the points printed over each other."""
    plt, fig, axes = _figure(7.0, 4.6)
    ax = axes[0][0]
    built = [v for v in report.variants if v.status == "built"]
    biggest = max(v.size_bytes for v in built)
    colours = {"fp32": "#4c72b0", "onnx": "#55a868", "int8": "#c44e52"}
    markers = {"fp32": "o", "onnx": "s", "int8": "D"}
    for v in built:
        ax.scatter(
            v.usd_per_1k, v.accuracy, s=40 + 400 * v.size_bytes / biggest, color=colours.get(v.name, OTHER_COLOR),
            marker=markers.get(v.name, "o"), alpha=0.7,
            label=f"{v.name} ({v.runtime}): {v.size_bytes / 1e6:.1f} MB, p50 {v.latency_ms_p50:.2f} ms, "
            f"accuracy {v.accuracy:.4f}",
        )  # fmt: skip
    fp32 = next(v for v in built if v.name == "fp32")
    if max_drop is not None:
        ax.axhline(
            fp32.accuracy - max_drop, color="#8172b2", linestyle="--", linewidth=1,
            label="fp32 - gates.max_variant_accuracy_drop",
        )  # fmt: skip
    chosen = report.chosen_score()
    ax.scatter(
        chosen.usd_per_1k, chosen.accuracy, s=600, facecolors="none", edgecolors=LABEL_COLOR, linewidths=2,
        label=f"ships: {chosen.name}",
    )  # fmt: skip
    ax.set_xlim(0, 1.15 * max(v.usd_per_1k for v in built))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.margins(y=0.3)
    ax.set(xlabel="USD per 1k predictions (batch 1)", ylabel="test accuracy")
    legend = ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)
    for handle in legend.legend_handles:  # one marker size in the legend: the area is size, not identity
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([40])
    skipped = [f"{v.name}: {v.reason}" for v in report.variants if v.status == "skipped"]
    title = f"Variants: {report.chosen} ships (ringed)" + (f"; skipped {'; '.join(skipped)}" if skipped else "")
    ax.set_title(title[:110], fontsize=9)
    _save(plt, fig, path)


def plot_confusion(pairs: list[tuple[str, str]], classes: list[str], path: Path) -> None:
    """The confusion matrix: rows the actual class, columns the predicted one, each cell's count
    written in it and its colour the share of its row (a colour scale beside)."""
    n = len(classes)
    index = {c: i for i, c in enumerate(classes)}
    counts = [[0] * n for _ in range(n)]
    for actual, predicted in pairs:
        if actual in index and predicted in index:
            counts[index[actual]][index[predicted]] += 1
    share = [[c / max(1, sum(row)) for c in row] for row in counts]
    side = max(4.5, min(12.0, 2.5 + 0.55 * n))
    plt, fig, axes = _figure(side + 1.2, side)
    ax = axes[0][0]
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if counts[i][j]:
                colour = "white" if share[i][j] > 0.6 else "black"
                ax.text(j, i, str(counts[i][j]), ha="center", va="center", fontsize=8 if n <= 12 else 6, color=colour)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="actual class", title=f"Confusion matrix ({len(pairs)} test images)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the actual class")
    _save(plt, fig, path)


def plot_run_costs(record: RunRecord, path: Path) -> None:
    """One run: compute + S3 per stage (bars), and labels against compute on a log scale."""
    plt, fig, axes = _figure(10.0, 3.8, ncols=2)
    by_stage, by_kind = axes[0]
    rows = [s for s in record.stages if s.usd - s.labeling_usd > 0]
    names = [s.stage for s in rows]
    values = [s.usd - s.labeling_usd for s in rows]
    by_stage.barh(names, values, color=[STAGE_COLORS.get(n, OTHER_COLOR) for n in names])
    for i, (v, s) in enumerate(zip(values, rows)):
        by_stage.annotate(f" ${v:.5f}, {s.wall_s:.0f} s", (v, i), va="center", fontsize=7)
    by_stage.invert_yaxis()
    by_stage.set_xlim(0, 1.45 * max(values, default=1))
    by_stage.set(title="Compute + S3 by stage", xlabel="USD")
    compute, labels = record.total_usd - record.labeling_usd, record.labeling_usd
    kinds = [("compute + S3", compute, STAGE_COLORS["train"]), ("labels", labels, LABEL_COLOR)]
    kinds = [k for k in kinds if k[1] > 0]
    by_kind.bar([k[0] for k in kinds], [k[1] for k in kinds], color=[k[2] for k in kinds])
    for i, k in enumerate(kinds):
        by_kind.annotate(f"${k[1]:.5g}", (i, k[1]), ha="center", va="bottom", fontsize=8)
    if kinds:
        by_kind.set_yscale("log")
        by_kind.set_ylim(min(k[1] for k in kinds) / 3, max(k[1] for k in kinds) * 5)
    by_kind.set(title="Labels vs compute (log scale)", ylabel="USD")
    _save(plt, fig, path)
