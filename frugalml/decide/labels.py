"""``frugalml labels``: what more labels would buy, and which of the labels paid for are wrong.

Labels are the biggest bill (the demo: $143.76 of labels against cents of compute), so these
analyses must cost seconds: they run on the frozen backbone's features from the feature cache
(``frugalml/model/features.py``), computed once per image, and fit a small head on them (a logistic
regression on standardised features), not a training run per question.

The backbone is the one ``model.pretrained`` names (torchvision weights, a registry model, or
the architecture's random initialisation with ``none``), never a model trained on these labels:
a backbone that has seen every train label would flatter the small subsets of the curve and
hide the wrong labels from the audit. The head's accuracy is that of ``train.finetune: head``;
fine-tuning the whole network usually scores higher, and gains from labels in a similar way.

* ``curve``: nested, stratified subsets of the train split (``labels.curve_fractions``), each
  scored on the test split; an inverse power law ``accuracy = a - b * n**-c`` fitted with scipy,
  its 95% band from resampling the test split; a backtest (the fit on fractions <= 0.5 predicts
  the accuracy at 1.0, measured).
* ``audit``: out-of-sample probabilities for every labeled image (stratified k-fold,
  ``labels.audit_folds``), then cleanlab's ``find_label_issues`` (confident learning). Where the
  backbone is too weak for a head to contradict a wrong label, ``labels.audit_model: train``
  trains the train stage's model once per fold instead (k trainings: minutes, not seconds).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from frugalml.contracts import PREPARED, CurvePoint, LabelAudit, LabelCurve, LabelIssue, Projection, read_manifest
from frugalml.core.config import Params
from frugalml.core.console import info
from frugalml.core.costs import price
from frugalml.core.errors import ConfigError, DataError
from frugalml.core.store import Store

MULTIPLES = (1.5, 2.0, 4.0)
C_GRID = (0.001, 0.01, 0.1, 1.0)  # the head's inverse regularisation strengths, strongest first
HEAD = "logistic regression on standardised frozen-backbone features"


@dataclass
class Labeled:
    rows: list[dict]
    X: np.ndarray
    y: np.ndarray
    classes: list[str]
    backbone: str
    model: object = None  # the backbone's model (for features of more images: labels next)

    def split(self, name: str) -> np.ndarray:
        return np.array([i for i, r in enumerate(self.rows) if r["split"] == name], dtype=int)


def labeled_features(cfg: Params, with_features: bool = True) -> Labeled:
    """Every labeled image of the prepared dataset with its frozen-backbone features (cached);
    ``with_features=False``: the labels alone (no backbone pass), for models trained on the images."""
    import torch  # lazy: the CLI starts without torch

    from frugalml.model import features
    from frugalml.model.training import initial_model

    rows = read_manifest()
    if not rows:
        raise DataError("no prepared dataset (data/manifest.csv): run `frugalml run` (or `dvc repro validate`) first")
    absent = sorted({r["shard"] for r in rows if not (PREPARED / r["shard"]).is_file()})
    if absent:
        raise DataError(f"{len(absent)} shards of data/manifest.csv are missing (e.g. {absent[0]}): `dvc checkout`")
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[r["label"]] for r in rows])
    if not with_features:
        return Labeled(rows, np.empty((len(rows), 0)), y, classes, f"{cfg.model.arch} ({cfg.model.pretrained})")
    torch.manual_seed(cfg.train.seed)  # the random initialisation of `pretrained: none` is the same every time
    model, start, _ = initial_model(cfg, classes)
    store = Store.optional(cfg.storage, tolerate_transient=True)
    X, _ = features.features_for(model, rows, PREPARED, cfg, torch.device("cpu"), store)
    return Labeled(rows, X.numpy().astype(np.float64), y, classes, f"{cfg.model.arch} ({start})", model)


def train_model(cfg: Params, rows: list[dict], classes: list[str], seed: int):
    """A model trained in this process as the train stage would (its arch, start, ``train.*`` and
    loop) on ``rows``, all of them as its train split; in eval mode. No checkpoints in the store,
    no live budget: a throwaway model for an analysis (the audit's folds, benchmarks)."""
    import uuid

    from frugalml.model import checkpoint, loop, training  # lazy: the CLI starts without torch
    from frugalml.model.modeling import seed_everything, select_device

    t = cfg.train
    cfg = cfg.model_copy(update={"train": t.model_copy(update={"checkpoint_to_s3": False, "max_usd": None})})
    seed_everything(seed)
    tr, _, _ = training.build_trainer(
        cfg, [dict(r, split="train") for r in rows], classes, select_device(t.device), None
    )
    ckpt = checkpoint.Checkpointer(cfg, f"analysis-{uuid.uuid4().hex}", "analysis")
    try:
        loop.fit(tr, checkpoint.TrainState(), ckpt)
    finally:
        ckpt.done()
        ckpt.local.parent.rmdir()  # its own folder, emptied by done()
    return tr.model.eval()


def make_head(seed: int, c: float = 1.0):
    from sklearn.linear_model import LogisticRegression  # lazy: scikit-learn loads in ~1 s
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))


