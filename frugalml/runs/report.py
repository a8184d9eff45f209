"""One self-contained HTML file per run and per sweep: what a team opens instead of JSON.

Charts are drawn by ``frugalml.core.charts`` (matplotlib) and inlined as PNG data URIs; the page has
no script and no style, font or image from elsewhere, so it opens offline and as an e-mail
attachment. A run's report reads the files its run record carries (``runs/<id>/...`` in the
store, or the workspace for the run that just finished) through one function, ``read(path)``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from frugalml.contracts import (
    EvalReport,
    IngestReport,
    RunRecord,
    SweepRecord,
    TrainReport,
    ValidationReport,
)
from frugalml.core import charts
from frugalml.core.config import GatesConfig

RUN_HTML = Path("reports/run.html")
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:12px 16px;margin:12px 0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f6f8fa}td.l,th.l{text-align:left}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.muted{color:#656d76}img{max-width:100%;height:auto;display:block;margin:8px 0}code{font-size:12px}
.kpi{display:inline-block;margin:4px 24px 4px 0}.kpi b{display:block;font-size:22px}
"""


@dataclass
class RunView:
    """What the run report shows, read from the run's files."""

    record: RunRecord
    eval: EvalReport | None = None
    validation: ValidationReport | None = None
    train: TrainReport | None = None
    ingest: IngestReport | None = None
    confusion: list[tuple[str, str]] = field(default_factory=list)  # (actual, predicted) per test image
    manifest_md5: str | None = None
    history: list[RunRecord] = field(default_factory=list)
    data_docs_href: str | None = None  # the validation's data docs, relative to where the report lands
    data_docs_uri: str | None = None  # ... or, where no relative link reaches them, their s3:// URI


def load_run(record: RunRecord, read: Callable[[str], bytes | None], history: list[RunRecord]) -> RunView:
    """The run's view from its files (``read(relative path)``: the bytes or None)."""

    def contract(model, path: Path):
        data = read(path.as_posix())
        return None if data is None else model.model_validate(json.loads(data))

    view = RunView(record=record, history=history)
    view.eval = contract(EvalReport, EvalReport.PATH)
    view.validation = contract(ValidationReport, ValidationReport.PATH)
    view.train = contract(TrainReport, TrainReport.PATH)
    view.ingest = contract(IngestReport, IngestReport.PATH)
    rows = read("plots/confusion.csv")
    if rows:
        view.confusion = [(r["actual"], r["predicted"]) for r in csv.DictReader(io.StringIO(rows.decode()))]
    lock = read("dvc.lock")
    if lock:
        import yaml

        outs = (yaml.safe_load(lock) or {}).get("stages", {}).get("ingest", {}).get("outs", [])
        view.manifest_md5 = next((o.get("md5") for o in outs if o.get("path") == "data/manifest.csv"), None)
    return view


