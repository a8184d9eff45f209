"""Validation: a Great Expectations 1.x suite over the manifest and the prepared images.

``validate(cfg)`` runs every expectation (each with its observed value, threshold and pass),
renders the Great Expectations HTML report under ``reports/validation/`` and returns the
``ValidationReport``; ``tasks/validate.py`` writes it and turns a failure into exit code 3.
Label drift is measured against the last validated dataset of the same model, kept in the
store (``validation/<model>/last.json``) by ``save_reference`` once a run passed.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable

from PIL import Image

from frugalml.contracts import (
    MANIFEST,
    PREPARED,
    VALIDATION_HTML,
    VALIDATION_REPORT,
    Expectation,
    IngestReport,
    ValidationReport,
    read_manifest,
)
from frugalml.core.config import Params
from frugalml.core.console import Progress, info
from frugalml.core.errors import DataError
from frugalml.core.lineage import file_hash
from frugalml.core.store import Store
from frugalml.data.shards import ShardReader

HTML_DIR = VALIDATION_HTML


def _frames(cfg: Params, audit: Callable[[Params], float] | None = None):
    import pandas as pd  # lazy: pandas: ~0.5 s to import

    rows = read_manifest()
    if not rows:
        raise DataError(f"{MANIFEST} is missing or empty: run the ingest stage first")
    images = pd.DataFrame(rows)
    for col in ("width", "height", "bytes"):
        images[col] = images[col].astype(int)

    reader = ShardReader(PREPARED)
    decodes = []
    progress = Progress("validate: decoding", len(images), "images")
    for row in rows:
        try:
            with Image.open(io.BytesIO(reader.read_row(row))) as im:
                im.load()
            decodes.append(True)
        except Exception:  # noqa: BLE001 - any failure means "does not decode"
            decodes.append(False)
        progress.update()
    progress.close()
    images["decodes"] = decodes

    counts = images.groupby("label").size()
    classes = pd.DataFrame({"label": counts.index.astype(str), "count": counts.values.astype(int)})
    hashes = images.groupby("sha256")["split"].nunique().reset_index(name="n_splits")
    ingest = IngestReport.read_if_exists()
    reference = load_reference(cfg)
    shares = {str(k): float(v) / float(counts.sum()) for k, v in counts.items()}
    drift = label_drift(shares, reference["shares"]) if reference else 0.0
    dataset = pd.DataFrame(
        [
            {
                "imbalance_ratio": float(counts.max() / counts.min()),
                "reject_ratio": ingest.counts.reject_ratio if ingest else 0.0,
                "n_classes": int(len(counts)),
                "label_drift": drift,
                "label_issue_ratio": audit(cfg) if audit and cfg.validate_.max_label_issue_ratio is not None else 0.0,
            }
        ]
    )
    return {
        "images": images,
        "classes": classes,
        "hashes": hashes,
        "dataset": dataset,
        "_shares": shares,
        "_reference": reference,
    }


def label_drift(p: dict[str, float], q: dict[str, float]) -> float:
    """Total variation distance between two label distributions (0 = same, 1 = disjoint)."""
    return round(0.5 * sum(abs(p.get(c, 0.0) - q.get(c, 0.0)) for c in set(p) | set(q)), 6)


def _reference_key(cfg: Params) -> str:
    return f"validation/{cfg.model.name}/last.json"


def load_reference(cfg: Params) -> dict | None:
    store = Store.optional(cfg.storage)  # no store configured: drift has no reference to compare with
    if store is None or not store.exists(_reference_key(cfg)):
        return None
    return store.get_json(_reference_key(cfg))


def save_reference(cfg: Params, report: ValidationReport, run_id: str) -> None:
    """Make this (passed) dataset the reference the next run's label drift is measured against."""
    store = Store.optional(cfg.storage)
    if store is not None:
        store.put_json(
            _reference_key(cfg),
            {
                "shares": report.label_distribution,
                "images": report.images,
                "run_id": run_id,
                "manifest_sha256": file_hash(MANIFEST),
            },
        )


def _suites(cfg: Params, has_reference: bool = False):
    import great_expectations as gx  # lazy: Great Expectations: ~4 s to import

    v = cfg.validate_
    E = gx.expectations
    suites = {
        "images": [
            ("labels present", E.ExpectColumnValuesToNotBeNull(column="label")),
            ("every image decodes", E.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True])),
            (
                "width within bounds",
                E.ExpectColumnValuesToBeBetween(column="width", min_value=v.min_width, max_value=v.max_width),
            ),
            (
                "height within bounds",
                E.ExpectColumnValuesToBeBetween(column="height", min_value=v.min_height, max_value=v.max_height),
            ),
            ("allowed modes", E.ExpectColumnValuesToBeInSet(column="mode", value_set=list(v.allowed_modes))),
        ],
        "classes": [
            (
                "minimum images per class",
                E.ExpectColumnMinToBeBetween(column="count", min_value=v.min_images_per_class),
            ),
        ],
        "hashes": [
            ("no content hash in two splits", E.ExpectColumnMaxToBeBetween(column="n_splits", max_value=1)),
        ],
        "dataset": [
            (
                "maximum class-imbalance ratio",
                E.ExpectColumnMaxToBeBetween(column="imbalance_ratio", max_value=v.max_imbalance_ratio),
            ),
            ("maximum reject ratio", E.ExpectColumnMaxToBeBetween(column="reject_ratio", max_value=v.max_reject_ratio)),
        ],
    }
    if has_reference:
        suites["dataset"].append(
            (
                "label-distribution drift",
                E.ExpectColumnMaxToBeBetween(column="label_drift", max_value=v.max_label_drift),
            )
        )
    if v.max_label_issue_ratio is not None:
        suites["dataset"].append(
            (
                "label issue ratio",
                E.ExpectColumnMaxToBeBetween(column="label_issue_ratio", max_value=v.max_label_issue_ratio),
            )
        )
    if v.expected_classes is not None:
        suites["classes"].append(
            (
                "expected class set",
                E.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=list(v.expected_classes)),
            )
        )
    return suites


