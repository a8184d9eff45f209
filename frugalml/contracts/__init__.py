"""Files that cross a process boundary: where each lives, and (for the JSON ones) its typed model.

Stages write them; the flow, the CLI and other stages read them through this package only, so a
renamed field is one change here and a validation error, not a silent ``KeyError`` elsewhere.
Stages import paths from here, never from each other (``tasks/package.py`` importing
``tasks/train.py`` would load torch for nothing). Models of files this version writes forbid
unknown fields.

One module per part of the pipeline, beside the package that writes them: ``base`` (paths, the
stage list, ``Contract``), ``data`` (manifest, ingest, validation), ``model`` (train), ``ship``
(evaluate, variants, gate, package), ``runs`` (cost entries, run record, remote stages),
``decide`` (sweeps, labels). Every name is importable from ``frugalml.contracts`` itself.
"""

from frugalml.contracts.base import (  # noqa: F401
    CONFUSION_CSV,
    CONFUSION_PNG,
    COST_METRICS,
    COSTS_DIR,
    EVAL_REPORT,
    GATE_REPORT,
    HEADLINE_DIR,
    INGEST_REPORT,
    MANIFEST,
    MODEL,
    PACKAGE_REPORT,
    PREPARED,
    STAGES,
    STATUS_DIR,
    TRAIN_CURVES,
    TRAIN_REPORT,
    VALIDATION_HTML,
    VALIDATION_REPORT,
    VARIANTS_CSV,
    VARIANTS_DIR,
    VARIANTS_PNG,
    Contract,
    cost_file,
    headline_file,
    is_safe_id,
    safe_id,
    status_file,
)
from frugalml.contracts.data import (  # noqa: F401
    MANIFEST_COLUMNS,
    Duplicate,
    Expectation,
    IngestCounts,
    IngestReport,
    Rejection,
    ShardStats,
    ValidationReport,
    read_manifest,
    write_manifest,
)
from frugalml.contracts.decide import (  # noqa: F401
    SWEEPS,
    CurvePoint,
    ImportedLabel,
    ImportRecord,
    LabelAudit,
    LabelCurve,
    LabelIssue,
    NextBatch,
    NextImage,
    Projection,
    ScreenResult,
    SweepRecord,
    SweepTrial,
)
from frugalml.contracts.model import (  # noqa: F401
    Pretrained,
    TrainReport,
)
from frugalml.contracts.runs import (  # noqa: F401
    CostEntry,
    CostMetrics,
    DvcPush,
    Promotion,
    RemoteStage,
    RunRecord,
    StageRow,
    StageStatus,
    StorageUse,
)
from frugalml.contracts.ship import (  # noqa: F401
    ChampionScores,
    ClassScores,
    EvalReport,
    GateCheck,
    GateDecision,
    PackageReport,
    VariantScore,
    VariantsReport,
)