def choose_c(X: np.ndarray, y: np.ndarray, seed: int) -> float:
    """The head's regularisation, by 3-fold accuracy: a head that cannot fit noise predicts
    better on new images, and contradicts a wrong label instead of learning it (the audit)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = int(min(3, np.bincount(y).min()))
    if folds < 2:
        return C_GRID[1]
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = [cross_val_score(make_head(seed, c), X, y, cv=cv).mean() for c in C_GRID]
    return C_GRID[int(np.argmax(scores))]  # ties: the stronger regularisation


def bill(cfg: Params, report, started: float) -> None:
    """A ``frugalml labels`` report's wall (from ``started``, a ``time.perf_counter()``: features included) and
    its price on the cost sheet, into its report."""
    report.wall_s = round(time.perf_counter() - started, 3)
    report.usd = round(price({"wall_s": report.wall_s}, cfg.costs)["total_usd"], 6)


# -- the learning curve -----------------------------------------------------------------------------
def nested_subsets(y: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Index sets, one per fraction, each inside the next, with every class in its share
    (at least one image of each class)."""
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    return [np.sort(np.concatenate([o[: max(1, math.ceil(f * len(o)))] for o in orders])) for f in fractions]


def power_law(n, a, b, c):
    return a - b * np.power(n, -c)


def fit_power_law(ns, accs) -> tuple[float, float, float]:
    """``accuracy = a - b * n**-c`` through the points (a: the ceiling, at most 1)."""
    from scipy.optimize import curve_fit  # lazy: scipy.optimize takes ~0.3 s

    ns, accs = np.asarray(ns, dtype=float), np.asarray(accs, dtype=float)
    p0 = (min(1.0, accs.max() + 0.02), max(1e-3, (accs.max() - accs.min()) * ns.min() ** 0.5 + 1e-3), 0.5)
    params, _ = curve_fit(power_law, ns, accs, p0=p0, bounds=([0, 0, 0.01], [1.0, np.inf, 3.0]), maxfev=20000)
    return tuple(float(p) for p in params)


def labels_for(target: float, a: float, b: float, c: float) -> int | None:
    """Train labels the fit needs to reach ``target`` (None when the target is at or above its ceiling)."""
    if target >= a or b <= 0:
        return None
    return math.ceil((b / (a - target)) ** (1 / c))


