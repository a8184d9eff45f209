"""The model registry in S3 (layout in ARCHITECTURE.md).

    registry/<model>/versions/<version>.json   immutable version record (written once, If-None-Match)
    registry/<model>/aliases/<alias>.json      mutable pointer, changed only by conditional write
    registry/<model>/events/<ts>-<id>.json     one object per change (audit trail)
"""

from __future__ import annotations

import time
import uuid

from frugalml.errors import FrugalError, PreconditionFailed
from frugalml.store import Store


class RegistryError(FrugalError):
    exit_code = 2


class Registry:
    def __init__(self, store: Store, model: str):
        self.store = store
        self.model = model

    def _key(self, *parts: str) -> str:
        return "/".join(["registry", self.model, *parts])

    def register(self, version: str, record: dict) -> None:
        """Write the version record once; the bento it points to must already be uploaded."""
        try:
            self.store.put_json(self._key("versions", f"{version}.json"), record, if_none_match=True)
        except PreconditionFailed:
            raise RegistryError(f"version {version} of {self.model} is already registered (versions are immutable)") from None
        self.event("register", version=version)

    def get(self, version: str) -> dict:
        if not self.store.exists(self._key("versions", f"{version}.json")):
            raise RegistryError(f"no version {version} of model {self.model} in the registry")
        return self.store.get_json(self._key("versions", f"{version}.json"))

    def versions(self) -> list[str]:
        prefix = self._key("versions") + "/"
        return sorted(o["key"][len(prefix):-5] for o in self.store.list(prefix) if o["key"].endswith(".json"))

    def alias(self, alias: str) -> tuple[dict | None, str | None]:
        """(pointer, etag) or (None, None) when the alias was never set."""
        key = self._key("aliases", f"{alias}.json")
        if not self.store.exists(key):
            return None, None
        import json

        data, etag = self.store.get_bytes(key)
        return json.loads(data), etag

    def event(self, action: str, **fields) -> str:
        ts = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        key = self._key("events", f"{ts}-{uuid.uuid4().hex[:8]}.json")
        self.store.put_json(key, {"action": action, "model": self.model, "time": ts, **fields}, if_none_match=True)
        return key