def _threshold(kwargs: dict) -> str:
    lo, hi, values = kwargs.get("min_value"), kwargs.get("max_value"), kwargs.get("value_set")
    if values is not None:
        return f"in {sorted(values, key=str)}"
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}"
    if lo is not None:
        return f">= {lo:g}"
    return f"<= {hi:g}" if hi is not None else "no exceptions"


def _observed(result: dict):
    if "observed_value" in result:
        val = result["observed_value"]
        return val.item() if hasattr(val, "item") else val
    return {
        "unexpected_count": int(result.get("unexpected_count", 0)),
        "examples": [x.item() if hasattr(x, "item") else x for x in result.get("partial_unexpected_list", [])[:5]],
    }


def _gx_context():
    """An ephemeral Great Expectations context that renders its data docs into ``HTML_DIR``.

    Great Expectations is imported here, not at module level: it takes seconds to import."""
    import great_expectations as gx  # lazy: Great Expectations: ~4 s to import
    from great_expectations.data_context.types.base import (  # lazy: Great Expectations: ~4 s to import
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    shutil.rmtree(HTML_DIR, ignore_errors=True)
    HTML_DIR.mkdir(parents=True, exist_ok=True)
    site = {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(HTML_DIR.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    # Ours is the only docs site: get_context(mode="ephemeral") alone adds one in a fresh /tmp
    # folder that nothing removes (every validation left one behind)
    project = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={"frugalml": site},
    )
    ctx = gx.get_context(project_config=project, mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # they flood DVC and Prefect logs
    return ctx


def _check(label: str, asset: str, r, cfg: Params) -> Expectation:
    cfg_ = r.expectation_config
    v = cfg.validate_
    warn = (label == "label-distribution drift" and v.drift_action == "warn") or (
        label == "label issue ratio" and v.label_issue_action == "warn"
    )
    return Expectation(
        name=label,
        asset=asset,
        expectation=cfg_.type,
        column=cfg_.kwargs.get("column"),
        observed=_observed(r.result),
        threshold=_threshold(cfg_.kwargs),
        success=bool(r.success),
        severity="warn" if warn else "fail",
    )


def _run_suites(cfg: Params, frames: dict) -> list[Expectation]:
    """Every expectation of every suite, run by a GX checkpoint (which also renders the HTML report)."""
    import great_expectations as gx  # lazy: Great Expectations: ~4 s to import

    ctx = _gx_context()
    source = ctx.data_sources.add_pandas("frugalml")
    checks = []
    for asset, expectations in _suites(cfg, frames["_reference"] is not None).items():
        batch = source.add_dataframe_asset(asset).add_batch_definition_whole_dataframe("all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=asset))
        for _label, exp in expectations:
            suite.add_expectation(exp)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=asset, data=batch, suite=suite))
        docs = gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["frugalml"])
        cp = ctx.checkpoints.add(gx.Checkpoint(name=asset, validation_definitions=[vd], actions=[docs]))
        res = cp.run(batch_parameters={"dataframe": frames[asset]})
        for vres in res.run_results.values():
            checks += [_check(label, asset, r, cfg) for r, (label, _exp) in zip(vres.results, expectations)]
    return checks


def validate(cfg: Params, audit: Callable[[Params], float] | None = None) -> ValidationReport:
    """The suites over the manifest and images. ``audit``: the share of labels the label audit
    flags, asked for only when ``validate.max_label_issue_ratio`` is set (the stage passes
    ``frugalml.decide.labels.issue_ratio``: the data layer does not train models)."""
    frames = _frames(cfg, audit)
    checks = _run_suites(cfg, frames)
    failed = [c.name for c in checks if not c.success and c.severity == "fail"]
    ref = frames["_reference"]
    return ValidationReport(
        success=not failed,
        images=int(len(frames["images"])),
        expectations=checks,
        failed=failed,
        warnings=[c.name for c in checks if not c.success and c.severity == "warn"],
        label_distribution=frames["_shares"],
        drift_reference={"run_id": ref.get("run_id"), "images": ref.get("images")} if ref else None,
        html_report=str(HTML_DIR / "index.html"),
    )


def log_summary(report: ValidationReport) -> None:
    passed = sum(c.success or c.severity == "warn" for c in report.expectations)
    info(f"validate: {passed}/{len(report.expectations)} expectations passed (report: {report.html_report})")
    for c in report.expectations:
        if not c.success and c.severity == "warn":
            info(f"validate: WARNING {c.name}: observed {c.observed}, expected {c.threshold}")


def failure_message(report: ValidationReport) -> str:
    lines = [
        f"  - {c.name}: observed {c.observed}, expected {c.threshold}"
        for c in report.expectations
        if not c.success and c.severity == "fail"
    ]
    return "data validation failed:\n" + "\n".join(lines) + f"\nSee {VALIDATION_REPORT} and {report.html_report}."