def curve(cfg: Params, data: Labeled, progress=lambda line: None) -> LabelCurve:
    lc = cfg.labels
    train, test = data.split("train"), data.split("test")
    if len(test) == 0:
        test = data.split("val")
    if len(train) == 0 or len(test) == 0:
        raise DataError("the curve needs a train split and a test (or val) split: check data.splits")
    subsets = nested_subsets(data.y[train], lc.curve_fractions, lc.seed)
    c_head = choose_c(data.X[train], data.y[train], lc.seed)
    correct = []  # per fraction: which test images the head gets right (the bootstrap resamples them)
    for f, idx in zip(lc.curve_fractions, subsets):
        head = make_head(lc.seed, c_head).fit(data.X[train[idx]], data.y[train[idx]])
        correct.append(head.predict(data.X[test]) == data.y[test])
        progress(f"labels curve: {len(idx)} train labels ({f:.0%}): accuracy {correct[-1].mean():.4f}")
    ns = np.array([len(i) for i in subsets], dtype=float)
    correct = np.array(correct)
    a, b, c = fit_power_law(ns, correct.mean(axis=1))
    price_per = cfg.costs.prices.labeling_usd_per_image
    bands = _bootstrap(ns, correct, lc.bootstrap, lc.seed)
    n_now = int(ns[-1])
    projections = []
    for k, (low, high) in zip(MULTIPLES, bands):
        n = round(k * n_now)
        extra = n - n_now
        acc = power_law(n, a, b, c)
        projections.append(
            Projection(
                multiple=k,
                n=n,
                accuracy=acc,
                low=low,
                high=high,
                extra_labels=extra,
                labels_usd=round(extra * price_per, 2),
            )
        )
    need = labels_for(lc.target_accuracy, a, b, c)
    extra = None if need is None else max(0, need - n_now)
    out = LabelCurve(
        backbone=data.backbone,
        head=f"{HEAD}, C={c_head:g} (3-fold)",
        points=[
            CurvePoint(fraction=f, n=int(n), accuracy=float(m))
            for f, n, m in zip(lc.curve_fractions, ns, correct.mean(axis=1))
        ],
        fit={"a": a, "b": b, "c": c},
        projections=projections,
        target_accuracy=lc.target_accuracy,
        target_n=need,
        target_extra_labels=extra,
        target_usd=None if extra is None else round(extra * price_per, 2),
        labeling_usd_per_image=price_per,
        wall_s=0.0,
        usd=0.0,
    )
    _backtest(out, ns, correct.mean(axis=1), lc.curve_fractions)
    return out


def _bootstrap(ns: np.ndarray, correct: np.ndarray, rounds: int, seed: int) -> list[tuple[float, float]]:
    """The 95% band of the fitted accuracy at each multiple of the labels: the test split
    resampled with replacement, the curve refitted on each resample."""
    rng = np.random.default_rng(seed)
    t = correct.shape[1]
    preds = []
    for _ in range(rounds):
        sample = correct[:, rng.integers(0, t, t)].mean(axis=1)
        try:
            a, b, c = fit_power_law(ns, sample)
        except (RuntimeError, ValueError):  # a resample the curve does not fit: left out of the band
            continue
        preds.append([power_law(k * ns[-1], a, b, c) for k in MULTIPLES])
    if not preds:
        return [(float("nan"), float("nan"))] * len(MULTIPLES)
    lo, hi = np.percentile(np.array(preds), [2.5, 97.5], axis=0)
    return [(float(x), float(y)) for x, y in zip(lo, hi)]


def _backtest(out: LabelCurve, ns: np.ndarray, accs: np.ndarray, fractions: list[float]) -> None:
    early = [i for i, f in enumerate(fractions) if f <= 0.5]
    if len(early) < 3:  # three parameters: three points at least
        return
    a, b, c = fit_power_law(ns[early], accs[early])
    out.backtest_fractions = [fractions[i] for i in early]
    out.backtest_predicted = float(power_law(ns[-1], a, b, c))
    out.backtest_measured = float(accs[-1])
    out.backtest_error_pp = round(100 * (out.backtest_predicted - out.backtest_measured), 2)


# -- the label audit --------------------------------------------------------------------------------
def out_of_sample_probs(data: Labeled, folds: int, seed: int, c: float) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    _enough_per_class(data, folds)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(make_head(seed, c), data.X, data.y, cv=cv, method="predict_proba")