# -- pieces -----------------------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _png(draw: Callable[[Path], None]) -> str:
    """A chart drawn by ``draw(path)`` as an inline <img>."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chart.png"
        draw(path)
        data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="chart" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list], left: int | set[int] = 1) -> str:
    """Numbers right-aligned; the columns in ``left`` (the first ``left`` if a number) left-aligned."""
    cols = set(range(left)) if isinstance(left, int) else left

    def cls(i: int) -> str:
        return ' class="l"' if i in cols else ""

    th = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(head)) if any(head) else ""
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table>{f'<tr>{th}</tr>' if th else ''}{body}</table>"


def _page(title: str, sections: list[str]) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body><main>"
        + "".join(sections)
        + "</main></body></html>\n"
    )


def _usd(v: float | None, digits: int = 5) -> str:
    return "-" if v is None else f"${v:.{digits}f}"


# -- the run report --------------------------------------------------------------------------------
def run_html(view: RunView) -> str:
    r = view.record
    status = f'<span class="{"ok" if r.status == "succeeded" else "bad"}">{_e(r.status)}</span>'
    kpis = [("status", status), ("compute", _usd(r.total_usd - r.labeling_usd)), ("labels", _usd(r.labeling_usd, 2))]
    if view.eval:
        kpis.insert(1, ("test accuracy", f"{view.eval.accuracy:.4f}"))
    if r.gate:
        css = "ok" if r.gate.decision == "accept" else "bad"
        kpis.insert(2, ("gate", f'<span class="{css}">{r.gate.decision}</span>'))
    head = (
        f"<h1>Run {_e(r.run_id)}</h1><p class='muted'>finished {_e(r.finished or '-')}, wall {r.wall_s:.0f} s"
        + (f", model {_e(r.package.model)} version {_e(r.package.version)}" if r.package and r.package.packaged else "")
        + (f"; {_e(r.message)}" if r.message else "")
        + "</p>"
        + "".join(f'<span class="kpi"><span class="muted">{k}</span><b>{v}</b></span>' for k, v in kpis)
    )
    return _page(
        f"frugalml run {r.run_id}",
        [
            head,
            _costs(view),
            _gate(view),
            _accuracy(view),
            _variants(view),
            _validation(view),
            _lineage(view),
            _trend(view),
        ],
    )


def _costs(view: RunView) -> str:
    r = view.record
    rows = [
        [_e(s.stage), _e(s.status), f"{s.wall_s:.1f}", _usd(s.usd - s.labeling_usd), _usd(s.labeling_usd, 2)]
        for s in r.stages
    ]
    rows.append(["<b>total</b>", "", f"{r.wall_s:.1f}", _usd(r.total_usd - r.labeling_usd), _usd(r.labeling_usd, 2)])
    chart = _png(lambda p: charts.plot_run_costs(r, p)) if any(s.usd > 0 for s in r.stages) else ""
    ratio = ""
    compute = r.total_usd - r.labeling_usd
    if r.labeling_usd and compute > 0:
        ratio = f"<p>Labels cost <b>{r.labeling_usd / compute:,.0f}x</b> the compute of this run.</p>"
    table = _table(["stage", "status", "wall s", "compute + S3", "labels"], rows)
    return f"<section><h2>Cost by stage</h2>{chart}{ratio}{table}</section>"


def _gate(view: RunView) -> str:
    g = view.record.gate
    if g is None:
        return "<section><h2>Gate</h2><p class='muted'>The gate did not run in this run.</p></section>"
    rows = [
        [
            _e(c.name),
            f"{c.value:.4g}",
            f"{_e(c.op)} {c.threshold:g}",
            f'<span class="{"ok" if c.passed else "bad"}">{"pass" if c.passed else "FAIL"}</span>',
            _e(c.note or ""),
        ]
        for c in g.checks
    ]
    verdict = f'<span class="{"ok" if g.decision == "accept" else "bad"}">{g.decision.upper()}</span>'
    return (
        f"<section><h2>Gate: {verdict}</h2><p>Variant judged: <code>{_e(g.variant)}</code>; serving "
        f"{_usd(g.serving_usd_per_1k, 6)} per 1k predictions; train {_usd(g.train_usd)}"
        + (f"; compared with production {_e(g.champion)}" if g.champion else "")
        + "</p>"
        + _table(["check (gates.*)", "value", "threshold", "result", "note"], rows, left=1)
        + "</section>"
    )


def _accuracy(view: RunView) -> str:
    e = view.eval
    if e is None:
        return "<section><h2>Accuracy</h2><p class='muted'>The evaluate stage did not run.</p></section>"
    rows = [
        [_e(c), f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}", str(s.support)]
        for c, s in sorted(e.per_class.items())
    ]
    chart = _png(lambda p: charts.plot_confusion(view.confusion, sorted(e.per_class), p)) if view.confusion else ""
    delta = ""
    if e.delta_vs_champion:
        delta = "<p>vs production: " + ", ".join(f"{_e(k)} {v:+.4f}" for k, v in e.delta_vs_champion.items()) + "</p>"
    return (
        f"<section><h2>Accuracy on {e.test_images} test images</h2>"
        f"<p>accuracy <b>{e.accuracy:.4f}</b>, macro-F1 {e.macro_f1:.4f}, top-3 {e.top3_accuracy:.4f}, "
        f"ECE {e.ece:.4f}; latency p50 {e.latency_ms_p50:.2f} ms, p95 {e.latency_ms_p95:.2f} ms (batch 1, "
        f"{_e(e.device)}); {e.model_size_bytes / 1e6:.1f} MB</p>{delta}{chart}"
        + _table(["class", "precision", "recall", "F1", "support"], rows)
        + "</section>"
    )


def _variants(view: RunView) -> str:
    v = view.record.variants
    if v is None:
        return "<section><h2>Variants</h2><p class='muted'>The compress stage did not run.</p></section>"
    rows = [
        [
            _e(s.name) + (" <b>(ships)</b>" if s.name == v.chosen else ""),
            _e(s.runtime),
            _e(s.status if s.status == "built" else f"skipped: {s.reason}"),
            "-" if s.accuracy is None else f"{s.accuracy:.4f}",
            "-" if s.accuracy_delta is None else f"{100 * s.accuracy_delta:+.2f}",
            f"{s.size_bytes / 1e6:.2f}",
            "-" if s.latency_ms_p50 is None else f"{s.latency_ms_p50:.2f}",
            "-" if s.throughput_images_per_s is None else f"{s.throughput_images_per_s:.0f}",
            "-" if s.usd_per_1k is None else f"{s.usd_per_1k:.2e}",
        ]
        for s in v.variants
    ]
    built = [s for s in v.variants if s.status == "built"]
    chart = _png(lambda p: charts.plot_variants(v, p, None)) if len(built) > 1 else ""
    head = ["variant", "runtime", "status", "accuracy", "pp vs fp32", "MB", "p50 ms", "img/s", "$ / 1k"]
    return (
        f"<section><h2>Variants: <code>{_e(v.chosen)}</code> ships</h2><p>{_e(v.why)}</p>{chart}"
        + _table(head, rows)
        + "</section>"
    )


def _validation(view: RunView) -> str:
    v = view.validation
    if v is None:
        return "<section><h2>Validation</h2><p class='muted'>The validate stage did not run.</p></section>"
    verdict = f'<span class="{"ok" if v.success else "bad"}">{"passed" if v.success else "failed"}</span>'
    link = f' <a href="{_e(view.data_docs_href)}">Data docs (Great Expectations)</a>' if view.data_docs_href else ""
    if not link and view.data_docs_uri:
        link = f" Data docs: <code>{_e(view.data_docs_uri)}</code>"
    rows = [
        [
            _e(x.name),
            f'<span class="{"ok" if x.success else "bad"}">{"pass" if x.success else x.severity}</span>',
            _e(_observed(x.observed)),
            _e(x.threshold),
        ]
        for x in v.expectations
    ]
    ingest = ""
    if view.ingest:
        c = view.ingest.counts
        ingest = (
            f"<p>{c.images} images in {c.classes} classes ({c.new} new, {c.rejected} rejected, "
            f"{c.duplicates} duplicates); splits "
            + ", ".join(f"{_e(k)} {n}" for k, n in sorted(c.per_split.items()))
            + "</p>"
        )
    warn = "".join(f"<p class='bad'>warning: {_e(w)}</p>" for w in v.warnings)
    return (
        f"<section><h2>Validation: {verdict}</h2>{ingest}{warn}<p>{v.images} images checked.{link}</p>"
        + _table(["expectation", "result", "observed", "threshold"], rows, left=4)
        + "</section>"
    )


def _observed(value) -> str:
    if isinstance(value, dict) and "unexpected_count" in value:
        examples = value.get("examples") or []
        return f"{value['unexpected_count']} unexpected" + (
            f", e.g. {', '.join(map(str, examples[:3]))}" if examples else ""
        )
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value)[:80] if not isinstance(value, (int, str)) else str(value)


def _lineage(view: RunView) -> str:
    r, t = view.record, view.train
    params = r.params or {}
    rows = [
        ["data", _e((params.get("data") or {}).get("source", "-"))
         + (f" (manifest md5 <code>{_e(view.manifest_md5)}</code>)" if view.manifest_md5 else "")],
        ["code", f"git <code>{_e(r.git_commit or '-')}</code>" + (" (uncommitted changes)" if r.git_dirty else "")],
        ["overrides", _e(" ".join(r.overrides) or "none")],
    ]  # fmt: skip
    if t is not None:
        p = t.pretrained
        weights = f"{_e(t.arch)} from {_e(p.kind)}"
        if p.package:
            weights += f", package {_e(p.package)} {_e(p.package_version or '')}"
        if p.sha256:
            weights += f", sha256 <code>{_e(p.sha256[:16])}</code>"
        if p.source:
            weights += f" (read from the {_e(p.source)})"
        rows.append(["weights", weights])
        run = f"{t.epochs_run} of {t.epochs} epochs ({_e(t.stopped)}), {t.train_images} images"
        rows.append(["training", f"{_e(t.finetune)}, {run}, {_e(t.device)} {_e(t.precision)}"])
    if r.package and r.package.packaged:
        rows.append(["bento", _e(r.package.bento_uri)])
    rows.append(["run record", _e(r.record_uri or "-")])
    return "<section><h2>Lineage</h2>" + _table(["", ""], rows, left=2) + "</section>"


def _trend(view: RunView) -> str:
    runs = view.history[-10:]
    if len(runs) < 2:
        return "<section><h2>Recent runs</h2><p class='muted'>The first run: no trend yet.</p></section>"
    chart = _png(lambda p: charts.plot_cost_per_run(runs, p))
    rows = []
    for h in reversed(runs):
        acc = next((c.value for c in (h.gate.checks if h.gate else []) if c.name == "min_accuracy"), None)
        rows.append(
            [
                _e(h.run_id) + (" (this run)" if h.run_id == view.record.run_id else ""),
                _e(h.status),
                "-" if acc is None else f"{acc:.4f}",
                _e(h.gate.decision if h.gate else "-"),
                _usd(h.total_usd - h.labeling_usd),
                _usd(h.labeling_usd, 2),
            ]
        )
    table = _table(["run", "status", "accuracy", "gate", "compute", "labels"], rows)
    return f"<section><h2>Recent runs</h2>{chart}{table}</section>"


# -- the sweep report ------------------------------------------------------------------------------
def why_not(trial, rec) -> str:
    """Why a trial is not the recommendation."""
    if rec is not None and trial.number == rec.number:
        return "recommended: the cheapest trial that passes every gate"
    if trial.state == "pruned":
        return "pruned: trailed the others at an early epoch"
    if trial.state != "complete":
        return f"{trial.state}: {trial.message[:80]}"
    if trial.gate and trial.gate.decision != "accept":
        return "rejected by gates." + ", gates.".join(trial.gate.failed)
    if rec is None:
        return "no gate decision"
    if trial.usd >= rec.usd:
        return f"passes, but costs {trial.usd / rec.usd:.1f}x the recommended" if rec.usd else "passes, costs more"
    return "passes and costs less, but stopped before its last epoch"


def sweep_html(record: SweepRecord, gates: GatesConfig) -> str:
    rec = next((t for t in record.trials if t.number == record.recommended), None)
    scored = [t for t in record.trials if t.accuracy is not None]
    chart = (
        _png(lambda p: charts.plot_frontier(record, p, gates))
        if scored
        else "<p class='muted'>No trial has finished with a score yet: nothing to draw.</p>"
    )
    rows = [
        [
            str(t.number + 1),
            _e(" ".join(o.split(".", 1)[-1] for o in t.overrides)),
            _e(t.state),
            "-" if t.accuracy is None else f"{t.accuracy:.4f}",
            _usd(t.usd),
            f"{t.wall_s:.0f}",
            "front" if t.number in record.front else "",
            _e(why_not(t, rec)),
        ]
        for t in record.trials
    ]
    verdict = (
        f"<p>Recommended: trial {rec.number + 1}, <code>{_e(' '.join(rec.overrides))}</code>: accuracy "
        f"{rec.accuracy:.4f} for {_usd(rec.usd)}. <code>frugalml frontier --apply</code> then "
        "<code>frugalml run</code> trains it.</p>"
        if rec
        else "<p class='bad'>No trial passes every gate: see each trial's reason below.</p>"
    )
    parts = [f"data preparation {_usd(record.prep_usd)}"] if record.prep_usd else []
    parts += [f"the screen {_usd(record.screen_usd)}"] if record.screen else []
    prep = f" ({' and '.join(parts)} of it)" if parts else ""
    head = (
        f"<h1>Sweep {_e(record.id)}</h1><p class='muted'>{_e(record.status)}, {len(record.trials)} trials, "
        f"{_usd(record.spent_usd)} spent of ${record.budget_usd:g}{prep}; space "
        f"<code>{_e(json.dumps(record.space))}</code></p>"
    )
    table = _table(["trial", "settings", "state", "accuracy", "USD", "wall s", "", "why"], rows, left=3)
    table = table.replace('<td class="">front', '<td class="l">front')
    return _page(
        f"frugalml sweep {record.id}",
        [head, f"<section><h2>Recommendation</h2>{verdict}</section>",
         f"<section><h2>Accuracy against cost</h2>{chart}</section>",
         *_screen_section(record),
         f"<section><h2>Trials</h2>{table}</section>"],
    )  # fmt: skip


def _screen_section(record: SweepRecord) -> list[str]:
    """The starts screened before the trials (``sweep.screen``), best first."""
    if not record.screen:
        return []
    rows = [
        [
            _e(" ".join(r.overrides)),
            "-" if r.val_accuracy is None else f"{r.val_accuracy:.4f}",
            _usd(r.usd),
            f"{r.wall_s:.0f}",
            str(r.features_cached),
            _e(r.message),
        ]
        for r in sorted(record.screen, key=lambda r: -(r.val_accuracy if r.val_accuracy is not None else -1.0))
    ]
    head = ["start", "head val accuracy", "USD", "wall s", "features cached", "why not screened"]
    if not any(r.message for r in record.screen):  # the last column only when a start failed
        head, rows = head[:-1], [row[:-1] for row in rows]
    table = _table(head, rows, left={0, 5})
    return [
        f"<section><h2>Screen</h2><p>Before the trials, the head alone on each start's frozen features "
        f"({_usd(record.screen_usd)} in all); the best start's deeper fine-tunings ran first.</p>{table}</section>"
    ]


# -- writing them ----------------------------------------------------------------------------------
def _local(path: str) -> bytes | None:
    p = Path(path)
    return p.read_bytes() if p.is_file() else None


def write_run_report(record: RunRecord, store, out: Path = RUN_HTML) -> Path:
    """The report of the run that just finished, from the workspace's files: ``reports/run.html``,
    and ``runs/<id>/report.html`` in the store (beside the files it links to)."""
    from frugalml.core.fsutil import atomic_write_text
    from frugalml.runs.records import recent_records

    history = [r for r in recent_records(store) if r.run_id != record.run_id] + [record]
    view = load_run(record, _local, history)
    docs = Path("reports/validation/index.html")
    view.data_docs_href = "validation/index.html" if docs.is_file() and out == RUN_HTML else None
    page = run_html(view)
    atomic_write_text(out, page)
    if store is not None:
        remote = page.replace('href="validation/index.html"', 'href="reports/validation/index.html"')
        store.put_bytes(f"runs/{record.run_id}/report.html", remote.encode(), content_type="text/html; charset=utf-8")
    return out


def write_stored_run_report(store, run_id: str, out: Path) -> Path:
    """The report of any recorded run, from the files its record carries in the store."""
    from frugalml.core.fsutil import atomic_write_text
    from frugalml.runs.records import get_record, recent_records

    record = get_record(store, run_id)
    carried = set(record.files)

    def read(path: str) -> bytes | None:
        return store.get_bytes(f"runs/{run_id}/{path}")[0] if path in carried else None

    history = [r for r in recent_records(store, 30) if r.run_id <= run_id][-10:]
    view = load_run(record, read, history)
    if "reports/validation/index.html" in carried:
        view.data_docs_uri = store.uri(f"runs/{run_id}/reports/validation/index.html")
    page = run_html(view)
    atomic_write_text(out, page)
    store.put_bytes(f"runs/{run_id}/report.html", page.encode(), content_type="text/html; charset=utf-8")
    return out


def write_sweep_report(record: SweepRecord, gates: GatesConfig, store, out: Path) -> Path:
    """``out`` (reports/sweep.html), and ``sweeps/<id>/report.html`` in the store."""
    from frugalml.core.fsutil import atomic_write_text

    page = sweep_html(record, gates)
    atomic_write_text(out, page)
    if store is not None:
        store.put_bytes(f"sweeps/{record.id}/report.html", page.encode(), content_type="text/html; charset=utf-8")
    return out
