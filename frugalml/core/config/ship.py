"""``evaluate``, ``gates``, ``compress``, ``promotion`` and ``serving``: what a model must score to
ship, in which form, and how it is served."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from frugalml.core.config.base import _Strict


class EvaluateConfig(_Strict):
    batch_size: int = Field(32, ge=1)
    """batch size for scoring and the throughput figure"""
    latency_samples: int = Field(50, ge=5)
    """batch-1 forward passes timed for latency p50/p95"""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """device for evaluation"""


class GatesConfig(_Strict):
    """Every gate but min_accuracy is off when null."""

    min_accuracy: float = Field(0.9, ge=0, le=1)
    """test accuracy below this rejects the model"""
    min_macro_f1: float | None = Field(None, ge=0, le=1)
    """test macro-F1 below this rejects the model; null = no check"""
    min_class_recall: float | None = Field(None, ge=0, le=1)
    """the worst class's recall below this rejects"""
    max_regression: float | None = Field(0.01, ge=0, le=1)
    """largest accuracy drop allowed against the `production` model on the same test set (checked when one exists)"""
    max_latency_ms_p95: float | None = Field(None, gt=0)
    """batch-1 p95 latency (ms) on the evaluation device"""
    max_model_size_mb: float | None = Field(None, gt=0)
    """model file size (MB)"""
    max_train_usd: float | None = Field(None, ge=0)
    """the train stage's cost (USD)"""
    max_serving_usd_per_1k: float | None = Field(None, ge=0)
    """serving cost per 1000 predictions: p50 latency x `costs.prices.serving_usd_per_hour`"""
    max_variant_accuracy_drop: float | None = Field(0.01, ge=0, le=1)
    """the compress stage: an ONNX or int8 variant may lose at most this test accuracy vs the fp32 model to be chosen
    (null: no limit)
    """


class PromotionConfig(_Strict):
    auto: Literal["none", "staging", "production"] = "none"
    """`none`, `staging` or `production`: after a run whose gate accepts, point that alias at the new version"""


class CompressConfig(_Strict):
    """The compress stage: cheaper-to-serve variants of the trained model, each measured."""

    variants: list[Literal["fp32", "onnx", "int8"]] = ["fp32", "onnx", "int8"]
    """the compress stage: `fp32` the PyTorch model; `onnx` exported with `torch.onnx.export` (dynamo) and run by ONNX
    Runtime; `int8` that ONNX model statically quantized by ONNX Runtime (QDQ, per-channel int8 weights, uint8
    activations). One that cannot be built is reported as skipped with the reason
    """
    calibration_images: int = Field(64, ge=1, le=100_000)
    """int8 calibration images, from the val split"""


class ServingConfig(_Strict):
    host: str = "127.0.0.1"
    """address the service binds to (127.0.0.1: this machine only; 0.0.0.0 to serve others, behind your proxy)"""
    port: int = Field(3000, ge=1, le=65535)
    """port the service listens on"""
    max_image_bytes: int = Field(10_000_000, ge=1)
    """larger uploads get HTTP 400"""
    max_image_pixels: int = Field(40_000_000, ge=1)
    """images with more pixels get HTTP 400"""
    max_images_per_request: int = Field(8, ge=1, le=32)
    """images in one `/classify_batch` request; its body is refused (413) above this x `max_image_bytes`, before it is
    read
    """
    top_k: int = Field(3, ge=1)
    """labels returned per image"""
    variant: Literal["auto", "fp32", "onnx", "int8"] = "auto"
    """the variant to serve: `auto` = the cheapest per 1k predictions within `gates.max_variant_accuracy_drop`, or
    `fp32`, `onnx`, `int8` (falls back to fp32, saying why, when that one is not built or loses too much). Recorded
    in `metrics/variants.json`; the gate judges it and the bento ships and runs it
    """