def out_of_sample_probs_trained(cfg: Params, data: Labeled, folds: int, seed: int) -> np.ndarray:
    """``labels.audit_model: train``: k models trained as the train stage would (``train_model``),
    each on the other folds, each scoring its own fold. Costs k trainings; on a weak backbone
    (random, or far from the images) it contradicts wrong labels that a head on frozen features
    cannot tell from real confusions."""
    from sklearn.model_selection import StratifiedKFold

    from frugalml.core.console import info
    from frugalml.model.modeling import select_device
    from frugalml.ship.evaluation import predict

    _enough_per_class(data, folds)
    m = cfg.model
    mean, std = m.norm()
    meta = {"classes": data.classes, "image_size": m.image_size, "mean": mean, "std": std}
    device = select_device(cfg.train.device)
    probs = np.zeros((len(data.y), len(data.classes)))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit, held) in enumerate(cv.split(np.zeros(len(data.y)), data.y), 1):
        info(f"labels audit: model {k}/{folds}: training on {len(fit)} labels, scoring {len(held)}")
        model = train_model(cfg, [data.rows[i] for i in fit], data.classes, cfg.train.seed + k)
        held_rows = [data.rows[i] for i in held]
        _, p = predict(model, held_rows, meta, device, cfg.evaluate.batch_size)
        probs[held] = p.numpy()
    return probs


def _enough_per_class(data: Labeled, folds: int) -> None:
    smallest = int(np.bincount(data.y).min())
    if smallest < folds:
        worst = data.classes[int(np.bincount(data.y).argmin())]
        raise ConfigError(
            f"labels.audit_folds={folds}: class {worst!r} has only {smallest} labeled images; "
            f"lower labels.audit_folds to {max(2, smallest)} or label more"
        )


def audit_inputs(cfg: Params) -> Labeled:
    """What the audit reads: the labels, with frozen features only when heads are fitted on them."""
    return labeled_features(cfg, with_features=cfg.labels.audit_model == "head")


