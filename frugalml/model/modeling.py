"""Backbones, datasets and the model file format.

``models/model.pt`` is a plain dict of tensors and primitive values (state dict, classes,
arch, image size, normalisation), so it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from frugalml.core.archs import (  # noqa: F401  (re-exported: the names every caller knows)
    ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_arch,
    default_normalization,
    is_timm,
    native_size,
    timm_name,
    unknown_arch,
)
from frugalml.core.config import AugmentConfig
from frugalml.core.errors import ConfigError
from frugalml.core.fsutil import atomic_write_bytes
from frugalml.data.shards import ShardReader


def select_device(pref: str = "auto") -> torch.device:
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(pref)


def head_module(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier's last Linear layer and its attribute path (timm's pretrained config names it)."""
    timm_head = getattr(model, "pretrained_cfg", None) or {}
    if isinstance(timm_head, dict) and isinstance(timm_head.get("classifier"), str):
        try:
            mod = model.get_submodule(timm_head["classifier"])
        except AttributeError:
            mod = None
        if isinstance(mod, nn.Linear):
            return timm_head["classifier"], mod
    for name in ("fc", "classifier", "head"):
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Linear):
            return name, mod
        if isinstance(mod, nn.Sequential):
            for i in reversed(range(len(mod))):
                if isinstance(mod[i], nn.Linear):
                    return f"{name}.{i}", mod[i]
    raise ValueError("no Linear classifier head found")


def bare_backbone(arch: str) -> nn.Module:
    """``arch`` as torchvision or timm builds it (ImageNet head), randomly initialised."""
    if is_timm(arch):
        import timm  # lazy: seconds to import

        check_arch(arch)
        return timm.create_model(timm_name(arch), pretrained=False)
    import torchvision.models as tvm  # lazy: torchvision: seconds to import (pulls in torch)

    if arch not in ARCHS:
        raise unknown_arch(arch)
    return getattr(tvm, arch)(weights=None)


def build_model(arch: str, num_classes: int, backbone_state: dict | None = None) -> nn.Module:
    """``arch`` with a fresh ``num_classes`` head; ``backbone_state`` is the arch's own state dict
    (e.g. ImageNet weights, see ``frugalml.model.weights``), loaded strictly before the head is replaced."""
    model = bare_backbone(arch)
    if backbone_state is not None:
        model.load_state_dict(backbone_state)
    path, old = head_module(model)
    new = nn.Linear(old.in_features, num_classes)
    parent = model
    *parents, last = path.split(".")
    for p in parents:
        parent = getattr(parent, p)
    if last.isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)
    return model


class ManifestDataset(torch.utils.data.Dataset):
    """Prepared images listed in the manifest (read from their tar shards), for one split."""

    def __init__(self, rows: list[dict], root: Path, classes: list[str], transform):
        self.rows = rows
        self.reader = ShardReader(root)
        self.index = {c: i for i, c in enumerate(classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        r = self.rows[i]
        with Image.open(io.BytesIO(self.reader.read_row(r))) as im:
            x = self.transform(im.convert("RGB"))
        return x, self.index[r["label"]]


def eval_transform(image_size: int, mean, std):
    from torchvision import transforms as T  # lazy: torchvision: seconds to import (pulls in torch)

    return T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(mean, std)])


def train_transform(image_size: int, mean, std, aug=None):
    """Resize, then the configured augmentations (``train.augment``), then normalise."""
    from torchvision import transforms as T  # lazy: torchvision: seconds to import (pulls in torch)

    aug = aug or AugmentConfig()
    steps = [T.Resize((image_size, image_size))]
    if aug.hflip:
        steps.append(T.RandomHorizontalFlip())
    if aug.rotation_deg or aug.translate or (aug.scale_min, aug.scale_max) != (1.0, 1.0):
        steps.append(
            T.RandomAffine(
                degrees=aug.rotation_deg, translate=(aug.translate, aug.translate), scale=(aug.scale_min, aug.scale_max)
            )
        )
    if aug.color_jitter:
        c = aug.color_jitter
        steps.append(T.ColorJitter(brightness=c, contrast=c, saturation=c))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def backbone_blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's stages in order, for ``train.finetune: last_n``."""
    if hasattr(model, "pretrained_cfg"):  # timm: its stage container, then what follows it (conv_head, norm)
        head_root = head_module(model)[0].split(".")[0]
        for stages in ("blocks", "stages", "layers"):
            container = getattr(model, stages, None)
            if isinstance(container, nn.Module) and len(list(container.children())) > 0:
                names = [n for n, _ in model.named_children()]
                after = [
                    mod
                    for n, mod in model.named_children()
                    if names.index(n) > names.index(stages) and n != head_root and any(True for _ in mod.parameters())
                ]
                blocks = list(container.children())
                return blocks + ([nn.ModuleList(after)] if after else [])
    if hasattr(model, "layer4"):  # resnets (torchvision's and timm's)
        return [model.layer1, model.layer2, model.layer3, model.layer4]
    if hasattr(model, "features"):  # mobilenet, efficientnet, convnext
        return list(model.features.children())
    raise ValueError("unknown backbone layout")


def param_groups(model: nn.Module, finetune: str, last_n: int, lr: float, backbone_lr_mult: float) -> list[dict]:
    """Freeze what the strategy leaves frozen; the head gets ``lr``, the backbone ``lr x mult``."""
    _, head = head_module(model)
    head_ids = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad = finetune == "full" or id(p) in head_ids
    if finetune == "last_n":
        for block in backbone_blocks(model)[-last_n:]:
            for p in block.parameters():
                p.requires_grad = True
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": list(head.parameters()), "lr": lr, "name": "head"}]
    if backbone and backbone_lr_mult > 0:
        groups.append({"params": backbone, "lr": lr * backbone_lr_mult, "name": "backbone"})
    elif backbone:
        for p in backbone:
            p.requires_grad = False
    return groups


def warm_start(model: nn.Module, blob: dict, classes: list[str]) -> str:
    """Load a registry model's weights; when the classes differ, keep the backbone, re-initialise the head."""
    state = blob["state_dict"]
    if list(blob["classes"]) == list(classes):
        model.load_state_dict(state)
        return "all weights"
    head_path, _ = head_module(model)
    kept = {k: v for k, v in state.items() if not k.startswith(head_path + ".")}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith(head_path + ".") for k in missing):
        raise ConfigError("model.pretrained: the registry model's architecture does not match model.arch")
    return "backbone only (classes changed: head re-initialised)"


def save_model(
    path: Path,
    model: nn.Module,
    *,
    classes: list[str],
    arch: str,
    image_size: int,
    mean,
    std,
    extra: dict | None = None,
) -> None:
    buf = io.BytesIO()
    torch.save(
        {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "classes": list(classes),
            "arch": arch,
            "image_size": int(image_size),
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
            **(extra or {}),
        },
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(blob["arch"], len(blob["classes"]))
    model.load_state_dict(blob["state_dict"])
    model.eval().to(device)
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model, meta


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
