"""The S3 artifact store over boto3: put/get/list, atomic publish, checksums, conditional writes.

Where the endpoint and credentials come from (first match wins):

* endpoint: ``storage.endpoint_url`` in params.yaml, then ``$FRUGALML_S3_ENDPOINT``, then the
  embedded server started by ``frugalml storage up`` for this workspace, else AWS itself;
* credentials: for the embedded server its generated key in ``.frugalml/storage/s3.json``;
  otherwise ``$AWS_ACCESS_KEY_ID`` / ``$AWS_SECRET_ACCESS_KEY`` or boto3's usual chain
  (``~/.aws``, instance roles). Credentials are never written to logs, records or artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from frugalml.core.config import StorageConfig
from frugalml.core.embedded import embedded_info
from frugalml.core.errors import NotFound, PreconditionFailed, StorageError, TransientStorageError
from frugalml.core.fsutil import to_json

CHUNK = 1 << 20


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    embedded: bool = False


def source_settings(data_endpoint: str | None, storage: StorageConfig, root: str | os.PathLike = ".") -> S3Settings:
    """Where an s3:// data.source is read: ``data.endpoint_url`` when set (credentials from the
    environment, like any non-embedded endpoint), else the pipeline's own store."""
    if data_endpoint:
        return S3Settings(
            storage.bucket,
            "",
            data_endpoint,
            storage.region,
            os.environ.get("AWS_ACCESS_KEY_ID"),
            os.environ.get("AWS_SECRET_ACCESS_KEY"),
        )
    return resolve_settings(storage, root)


def resolve_settings(cfg: StorageConfig, root: str | os.PathLike = ".") -> S3Settings:
    endpoint = cfg.endpoint_url or os.environ.get("FRUGALML_S3_ENDPOINT") or None
    if endpoint is None:
        info = embedded_info(root)
        if info is not None:
            return S3Settings(
                cfg.bucket,
                cfg.prefix,
                info.endpoint_url,
                cfg.region,
                info.access_key_id,
                info.secret_access_key,
                embedded=True,
            )
        if not os.environ.get("AWS_ACCESS_KEY_ID") and not Path("~/.aws").expanduser().exists():
            raise StorageError(
                "no object store configured: start the embedded one with `frugalml storage up`, "
                "or set storage.endpoint_url (or $FRUGALML_S3_ENDPOINT) and AWS credentials"
            )
    return S3Settings(
        cfg.bucket,
        cfg.prefix,
        endpoint,
        cfg.region,
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
    )


def settings_env(settings: S3Settings) -> dict[str, str]:
    """The environment under which a process outside this workspace (a DVC experiment's temporary
    copy, which has no ``.frugalml/``) resolves the same store: endpoint and credentials."""
    pairs = {
        "FRUGALML_S3_ENDPOINT": settings.endpoint_url,
        "AWS_ACCESS_KEY_ID": settings.access_key_id,
        "AWS_SECRET_ACCESS_KEY": settings.secret_access_key,
    }
    return {k: v for k, v in pairs.items() if v}


@dataclass
class Traffic:
    """S3 requests and bytes seen by this process (for the cost meter)."""

    requests_put: int = 0
    requests_get: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def as_dict(self) -> dict:
        return {
            "s3_requests_put": self.requests_put,
            "s3_requests_get": self.requests_get,
            "s3_bytes_up": self.bytes_up,
            "s3_bytes_down": self.bytes_down,
        }


TRAFFIC = Traffic()
_WRITE_OPS = {
    "PutObject",
    "CopyObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "ListObjectsV2",
    "ListObjects",
    "DeleteObject",
    "DeleteObjects",
    "CreateBucket",
}


def _count_request(model, params, **_):
    with TRAFFIC._lock:
        if model.name in _WRITE_OPS:  # S3 bills LIST and COPY at the PUT rate
            TRAFFIC.requests_put += 1
        else:
            TRAFFIC.requests_get += 1
        body = params.get("body")
        if isinstance(body, (bytes, bytearray)):
            TRAFFIC.bytes_up += len(body)
        elif hasattr(body, "seek") and hasattr(body, "tell"):
            try:
                pos = body.tell()
                body.seek(0, 2)
                TRAFFIC.bytes_up += body.tell() - pos
                body.seek(pos)
            except (OSError, ValueError):
                pass


def _count_response(http_response=None, parsed=None, **_):
    if http_response is not None:
        length = http_response.headers.get("content-length")
        if length and parsed is not None and "Body" in parsed:
            with TRAFFIC._lock:
                TRAFFIC.bytes_down += int(length)