def audit(cfg: Params, data: Labeled, top: int = 50) -> tuple[LabelAudit, list[LabelIssue]]:
    """Labels that out-of-sample predictions contradict, worst first (cleanlab's confident learning)."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise ConfigError("frugalml labels audit needs cleanlab: pip install 'frugalml[labels]'") from None
    folds = cfg.labels.audit_folds
    if cfg.labels.audit_model == "train":
        t = cfg.train
        head = f"{cfg.model.arch} trained like the train stage (finetune {t.finetune}, {t.epochs} epochs) per fold"
        probs = out_of_sample_probs_trained(cfg, data, folds, cfg.labels.seed)
    else:
        c_head = choose_c(data.X, data.y, cfg.labels.seed)
        head = f"{HEAD}, C={c_head:g} (3-fold)"
        probs = out_of_sample_probs(data, folds, cfg.labels.seed, c_head)
    ranked = find_label_issues(
        labels=data.y,
        pred_probs=probs,
        filter_by=cfg.labels.audit_filter_by,
        return_indices_ranked_by="self_confidence",
    )
    quality = get_label_quality_scores(data.y, probs)
    issues = [
        LabelIssue(
            source_path=data.rows[i]["source_path"],
            path=data.rows[i]["path"],
            sha256=data.rows[i]["sha256"],
            split=data.rows[i]["split"],
            given=data.classes[data.y[i]],
            suggested=data.classes[int(probs[i].argmax())],
            quality=round(float(quality[i]), 6),
        )
        for i in ranked
    ]
    oos = round(float((probs.argmax(axis=1) == data.y).mean()), 6)
    by_class = {c: 0 for c in data.classes}
    for issue in issues:
        by_class[issue.given] += 1
    report = LabelAudit(
        backbone=data.backbone,
        head=head,
        folds=folds,
        images=len(data.y),
        issues=len(issues),
        issue_ratio=round(len(issues) / len(data.y), 6),
        out_of_sample_accuracy=oos,
        issues_by_class=by_class,
        labels_usd_flagged=round(len(issues) * cfg.costs.prices.labeling_usd_per_image, 2),
        top=issues[:top],
        wall_s=0.0,
        usd=0.0,
        advice=weak_head_advice(cfg.labels.audit_model, oos),
    )
    return report, issues


WEAK_HEAD = 0.9  # out-of-sample accuracy under which a head's flags are mostly its own errors


def weak_head_advice(audit_model: str, out_of_sample_accuracy: float) -> str:
    """What to do when the head is too weak to audit with ('' when it is not). Measured on
    ImageNet lite0 features of the shapes at 64 px: a head 65% accurate out of sample flagged 610
    labels for 150 flipped (precision 0.21); the train stage's model per fold (94%) 146, precision
    0.99 (docs/labels.md)."""
    if audit_model != "head" or out_of_sample_accuracy >= WEAK_HEAD:
        return ""
    return (
        f"the head on frozen features is only {out_of_sample_accuracy:.0%} accurate out of sample, so many of its "
        "flags are its own errors: audit with labels.audit_model=train (the train stage's model per fold: "
        "minutes, not seconds), or a larger model.image_size"
    )


def write_audit(report: LabelAudit, issues: list[LabelIssue], html_limit: int = 300) -> None:
    """``metrics/label_audit.json``, the CSV of every flagged image and an HTML page with
    thumbnails (the worst ``html_limit``), each written atomically."""
    import csv
    import io

    from frugalml.core.fsutil import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["source_path", "split", "given", "suggested", "quality", "sha256", "path"])
    for i in issues:
        writer.writerow([i.source_path, i.split, i.given, i.suggested, f"{i.quality:.6f}", i.sha256, i.path])
    atomic_write_text(LabelAudit.CSV, buf.getvalue())
    atomic_write_text(LabelAudit.HTML, _audit_html(report, issues[:html_limit], len(issues)))
    report.write()


def _thumbnail(reader, row: dict) -> str:
    """A data: URI of a 96 px PNG thumbnail ('' when the image cannot be read)."""
    import base64
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(reader.read_row(row))) as im:
            im = im.convert("RGB")
            im.thumbnail((96, 96))
            if max(im.size) < 48:  # tiny images (digits are 8x8): enlarged without blurring
                im = im.resize((im.width * 8, im.height * 8), Image.NEAREST)
            out = io.BytesIO()
            im.save(out, format="PNG")
    except OSError:
        return ""
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _audit_html(report: LabelAudit, issues: list[LabelIssue], total: int) -> str:
    from html import escape

    from frugalml.data.shards import ShardReader

    reader, by_sha = ShardReader(PREPARED), {r["sha256"]: r for r in read_manifest()}
    rows = "\n".join(
        f"<tr><td><img src='{_thumbnail(reader, by_sha[i.sha256])}' alt=''></td><td>{escape(i.source_path)}</td>"
        f"<td>{escape(i.split)}</td><td><b>{escape(i.given)}</b></td><td>{escape(i.suggested)}</td>"
        f"<td>{i.quality:.4f}</td></tr>"
        for i in issues
    )
    shown = f"the worst {len(issues)} of {total}" if len(issues) < total else f"all {total}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>frugalml label audit</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}
img{{image-rendering:pixelated;max-width:96px}}</style></head><body>
<h1>Label audit: {report.issues} of {report.images} labels look wrong ({report.issue_ratio:.1%})</h1>
<p>Out-of-sample predictions ({report.folds}-fold, {escape(report.head)}; backbone {escape(report.backbone)},
accuracy {report.out_of_sample_accuracy:.4f}) contradicted by the given label, found by cleanlab's confident
learning. The flagged labels cost ${report.labels_usd_flagged:,.2f}. Lowest label quality first; {shown} shown,
every one in <code>{LabelAudit.CSV}</code>.</p>
{f"<p><b>Trust these flags less:</b> {escape(report.advice)}.</p>" if report.advice else ""}
<table><tr><th>image</th><th>source file</th><th>split</th><th>given label</th><th>suggested</th>
<th>label quality</th></tr>
{rows}
</table></body></html>
"""


def issue_ratio(cfg: Params) -> float:
    """The share of labels the audit flags (``frugalml labels audit``): what the validate stage's
    ``validate.max_label_issue_ratio`` expectation checks."""
    report, _ = audit(cfg, audit_inputs(cfg))
    info(f"validate: the label audit flags {report.issues} of {report.images} labels (`frugalml labels audit`: which)")
    return report.issue_ratio
