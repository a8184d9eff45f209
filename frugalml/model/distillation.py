"""Knowledge distillation: train the configured (smaller) arch against a registry model's soft targets.

``train.distill_from: registry:<model>@<alias or version>`` loads that model as the teacher. Each
training batch goes through both; the loss is Hinton et al.'s mixture::

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

(``train.distill_temperature`` T, ``train.distill_alpha``). The teacher sees the student's input,
resized and renormalised when it was trained at another image size or normalisation. It must
know the same classes in the same order: soft targets over other classes mean nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from frugalml.core.config import Params, registry_ref
from frugalml.core.errors import ConfigError
from frugalml.core.registry import Registry, fetch_model_blob
from frugalml.core.store import Store
from frugalml.model.modeling import build_model


class TeacherInput(nn.Module):
    """The teacher behind an adapter from the student's input (size, normalisation) to its own."""

    def __init__(self, teacher: nn.Module, size: int, student_size: int, mean, std, student_mean, student_std):
        super().__init__()
        self.teacher = teacher
        self.size = None if size == student_size else size
        same = list(mean) == list(student_mean) and list(std) == list(student_std)
        as_t = lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        # x_teacher = (x * s_std + s_mean - t_mean) / t_std = x * scale + shift
        self.register_buffer("scale", None if same else as_t(student_std) / as_t(std))
        self.register_buffer("shift", None if same else (as_t(student_mean) - as_t(mean)) / as_t(std))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            x = x * self.scale + self.shift
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.teacher(x)


@dataclass
class Teacher:
    net: TeacherInput
    ref: str  # registry:<model>@<version>
    arch: str
    sha256: str

    def lineage(self) -> dict:
        return {"ref": self.ref, "arch": self.arch, "sha256": self.sha256}


def load_teacher(cfg: Params, classes: list[str], device: torch.device) -> Teacher | None:
    """The teacher named by ``train.distill_from``, on ``device`` in eval mode; None when unset."""
    ref = cfg.train.distill_from
    if ref is None:
        return None
    name, alias = registry_ref(ref)
    store = Store.from_config(cfg.storage)
    version, blob = fetch_model_blob(store, name, alias)
    if list(blob["classes"]) != list(classes):
        raise ConfigError(
            f"train.distill_from: {name}@{version} was trained on classes {blob['classes']}, "
            f"this data has {classes}; a teacher must know the same classes"
        )
    with torch.random.fork_rng(devices=[]):  # the student's random draws stay those of a run without a teacher
        net = build_model(blob["arch"], len(classes))
    net.load_state_dict(blob["state_dict"])
    m = cfg.model
    adapter = TeacherInput(net, blob["image_size"], m.image_size, blob["mean"], blob["std"], *m.norm())
    adapter.to(device).eval()
    for p in adapter.parameters():
        p.requires_grad_(False)
    sha = Registry(store, name).get(version).get("lineage", {}).get("model_sha256", "")
    return Teacher(adapter, f"registry:{name}@{version}", blob["arch"], sha)


class DistillLoss(nn.Module):
    """``alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * hard_loss(student, labels)``."""

    def __init__(self, hard: nn.Module, temperature: float, alpha: float):
        super().__init__()
        self.hard, self.t, self.alpha = hard, temperature, alpha

    def forward(self, student: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        soft = F.kl_div(
            F.log_softmax(student / self.t, dim=1),
            F.log_softmax(teacher / self.t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return self.alpha * self.t**2 * soft + (1 - self.alpha) * self.hard(student, labels)
