"""The model: backbones, weights and training.

Owns the backbones, transforms and the model file (``modeling``), pretrained weights (``weights``:
the pip packages, a team mirror, hub downloads), the train stage (``training``: the loop, the
trainer's parts, the live budget), the frozen-backbone feature cache (``features``), distillation
from a registered teacher (``distillation``) and a sweep trial's link to its pruner (``trial``).

Imports: ``frugalml.core``, ``frugalml.contracts`` and ``frugalml.data``.
"""
