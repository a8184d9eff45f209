"""The model registry in S3 (layout in ARCHITECTURE.md).

    registry/<model>/versions/<version>.json   immutable version record (written once, If-None-Match)
    registry/<model>/aliases/<alias>.json      mutable pointer, changed only by conditional write
    registry/<model>/events/<ts>-<id>.json     one object per change (audit trail)

An alias write is a compare-and-swap: it carries the ETag of the pointer it read
(If-Match), or If-None-Match when the alias is new. A writer that loses the race re-reads
and tries again, so concurrent promotions never lose an update: every change stays in
the pointer's history and in the events.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
import uuid

from frugalml.errors import FrugalError, PreconditionFailed
from frugalml.store import Store

ALIASES = ("staging", "production")


class RegistryError(FrugalError):
    exit_code = 2


def _actor() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Registry:
    def __init__(self, store: Store, model: str):
        self.store = store
        self.model = model

    def _key(self, *parts: str) -> str:
        return "/".join(["registry", self.model, *parts])

    # -- versions -------------------------------------------------------------------------
    def register(self, version: str, record: dict) -> None:
        """Write the version record once; the bento it points to must already be uploaded."""
        try:
            self.store.put_json(self._key("versions", f"{version}.json"), record, if_none_match=True)
        except PreconditionFailed:
            raise RegistryError(f"version {version} of {self.model} is already registered (versions are immutable)") from None
        self.event("register", version=version)

    def get(self, version: str) -> dict:
        if not self.store.exists(self._key("versions", f"{version}.json")):
            raise RegistryError(f"no version {version} of model {self.model} in the registry "
                                f"(see `frugalml models list`)")
        return self.store.get_json(self._key("versions", f"{version}.json"))

    def versions(self) -> list[str]:
        prefix = self._key("versions") + "/"
        return sorted(o["key"][len(prefix):-5] for o in self.store.list(prefix) if o["key"].endswith(".json"))

    def resolve(self, ref: str) -> str:
        """An alias or a version -> a version."""
        if ref in ALIASES:
            pointer, _ = self.alias(ref)
            if pointer is None:
                raise RegistryError(f"alias {ref!r} of {self.model} is not set; promote a version first")
            return pointer["version"]
        self.get(ref)
        return ref

    # -- aliases --------------------------------------------------------------------------
    def alias(self, alias: str) -> tuple[dict | None, str | None]:
        """(pointer, etag) or (None, None) when the alias was never set."""
        from frugalml.errors import StorageError

        try:
            data, etag = self.store.get_bytes(self._key("aliases", f"{alias}.json"))
        except StorageError as exc:
            if "NoSuchKey" in str(exc) or "404" in str(exc):
                return None, None
            raise
        return json.loads(data), etag

    def aliases(self) -> dict[str, str]:
        return {a: p["version"] for a in ALIASES if (p := self.alias(a)[0])}

    def _swap(self, alias: str, change, attempts: int = 50) -> tuple[dict | None, dict]:
        """Compare-and-swap loop: ``change(old_pointer) -> new_pointer``; retried on a lost race."""
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; use one of {', '.join(ALIASES)}")
        for i in range(attempts):
            old, etag = self.alias(alias)
            new = change(old)
            try:
                self.store.put_json(self._key("aliases", f"{alias}.json"), new,
                                    if_match=etag, if_none_match=etag is None)
                return old, new
            except PreconditionFailed:
                time.sleep(min(0.5, 0.01 * (2 ** min(i, 6))) * (0.5 + uuid.uuid4().int % 100 / 100))
        raise RegistryError(f"could not update alias {alias!r}: {attempts} concurrent writers won the race")

    def promote(self, version: str, alias: str, *, force: bool = False, reason: str = "") -> dict:
        record = self.get(version)
        decision = record.get("gate", {}).get("decision")
        if decision != "accept" and not force:
            raise RegistryError(f"version {version} was rejected by the gate ({', '.join(record['gate'].get('failed', []))}); "
                                f"use --force --reason TEXT to promote it anyway")
        if force and not reason.strip():
            raise RegistryError("--force needs --reason TEXT (it is recorded in the audit trail)")

        def change(old):
            history = (old.get("history", []) + [old["version"]]) if old else []
            return {"model": self.model, "alias": alias, "version": version, "history": history[-50:],
                    "updated": _now(), "by": _actor(), "forced": force, "reason": reason}

        old, new = self._swap(alias, change)
        self.event("promote", alias=alias, version=version, previous=old["version"] if old else None,
                   forced=force, reason=reason)
        return new

    def rollback(self, alias: str) -> dict:
        def change(old):
            if not old or not old.get("history"):
                raise RegistryError(f"alias {alias!r} has no previous version to roll back to")
            return {"model": self.model, "alias": alias, "version": old["history"][-1], "history": old["history"][:-1],
                    "updated": _now(), "by": _actor(), "forced": False, "reason": f"rollback from {old['version']}"}

        old, new = self._swap(alias, change)
        self.event("rollback", alias=alias, version=new["version"], previous=old["version"])
        return new

    def events(self) -> list[dict]:
        prefix = self._key("events") + "/"
        return [self.store.get_json(o["key"]) for o in sorted(self.store.list(prefix), key=lambda o: o["key"])]

    def event(self, action: str, **fields) -> str:
        ts = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:] + "Z"
        key = self._key("events", f"{ts}-{uuid.uuid4().hex[:8]}.json")
        self.store.put_json(key, {"action": action, "model": self.model, "time": _now(), "by": _actor(), **fields},
                            if_none_match=True)
        return key


def fetch_model_blob(store: Store, model: str, ref: str, cache_dir=".frugalml/cache/bentos") -> tuple[str, dict]:
    """The weights of a registered model (alias or version): (version, model.pt contents).

    Downloads the version's bento once into a local cache (sha256 checked) and reads
    ``model.pt`` out of the archive in memory: nothing from the archive is extracted to disk.
    """
    import io
    import tarfile
    from pathlib import Path

    import torch

    reg = Registry(store, model)
    version = reg.resolve(ref)
    record = reg.get(version)
    path = Path(cache_dir) / f"{model}-{version}.bento"
    if not path.exists():
        store.download(f"bentos/{model}/{version}.bento", path)
    with tarfile.open(path, "r:*") as tf:
        member = next((m for m in tf.getmembers() if m.isfile() and m.name.endswith("/model.pt")
                       and "/models/" in "/" + m.name), None)
        if member is None:
            raise RegistryError(f"the bento of {model} {version} holds no model.pt")
        data = tf.extractfile(member).read()
    blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    blob.setdefault("classes", record.get("classes", []))
    return version, blob
