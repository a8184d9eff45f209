"""The BentoML service that serves a frugalml model.

Built into every bento by the package stage (with the bento argument ``model_tag``). It
decodes uploads itself so that bad input (not an image, empty, too large, too many pixels)
is answered with HTTP 400 and a JSON message, never a 500.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import bentoml
from bentoml.exceptions import BadInput
from pydantic import BaseModel


class ServiceArgs(BaseModel):
    model_tag: str = "frugal-classifier:latest"
    max_image_bytes: int = 10_000_000
    max_image_pixels: int = 40_000_000
    top_k: int = 3


ARGS = bentoml.use_arguments(ServiceArgs)


def _read_image(path: Path, max_bytes: int, max_pixels: int):
    from PIL import Image, UnidentifiedImageError

    from frugalml.images import to_rgb

    try:
        size = path.stat().st_size
    except (OSError, AttributeError):
        raise BadInput("no image received") from None
    if size == 0:
        raise BadInput("the image is empty (0 bytes)")
    if size > max_bytes:
        raise BadInput(f"the image is {size} bytes; the limit is {max_bytes} (serving.max_image_bytes)")
    data = path.read_bytes()
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise BadInput(f"the image has {w}x{h} pixels; the limit is {max_pixels} (serving.max_image_pixels)")
            im.load()
            return to_rgb(im)
    except BadInput:
        raise
    except Image.DecompressionBombError:
        raise BadInput(f"the image has too many pixels; the limit is {max_pixels}") from None
    except UnidentifiedImageError:
        raise BadInput("the upload is not an image (no image format recognised)") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt files
        raise BadInput(f"the image could not be decoded: {exc}") from None


@bentoml.service(traffic={"timeout": 30}, workers=1)
class Classifier:
    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        import torch

        from frugalml.modeling import eval_transform, load_model

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.model, self.meta = load_model(self.model_ref.path_of("model.pt"), "cpu")
        self.classes = self.meta["classes"]
        self.transform = eval_transform(self.meta["image_size"], self.meta["mean"], self.meta["std"])
        info_path = Path(self.model_ref.path_of("frugalml.json"))
        self.info = json.loads(info_path.read_text()) if info_path.exists() else {}

    def _predict(self, images) -> list[dict]:
        import torch

        x = torch.stack([self.transform(im) for im in images])
        with torch.inference_mode():
            probs = torch.softmax(self.model(x), dim=1)
        k = min(ARGS.top_k, len(self.classes))
        top = torch.topk(probs, k, dim=1)
        return [{"predictions": [{"label": self.classes[int(i)], "probability": round(float(p), 6)}
                                 for p, i in zip(ps, idx)]}
                for ps, idx in zip(top.values, top.indices)]

    @bentoml.api
    def classify(self, image: Path) -> dict:
        """One image (multipart field ``image``) -> top-k labels with probabilities."""
        img = _read_image(image, ARGS.max_image_bytes, ARGS.max_image_pixels)
        return {"version": self.info.get("version", ""), **self._predict([img])[0]}

    # max_latency_ms bounds the wait for a batch; BentoML answers 503 to requests it expects to miss
    # it, so it is set well above one batch's compute time rather than near it.
    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=1000)
    def classify_batch(self, images: list[Path]) -> list[dict]:
        """Batchable: concurrent requests are grouped by BentoML's adaptive batching."""
        decoded = [_read_image(p, ARGS.max_image_bytes, ARGS.max_image_pixels) for p in images]
        return self._predict(decoded)

    @bentoml.api
    def metadata(self) -> dict:
        """Version, classes and the metrics recorded at packaging time."""
        return {"model_tag": str(self.model_ref.tag), "classes": self.classes, **self.info}
