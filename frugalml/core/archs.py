"""Which architectures frugalml builds, and what their pretrained weights expect (no torch import:
reading params.yaml must stay fast).

``model.arch`` is a torchvision name (``resnet18``...) or ``timm/<name>`` for any model of timm's zoo
(``timm/tf_efficientnet_lite0``...). timm's pretrained config gives a timm arch's normalisation and
native input size.
"""

from __future__ import annotations

from frugalml.core.errors import ConfigError

ARCHS = {  # torchvision's names -> its weights enum (model.pretrained: torchvision | imagenet)
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "mobilenet_v3_small": "MobileNet_V3_Small_Weights",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
    "efficientnet_b0": "EfficientNet_B0_Weights",
    "convnext_tiny": "ConvNeXt_Tiny_Weights",
}
TIMM_PREFIX = "timm/"  # model.arch: timm/<name>, any model timm builds (timm.list_models())
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's pretrained configs of the archs whose weights ship as packages (frugalml[weights]), so
# reading params.yaml does not import timm for them; any other timm arch asks timm.
_KNOWN_TIMM_NORM = {f"tf_efficientnet_lite{n}": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) for n in range(5)}


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def timm_name(arch: str) -> str:
    return arch[len(TIMM_PREFIX) :]


def known_without_timm(arch: str) -> bool:
    """A timm arch known here without importing timm (those whose ImageNet weights ship as packages)."""
    return is_timm(arch) and timm_name(arch) in _KNOWN_TIMM_NORM


def _closest(arch: str) -> str:
    """'; closest: a, b, c' from torchvision's and timm's names, for an error message."""
    import difflib

    names = [*ARCHS]
    try:
        import timm  # lazy: seconds to import; only an unknown name pays for it

        names += [TIMM_PREFIX + n for n in timm.list_models()]
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    bare = timm_name(arch) if is_timm(arch) else arch
    close = difflib.get_close_matches(arch, names, n=4, cutoff=0.5)
    close += [n for n in difflib.get_close_matches(TIMM_PREFIX + bare, names, n=4, cutoff=0.6) if n not in close]
    return f"; closest: {', '.join(close[:5])}" if close else ""


def unknown_arch(arch: str) -> ConfigError:
    return ConfigError(
        f"model.arch {arch!r} is neither a torchvision model ({', '.join(ARCHS)}) nor a timm one "
        f"(timm/<name>){_closest(arch)}"
    )


def check_arch(arch: str) -> None:
    """ConfigError (exit 2) with the closest names when neither torchvision nor timm builds ``arch``."""
    if arch in ARCHS:
        return
    if is_timm(arch):
        import timm  # lazy: seconds to import

        if timm.is_model(timm_name(arch)):
            return
    raise unknown_arch(arch)


def timm_pretrained_cfg(arch: str) -> dict:
    """timm's default pretrained config for ``timm/<name>`` (mean, std, input_size, url, hf_hub_id...)."""
    import timm  # lazy: seconds to import

    check_arch(arch)
    cfg = timm.get_pretrained_cfg(timm_name(arch))
    return cfg.to_dict() if cfg is not None else {}


def default_normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the arch's pretrained weights expect: torchvision's ImageNet values, or timm's
    pretrained config (``model.mean`` / ``model.std`` left null follow this)."""
    if not is_timm(arch):
        return IMAGENET_MEAN, IMAGENET_STD
    if timm_name(arch) in _KNOWN_TIMM_NORM:
        return _KNOWN_TIMM_NORM[timm_name(arch)]
    cfg = timm_pretrained_cfg(arch)
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def native_size(arch: str) -> int:
    """The input size the arch's ImageNet weights were trained at (224 for torchvision's)."""
    if not is_timm(arch):
        return 224
    return int(timm_pretrained_cfg(arch).get("input_size", (3, 224, 224))[-1])