def _translate(exc: Exception, what: str) -> Exception:
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)):
        return TransientStorageError(f"{what}: the object store did not answer ({exc.__class__.__name__})")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return PreconditionFailed(f"{what}: precondition failed (another writer got there first)")
        if status >= 500 or code in ("SlowDown", "InternalError", "ServiceUnavailable"):
            return TransientStorageError(f"{what}: the object store answered {status} {code}")
        if status == 403 or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"{what}: access denied ({code}); check the S3 credentials")
        if code == "NoSuchBucket":
            return StorageError(f"{what}: the bucket does not exist; create it or run `frugalml storage up`")
        if status == 404 or code in ("NoSuchKey", "NotFound", "404"):
            return NotFound(f"{what}: no such object")
        return StorageError(f"{what}: {code or status} {exc.response.get('Error', {}).get('Message', '')}".strip())
    return StorageError(f"{what}: {exc}")


class Store:
    """Keys given to the methods are relative to ``storage.prefix``."""

    def __init__(self, settings: S3Settings):
        import boto3  # lazy: boto3: only a client that talks to S3 pays for it
        from botocore.config import Config  # lazy: botocore: only a client that talks to S3 pays for it

        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            config=Config(
                signature_version="s3v4",
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 4, "mode": "standard"},
            ),
        )
        self.client.meta.events.register("before-call.s3", _count_request)
        self.client.meta.events.register("after-call.s3", _count_response)

    @classmethod
    def from_config(cls, cfg: StorageConfig, root: str | os.PathLike = ".") -> Store:
        return cls(resolve_settings(cfg, root))

    @classmethod
    def optional(cls, cfg: StorageConfig, *, tolerate_transient: bool = False) -> Store | None:
        """The store when one is configured, else None (the feature that needs it is skipped).

        A transient failure (the endpoint is configured but did not answer) is raised, so the
        stage is retried, unless ``tolerate_transient`` (a best-effort use such as checkpoints)."""
        try:
            return cls.from_config(cfg)
        except TransientStorageError:
            if tolerate_transient:
                return None
            raise
        except StorageError:
            return None

    def key(self, rel: str) -> str:
        return self.prefix + rel.lstrip("/")

    def uri(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.key(rel)}"

    # -- writes ------------------------------------------------------------------------
    def put_bytes(
        self,
        rel: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        """One PUT: S3 makes it visible whole or not at all. Returns the new ETag."""
        args = dict(
            Bucket=self.bucket,
            Key=self.key(rel),
            Body=data,
            ContentType=content_type,
            Metadata={"sha256": hashlib.sha256(data).hexdigest()},
        )
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if if_match:
            args["IfMatch"] = if_match
        try:
            return self.client.put_object(**args)["ETag"]
        except Exception as exc:
            raise _translate(exc, f"writing {self.uri(rel)}") from None

    def put_json(self, rel: str, obj, **kw) -> str:
        return self.put_bytes(rel, to_json(obj).encode(), content_type="application/json", **kw)

    def put_json_once(self, rel: str, obj: dict, *, write_id: str, if_match: str | None = None) -> str:
        """A conditional JSON write that is idempotent when a response is lost.

        ``obj`` is stored with ``write_id``. botocore resends a PUT whose response it lost; the
        resend then fails its condition (412) because the first one landed. So on a 412 the
        current object is read: if it carries our ``write_id`` the write succeeded and its ETag
        is returned; otherwise another writer got there first (PreconditionFailed).
        Without ``if_match`` the write is create-only (If-None-Match: *).
        """
        body = {**obj, "write_id": write_id}
        try:
            return self.put_json(rel, body, if_match=if_match, if_none_match=if_match is None)
        except PreconditionFailed:
            try:
                current, etag = self.get_bytes(rel)

                if json.loads(current).get("write_id") == write_id:
                    return etag
            except (StorageError, ValueError, AttributeError):
                pass
            raise

    def put_file(self, rel: str, path: str | os.PathLike, *, if_none_match: bool = False) -> str:
        """Upload a file with its sha256 in the object's metadata (multipart when large).

        A multipart upload becomes visible only at CompleteMultipartUpload, so it is atomic too.
        """
        from boto3.s3.transfer import TransferConfig  # lazy: boto3: only a client that talks to S3 pays for it

        digest = file_sha256(path)
        extra = {"Metadata": {"sha256": digest}}
        size = os.path.getsize(path)
        try:
            if if_none_match and size < 64 * CHUNK:
                with open(path, "rb") as f:
                    self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=f, IfNoneMatch="*", **extra)
            else:
                self.client.upload_file(
                    str(path),
                    self.bucket,
                    self.key(rel),
                    ExtraArgs=extra,
                    Config=TransferConfig(multipart_threshold=64 * CHUNK),
                )
        except Exception as exc:
            raise _translate(exc, f"uploading {path} to {self.uri(rel)}") from None
        return digest

    def delete(self, rel: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))
        except Exception as exc:
            raise _translate(exc, f"deleting {self.uri(rel)}") from None

    # -- reads -------------------------------------------------------------------------
    def get_bytes(self, rel: str, *, verify: bool = True) -> tuple[bytes, str]:
        """The object's bytes and ETag; checks the sha256 recorded at upload."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
            data = resp["Body"].read()
        except Exception as exc:
            raise _translate(exc, f"reading {self.uri(rel)}") from None
        want = resp.get("Metadata", {}).get("sha256")
        if verify and want and hashlib.sha256(data).hexdigest() != want:
            raise StorageError(f"reading {self.uri(rel)}: checksum mismatch (corrupt object)")
        return data, resp["ETag"]

    def get_json(self, rel: str):
        return json.loads(self.get_bytes(rel)[0])

    def download(self, rel: str, dest: str | os.PathLike) -> Path:
        """Download to ``dest`` atomically and verify the recorded sha256."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")  # unique: concurrent downloads
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(rel))
            self.client.download_file(self.bucket, self.key(rel), str(tmp))
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise _translate(exc, f"downloading {self.uri(rel)}") from None
        want = head.get("Metadata", {}).get("sha256")
        os.chmod(tmp, 0o644)
        if want and file_sha256(tmp) != want:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"downloading {self.uri(rel)}: checksum mismatch (corrupt object)")
        os.replace(tmp, dest)
        return dest

    def exists(self, rel: str) -> bool:
        return self.head(rel) is not None

    def head(self, rel: str) -> dict | None:
        from botocore.exceptions import ClientError  # lazy: botocore: only a client that talks to S3 pays for it

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key(rel))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404 or exc.response.get(
                "Error", {}
            ).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _translate(exc, f"checking {self.uri(rel)}") from None
        except Exception as exc:
            raise _translate(exc, f"checking {self.uri(rel)}") from None

    # -- any bucket on this endpoint (data sources) ---------------------------------------
    def iter_objects(self, bucket: str, prefix: str) -> Iterator[dict]:
        """Objects of ``bucket`` under ``prefix`` (keys as they are, not relative to ``storage.prefix``),
        as dicts with ``key``, ``size`` and ``etag`` (without quotes)."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield {"key": obj["Key"], "size": obj["Size"], "etag": obj["ETag"].strip('"')}
        except Exception as exc:
            raise _translate(exc, f"listing s3://{bucket}/{prefix}") from None

    def read_object(self, bucket: str, key: str, limit: int) -> bytes:
        """At most ``limit + 1`` bytes of an object: more than ``limit`` means it is too large, and
        the rest is not downloaded."""
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            data = body.read(limit + 1)
            if len(data) > limit:
                body.close()
            return data
        except Exception as exc:
            raise _translate(exc, f"reading s3://{bucket}/{key}") from None

    def write_object(self, bucket: str, key: str, data: bytes) -> str:
        """One PUT to ``bucket``/``key`` (sha256 in the metadata). Returns the ETag."""
        try:
            return self.client.put_object(
                Bucket=bucket, Key=key, Body=data, Metadata={"sha256": hashlib.sha256(data).hexdigest()}
            )["ETag"]
        except Exception as exc:
            raise _translate(exc, f"writing s3://{bucket}/{key}") from None

    def presign(self, bucket: str, key: str, expires_s: int) -> str:
        """A GET URL for ``bucket``/``key`` that works without credentials until it expires (signed
        here, offline: nothing is sent). Anyone holding it can read the object until then."""
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_s)
            )
        except Exception as exc:
            raise _translate(exc, f"signing a URL for s3://{bucket}/{key}") from None

    def list(self, rel_prefix: str = "") -> Iterator[dict]:
        """Objects under a prefix, as dicts with ``key`` (relative), ``size``, ``etag``."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(rel_prefix)):
                for obj in page.get("Contents", []):
                    yield {"key": obj["Key"][len(self.prefix) :], "size": obj["Size"], "etag": obj["ETag"]}
        except Exception as exc:
            raise _translate(exc, f"listing {self.uri(rel_prefix)}") from None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key
