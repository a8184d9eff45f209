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
import hashlib
import io
import json
import socket
import tarfile
import time
import uuid
from pathlib import Path

from frugalml.core.errors import FrugalError, NotFound, PreconditionFailed
from frugalml.core.fsutil import atomic_write_json, read_json
from frugalml.core.store import Store

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
        self._previous: dict[str, dict | None] = {}

    def _key(self, *parts: str) -> str:
        return "/".join(["registry", self.model, *parts])

    # -- versions -------------------------------------------------------------------------
    def register(self, version: str, record: dict) -> None:
        """Write the version record once; the bento it points to must already be uploaded.

        Idempotent: a resent write (lost response) and a replayed package stage (same run,
        same model: the version is derived from both) find their own record and succeed.
        """
        write_id = f"register-{record.get('run_id', '')}-{record.get('lineage', {}).get('model_sha256', '')}"
        try:
            self.store.put_json_once(self._key("versions", f"{version}.json"), record, write_id=write_id)
        except PreconditionFailed:
            raise RegistryError(
                f"version {version} of {self.model} is already registered by another run (versions are immutable)"
            ) from None
        self.event("register", event_id=write_id, version=version)

    def find(self, version: str) -> dict | None:
        """The version record, or None when it does not exist."""
        try:
            return self.store.get_json(self._key("versions", f"{version}.json"))
        except NotFound:
            return None

    def get(self, version: str) -> dict:
        record = self.find(version)
        if record is None:
            raise RegistryError(
                f"no version {version} of model {self.model} in the registry (see `frugalml models list`)"
            )
        return record

    def versions(self) -> list[str]:
        prefix = self._key("versions") + "/"
        return sorted(o["key"][len(prefix) : -5] for o in self.store.list(prefix) if o["key"].endswith(".json"))

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
        try:
            data, etag = self.store.get_bytes(self._key("aliases", f"{alias}.json"))
        except NotFound:
            return None, None
        try:
            pointer = json.loads(data)
            if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
                raise ValueError("no version")
        except ValueError as exc:
            raise RegistryError(
                f"alias {alias!r} of {self.model} is not a valid pointer ({exc}); "
                f"fix it with `frugalml promote VERSION --to {alias} --force --reason ...`"
            ) from None
        return pointer, etag

    def aliases(self) -> dict[str, str]:
        return {a: p["version"] for a in ALIASES if (p := self.alias(a)[0])}

    def _swap(self, alias: str, change, attempts: int = 50, write_id: str | None = None) -> tuple[dict | None, dict]:
        """Compare-and-swap loop: ``change(old_pointer) -> new_pointer``; retried on a lost race.

        The new pointer carries a write id: when a resent PUT (lost response) fails its If-Match
        because our own first PUT landed, the pointer read back carries our id and the change is
        done, not applied a second time.
        """
        if alias not in ALIASES:
            raise RegistryError(f"unknown alias {alias!r}; use one of {', '.join(ALIASES)}")
        write_id = write_id or uuid.uuid4().hex
        for i in range(attempts):
            try:
                old, etag = self.alias(alias)
            except RegistryError:
                old, etag = None, self.store.head(self._key("aliases", f"{alias}.json"))["ETag"]  # overwrite junk
            if old and old.get("write_id") == write_id:
                return self._previous.get(write_id), old  # an earlier attempt of this call landed
            new = change(old)
            self._previous[write_id] = old
            try:
                self.store.put_json_once(self._key("aliases", f"{alias}.json"), new, write_id=write_id, if_match=etag)
                return old, {**new, "write_id": write_id}
            except PreconditionFailed:
                time.sleep(min(0.5, 0.01 * (2 ** min(i, 6))) * (0.5 + uuid.uuid4().int % 100 / 100))
        raise RegistryError(f"could not update alias {alias!r}: {attempts} concurrent writers won the race")

    def promote(
        self, version: str, alias: str, *, force: bool = False, reason: str = "", write_id: str | None = None
    ) -> dict:
        """Point ``alias`` at ``version``. ``write_id`` names this promotion: a retry of it (e.g.
        a Prefect task retry after a lost response) finds it done instead of appending twice."""
        record = self.get(version)
        decision = record.get("gate", {}).get("decision")
        if decision != "accept" and not force:
            raise RegistryError(
                f"version {version} was rejected by the gate ({', '.join(record['gate'].get('failed', []))}); "
                f"use --force --reason TEXT to promote it anyway"
            )
        if force and not reason.strip():
            raise RegistryError("--force needs --reason TEXT (it is recorded in the audit trail)")

        def change(old):
            history = (old.get("history", []) + [old["version"]]) if old else []
            return {
                "model": self.model,
                "alias": alias,
                "version": version,
                "history": history[-50:],
                "updated": _now(),
                "by": _actor(),
                "forced": force,
                "reason": reason,
            }

        old, new = self._swap(alias, change, write_id=write_id)
        self.event(
            "promote",
            event_id=new["write_id"],
            alias=alias,
            version=version,
            previous=old["version"] if old else None,
            forced=force,
            reason=reason,
        )
        return new

    def rollback(self, alias: str) -> dict:
        def change(old):
            if not old or not old.get("history"):
                raise RegistryError(f"alias {alias!r} has no previous version to roll back to")
            return {
                "model": self.model,
                "alias": alias,
                "version": old["history"][-1],
                "history": old["history"][:-1],
                "updated": _now(),
                "by": _actor(),
                "forced": False,
                "reason": f"rollback from {old['version']}",
            }

        old, new = self._swap(alias, change)
        self.event(
            "rollback",
            event_id=new["write_id"],
            alias=alias,
            version=new["version"],
            previous=old["version"] if old else None,
        )
        return new

    def events(self) -> list[dict]:
        prefix = self._key("events") + "/"
        return [self.store.get_json(o["key"]) for o in sorted(self.store.list(prefix), key=lambda o: o["key"])]

    def event(self, action: str, *, event_id: str, **fields) -> str:
        """One audit-trail object per change. ``event_id`` names the change (a replay of the same
        change finds its event and writes no second one)."""
        suffix = f"-{hashlib.sha256(event_id.encode()).hexdigest()[:16]}.json"
        for o in self.store.list(self._key("events") + "/"):
            if o["key"].endswith(suffix):
                return o["key"]
        ts = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:] + "Z"
        key = self._key("events", ts + suffix)
        self.store.put_json_once(
            key, {"action": action, "model": self.model, "time": _now(), "by": _actor(), **fields}, write_id=event_id
        )
        return key


