"""The one typed configuration, read from params.yaml.

Every key is described by the docstring under it (see frugalml.core.paramsdoc). Unknown keys and wrong
values fail at load time with the key's path and what was expected. One module per part of the
pipeline (``data``, ``model``, ``ship``, ``costs``, ``decide``), ``params`` for the whole and its
loading; every name is importable from ``frugalml.core.config`` itself.
"""

from frugalml.core.config.base import (  # noqa: F401
    BUILTIN_NAMES,
    PARAMS_FILE,
    _Strict,
)
from frugalml.core.config.costs import (  # noqa: F401
    CostsConfig,
    OrchestrationConfig,
    Prices,
    StorageConfig,
)
from frugalml.core.config.data import (  # noqa: F401
    DataConfig,
    Splits,
    ValidateConfig,
)
from frugalml.core.config.decide import (  # noqa: F401
    LabelsConfig,
    Range,
    SweepConfig,
)
from frugalml.core.config.model import (  # noqa: F401
    AugmentConfig,
    DistributedConfig,
    EarlyStoppingConfig,
    ModelConfig,
    TrainConfig,
    WarmStartConfig,
    feature_cache_off,
    registry_ref,
)
from frugalml.core.config.params import (  # noqa: F401
    Params,
    _format_validation_error,
    apply_overrides,
    dump,
    load,
    parse_override,
    read_raw,
    validate,
    write_overrides,
)
from frugalml.core.config.ship import (  # noqa: F401
    CompressConfig,
    EvaluateConfig,
    GatesConfig,
    PromotionConfig,
    ServingConfig,
)
