"""``frugalml labels``: the learning curve, the audit, what to label next, importing labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from frugalml.cli.common import _cfg, app
from frugalml.core.console import err
from frugalml.core.errors import DataError

labels_app = typer.Typer(no_args_is_help=True, help="What more labels buy, and which labels are wrong.")
app.add_typer(labels_app, name="labels")


@labels_app.command("curve")
def labels_curve(
    as_json: bool = typer.Option(False, "--json", help="Print the curve as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the chart here (default reports/label_curve.png)."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE overrides for this command only."),
) -> None:
    """Test accuracy on nested subsets of the train labels, the fitted power law, and what 1.5x / 2x /
    4x the labels (or labels.target_accuracy) would buy and cost. Seconds: frozen-backbone features."""
    from frugalml.core.charts import plot_label_curve
    from frugalml.decide import labels  # lazy: torch, scikit-learn, scipy

    cfg, started = _cfg(set_), time.perf_counter()
    result = labels.curve(cfg, labels.labeled_features(cfg), progress=lambda line: err.print(line))
    labels.bill(cfg, result, started)
    result.write()
    png = plot or Path("reports/label_curve.png")
    plot_label_curve(result, png)
    if as_json:
        print(result.model_dump_json(indent=2))
        return
    _print_curve(result, png)


def _print_curve(c, png: Path) -> None:
    t = Table(title=f"More labels, by the fitted curve (backbone {c.backbone})", box=box.SIMPLE_HEAD)
    for col in ("train labels", "test accuracy", "95% band", "extra labels", "their cost"):
        t.add_column(col, justify="right")
    n_now = c.points[-1].n
    t.add_row(f"{n_now} (now)", f"{c.points[-1].accuracy:.4f}", "measured", "-", "-")
    for p in c.projections:
        t.add_row(
            f"{p.n} ({p.multiple:g}x)",
            f"{p.accuracy:.4f}",
            f"{p.low:.4f}-{p.high:.4f}",
            f"{p.extra_labels:,}",
            f"${p.labels_usd:,.2f}",
        )
    err.print(t)
    if c.target_n is None:
        err.print(
            f"target accuracy {c.target_accuracy}: beyond the fitted ceiling ({c.fit['a']:.4f}) for this head: "
            "more labels alone will not reach it (a better backbone or full fine-tuning might)"
        )
    else:
        err.print(
            f"target accuracy {c.target_accuracy}: about {c.target_extra_labels:,} more train labels "
            f"({c.target_n:,} in all), ${c.target_usd:,.2f} at ${c.labeling_usd_per_image:g} per label"
        )
    if c.backtest_error_pp is not None:
        fr = ", ".join(f"{f:g}" for f in c.backtest_fractions)
        err.print(
            f"backtest: fitted on fractions {fr} only, it predicts {c.backtest_predicted:.4f} at 1.0; "
            f"measured {c.backtest_measured:.4f} ({c.backtest_error_pp:+.2f} pp)"
        )
    err.print(f"{c.head}; {c.wall_s:.1f} s, ${c.usd:.6f} of compute; chart: {png}; record: {c.PATH}")


@labels_app.command("audit")
def labels_audit(
    as_json: bool = typer.Option(False, "--json", help="Print the audit as JSON."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE overrides for this command only."),
) -> None:
    """Labels that out-of-sample predictions contradict (k-fold on frozen-backbone features, then
    cleanlab): an HTML page with thumbnails, a CSV of every flagged image, metrics/label_audit.json."""
    from frugalml.contracts import LabelAudit
    from frugalml.decide import labels  # lazy: torch, scikit-learn, cleanlab

    cfg, started = _cfg(set_), time.perf_counter()
    report, issues = labels.audit(cfg, labels.audit_inputs(cfg))
    labels.bill(cfg, report, started)
    labels.write_audit(report, issues)
    if report.advice:
        err.print(f"labels audit: {report.advice}")
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    t = Table(title=f"Label audit: {report.issues} of {report.images} labels look wrong", box=box.SIMPLE_HEAD)
    for col in ("source file", "split", "given", "suggested", "quality"):
        t.add_column(col)
    for i in report.top[:15]:
        t.add_row(i.source_path, i.split, i.given, i.suggested, f"{i.quality:.4f}")
    err.print(t)
    err.print(
        f"{report.issue_ratio:.1%} flagged (${report.labels_usd_flagged:,.2f} of labels); out-of-sample accuracy "
        f"{report.out_of_sample_accuracy:.4f} ({report.folds}-fold); {report.wall_s:.1f} s, ${report.usd:.6f}; "
        f"report: {LabelAudit.HTML}, every image: {LabelAudit.CSV}"
    )


@labels_app.command("next")
def labels_next(
    budget: int = typer.Option(..., "--budget", help="How many images to label next."),
    as_json: bool = typer.Option(False, "--json", help="Print the batch as JSON."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE overrides for this command only."),
) -> None:
    """The images of labels.unlabeled to label next: the most uncertain for the current head, spread
    out by k-center greedy; a CSV, a Label Studio import file (presigned image URLs) and the price."""
    from frugalml.decide import annotation  # lazy: torch, scikit-learn
    from frugalml.decide.labels import bill

    cfg, started = _cfg(set_), time.perf_counter()
    batch, classes = annotation.next_batch(cfg, budget, progress=lambda line: err.print(line))
    bill(cfg, batch, started)
    annotation.write_next(batch, classes)
    if as_json:
        print(batch.model_dump_json(indent=2))
        return
    t = Table(title=f"Label next: {len(batch.chosen)} of {batch.candidates} new images", box=box.SIMPLE_HEAD)
    for col in ("rank", "source file", batch.uncertainty, "head's guess"):
        t.add_column(col)
    for c in batch.chosen[:20]:
        t.add_row(str(c.rank), c.source_path, f"{c.uncertainty:.4f}", c.predicted)
    err.print(t)
    if len(batch.chosen) < budget:
        err.print(f"only {len(batch.chosen)} new images in labels.unlabeled: all of them are in the batch")
    err.print(
        f"labeling them: ${batch.labels_usd:,.2f} at ${cfg.costs.prices.labeling_usd_per_image:g} per image; "
        f"{batch.wall_s:.1f} s, ${batch.usd:.6f} of compute. Label Studio: import {batch.TASKS} into a project "
        f"with the interface in {batch.CONFIG} (image URLs expire in {batch.url_expiry_s // 3600} h); "
        f"list: {batch.CSV}. Then `frugalml labels import EXPORT.json`."
    )


@labels_app.command("import")
def labels_import(
    export: Path = typer.Argument(..., help="A Label Studio JSON export of `labels next` tasks."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE overrides for this command only."),
) -> None:
    """Label Studio's answers become <class>/<file> images in data.source (S3 prefix or folder), with
    the task and annotator kept as provenance; the next run ingests and prices only those. Any
    problem (unknown class, missing image, malformed export): all are listed, nothing is written."""
    from frugalml.decide import annotation  # lazy

    cfg = _cfg(set_)
    annotation.check_destination(cfg)
    record, blobs, problems = annotation.plan_import(cfg, export)
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{export}: {len(problems)} problems, nothing imported:\n{shown}{more}")
    annotation.write_import(cfg, record, blobs)
    price = cfg.costs.prices.labeling_usd_per_image
    err.print(
        f"imported {len(record.labels)} labels into {cfg.data.source}"
        + (f" ({record.already_labeled} were labeled already)" if record.already_labeled else "")
        + f"; provenance: .frugalml/labels/imports/{record.id}.json. "
        + (
            f"The next `frugalml run` ingests them and prices them (${len(record.labels) * price:,.2f} at "
            f"${price:g} per label; `frugalml estimate` counts them)"
            if record.labels
            else "Nothing new to ingest."
        )
    )
