"""The BentoML service that serves a frugalml model.

Built into every bento by the package stage (with the bento argument ``model_tag``). It
decodes uploads itself so that bad input (not an image, empty, too large, too many pixels)
is answered with HTTP 400 and a JSON message, never a 500.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import bentoml
from PIL import Image, UnidentifiedImageError
from pydantic import AfterValidator, BaseModel

from frugalml.data.images import body_limits, to_rgb
from frugalml.model.modeling import eval_transform, load_model


class ServiceArgs(BaseModel):
    model_tag: str = "frugal-classifier:latest"
    max_image_bytes: int = 10_000_000
    max_image_pixels: int = 40_000_000
    max_images_per_request: int = 8
    top_k: int = 3


ARGS = bentoml.use_arguments(ServiceArgs)


# The model's input side, set when the service loads its model (one model per worker process).
_SIDE: dict[str, int] = {"image_size": 0}


def _read_image(path: Path, max_bytes: int, max_pixels: int):
    """Decode one upload and reduce it to the model's input size at once.

    Raises ValueError (an HTTP 400 for this request only) for anything that is not a usable
    image. Uploads are validated one at a time on the worker's event loop, so at most one
    full-size image is in memory per worker: its decode plus its RGB copy, at most
    max_image_pixels x 8 bytes (320 MB at the default 40 M pixels); what is kept for the
    batch is image_size^2 x 3 bytes per image.
    """

    try:
        size = path.stat().st_size
    except (OSError, AttributeError, TypeError):
        raise ValueError("no image received (send the image as a file in a multipart form)") from None
    if size == 0:
        raise ValueError("the image is empty (0 bytes)")
    if size > max_bytes:
        raise ValueError(f"the image is {size} bytes; the limit is {max_bytes} (serving.max_image_bytes)")
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError(f"the image has {w}x{h} pixels; the limit is {max_pixels} (serving.max_image_pixels)")
            im.load()
            rgb = to_rgb(im)
    except ValueError:
        raise
    except Image.DecompressionBombError:
        raise ValueError(f"the image has too many pixels; the limit is {max_pixels}") from None
    except UnidentifiedImageError:
        raise ValueError("the upload is not an image (no image format recognised)") from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt files
        raise ValueError(f"the image could not be decoded: {exc}") from None
    side = _SIDE["image_size"]
    if side and rgb.size != (side, side):
        # what eval_transform's Resize((side, side)) does to a PIL image, done now: the same pixels
        rgb = rgb.resize((side, side), Image.Resampling.BILINEAR)
    return rgb


def _upload(path: Path):
    return _read_image(path, ARGS.max_image_bytes, ARGS.max_image_pixels)


# Decoded while the request is parsed, before BentoML merges requests into a batch: a bad
# upload fails its own request with 400 and never the others in its batch.
Upload = Annotated[Path, AfterValidator(_upload)]


@bentoml.service(traffic={"timeout": 30}, workers=1)
class Classifier:
    model_ref = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        import torch  # lazy: torch: seconds to import; only the paths that run a model pay for it

        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.model, self.meta = load_model(self.model_ref.path_of("model.pt"), "cpu")
        onnx = Path(self.model_ref.path_of("model.onnx"))
        if onnx.exists():  # the chosen variant runs on ONNX Runtime (ONNX fp32 or int8)
            import onnxruntime as ort  # lazy: only bentos that ship an ONNX variant load it

            session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
            self.model = lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        self.classes = self.meta["classes"]
        self.transform = eval_transform(self.meta["image_size"], self.meta["mean"], self.meta["std"])
        _SIDE["image_size"] = int(self.meta["image_size"])
        info_path = Path(self.model_ref.path_of("frugalml.json"))
        self.info = json.loads(info_path.read_text()) if info_path.exists() else {}

    def _predict(self, images) -> list[dict]:
        import torch  # lazy: torch: seconds to import; only the paths that run a model pay for it

        x = torch.stack([self.transform(im) for im in images])
        with torch.inference_mode():
            probs = torch.softmax(self.model(x), dim=1)
        k = min(ARGS.top_k, len(self.classes))
        top = torch.topk(probs, k, dim=1)
        return [
            {
                "predictions": [
                    {"label": self.classes[int(i)], "probability": round(float(p), 6)} for p, i in zip(ps, idx)
                ]
            }
            for ps, idx in zip(top.values, top.indices)
        ]

    @bentoml.api
    def classify(self, image: Upload) -> dict:
        """One image (multipart field ``image``) -> top-k labels with probabilities."""
        return {"version": self.info.get("version", ""), **self._predict([image])[0]}

    # max_latency_ms bounds the wait for a batch; BentoML answers 503 to requests it expects to miss
    # it, so it is set well above one batch's compute time rather than near it.
    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=1000)
    def classify_batch(self, images: list[Upload]) -> list[dict]:
        """Batchable: concurrent requests are grouped by BentoML's adaptive batching. The images
        arrive decoded and at model size (see ``Upload``)."""
        return self._predict(images)

    @bentoml.api
    def metadata(self) -> dict:
        """Version, classes and the metrics recorded at packaging time."""
        return {"model_tag": str(self.model_ref.tag), "classes": self.classes, **self.info}


def _json_response(status: int, message: str):
    body = json.dumps({"error": message}).encode()
    return [
        {
            "type": "http.response.start",
            "status": status,
            # the body may be unread: the connection cannot carry another request
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        },
        {"type": "http.response.body", "body": body},
    ]


class UploadGuard:
    """ASGI middleware in front of the classify endpoints.

    * A Content-Length over the endpoint's limit is refused (413) before a byte of the body is
      read; a chunked body is counted while it arrives and refused at the limit.
    * Only multipart forms whose every field is a file are let through: BentoML would fetch a
      URL given as a plain form value (or as a JSON body) from the server's network.
    The body (at most the limit) is then handed on unchanged.
    """

    def __init__(self, app, limits: dict[str, int]):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        refusal = self._check_headers(headers, limit)
        body = b""
        if refusal is None:
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
                if len(body) > limit:
                    refusal = (413, f"the request is over {limit} bytes")
                    break
        if refusal is None:
            refusal = self._check_parts(headers, body)
        if refusal is not None:
            for m in _json_response(*refusal):
                await send(m)
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _check_headers(headers: dict, limit: int) -> tuple[int, str] | None:
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return 400, "bad Content-Length"
            if n > limit:
                return 413, f"the request is {n} bytes; the limit is {limit} (serving.max_image_bytes)"
        if not headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data"):
            return 400, "send the image as a file in a multipart/form-data request"
        return None

    @staticmethod
    def _check_parts(headers: dict, body: bytes) -> tuple[int, str] | None:
        ctype = headers.get(b"content-type", b"").decode("latin-1")
        boundary = next(
            (
                p.split("=", 1)[1].strip().strip('"')
                for p in ctype.split(";")
                if p.strip().lower().startswith("boundary=")
            ),
            "",
        )
        if not boundary:
            return 400, "multipart request without a boundary"
        for part in body.split(b"--" + boundary.encode("latin-1"))[1:]:
            if part.startswith(b"--"):
                break  # the closing delimiter
            head = part.split(b"\r\n\r\n", 1)[0].lower()
            if b"filename=" not in head:
                name = (
                    head.split(b'name="', 1)[1].split(b'"', 1)[0].decode(errors="replace") if b'name="' in head else "?"
                )
                return 400, f"form field {name!r} is not a file; send images as files"
        return None


Classifier.add_asgi_middleware(
    UploadGuard,
    limits=body_limits(ARGS.max_image_bytes, ARGS.max_images_per_request),
)