CHAMPION_FILE = "models/champion.json"


def write_champion(reg: Registry, root=".") -> dict:
    """Write which version ``production`` points at to models/champion.json (a DVC dep of
    evaluate): after a promotion DVC sees evaluate and gate as changed, and evaluate scores
    exactly the version named there. Rewritten only when it changes."""

    pointer, _ = reg.alias("production")
    want = {"alias": "production", "model": reg.model, "version": pointer["version"] if pointer else None}
    path = Path(root) / CHAMPION_FILE
    try:
        if read_json(path) == want:
            return want
    except (OSError, ValueError):
        pass
    atomic_write_json(path, want)
    return want


def read_champion(model: str, root=".") -> tuple[bool, str | None]:
    """(known, version) from models/champion.json; known is False when the file does not name
    this model (then the caller resolves the alias itself)."""

    try:
        c = read_json(Path(root) / CHAMPION_FILE)
    except (OSError, ValueError):
        return False, None
    if c.get("model") != model:
        return False, None
    return True, c.get("version")


def fetch_model_blob(store: Store, model: str, ref: str, cache_dir=".frugalml/cache/bentos") -> tuple[str, dict]:
    """The weights of a registered model (alias or version): (version, model.pt contents).

    Downloads the version's bento once into a local cache (sha256 checked) and reads
    ``model.pt`` out of the archive in memory: nothing from the archive is extracted to disk.
    """

    import torch  # lazy: torch: seconds to import; only the paths that run a model pay for it

    reg = Registry(store, model)
    version = reg.resolve(ref)
    record = reg.get(version)
    path = Path(cache_dir) / f"{model}-{version}.bento"
    if not path.exists():
        store.download(f"bentos/{model}/{version}.bento", path)
    with tarfile.open(path, "r:*") as tf:
        member = next(
            (m for m in tf.getmembers() if m.isfile() and m.name.endswith("/model.pt") and "/models/" in "/" + m.name),
            None,
        )
        if member is None:
            raise RegistryError(f"the bento of {model} {version} holds no model.pt")
        data = tf.extractfile(member).read()
    blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    blob.setdefault("classes", record.get("classes", []))
    return version, blob
