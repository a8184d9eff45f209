"""The three places pretrained weights come from, each with the line it prints, in one run.

    .venv/bin/python benchmarks/weights_paths.py

Offline: a private embedded S3 server (the team mirror) and a loopback HTTP server that serves a
generated resnet18 state dict named with its sha256 prefix, as torchvision names its files (the
download runs through torchvision's own ``load_state_dict_from_url`` and hash check). Three
workers with their own empty ``TORCH_HOME``: the first downloads (and mirrors), the second reads
the mirror, then its own cache; a fourth with nothing reachable gets the one-line error (exit 2).
Then the real train and package stages on a fifth worker, and the lineage the registry recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _common import BENCH_DIR, exit_cleanly_on_sigterm  # noqa: E402

CLI = [sys.executable, "-m", "frugalml.cli"]


def show(work: Path, env: dict, cmd: list[str], home: str) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=work, env={**env, "TORCH_HOME": str(work / home)}, capture_output=True, text=True)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(("weights:", "error:", "train:"))]
    print(f"$ TORCH_HOME={home} {' '.join(cmd[2:])}  (exit {res.returncode})", *lines, "", sep="\n")
    return res


def main() -> None:
    exit_cleanly_on_sigterm()
    from frugalml.core.embedded import EmbeddedS3
    from tests.test_weights import WeightsServer, _closed_port

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=BENCH_DIR))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FRUGALML_"))}
    env["PYTHONPATH"] = str(ROOT)
    http, s3 = WeightsServer(), EmbeddedS3(work)
    try:
        name, _ = http.add("resnet18")
        s3.up()
        params = (f"data:\n  source: builtin:digits\nmodel:\n  name: weights-demo\n  pretrained: torchvision\n"
                  f"  weights_url: {http.url(name)}\n  image_size: 16\ntrain:\n  epochs: 1\n"
                  "evaluate:\n  latency_samples: 5\ngates:\n  min_accuracy: 0\n")  # fmt: skip
        (work / "params.yaml").write_text(params)
        show(work, env, [*CLI, "weights", "fetch"], "worker1")
        show(work, env, [*CLI, "weights", "fetch"], "worker2")
        show(work, env, [*CLI, "weights", "fetch"], "worker2")
        (work / "params.yaml").write_text(params.replace(http.url(name), f"http://127.0.0.1:{_closed_port()}/"))
        show(work, env, [*CLI, "weights", "fetch", "--arch", "mobilenet_v3_small"], "worker3")
        (work / "params.yaml").write_text(params)
        for stage in ("ingest", "validate", "train", "evaluate", "gate", "package"):
            res = show(work, env, [sys.executable, "-m", f"tasks.{stage}"], "worker4")
            if res.returncode:
                raise SystemExit(res.stderr[-3000:])
        cost = json.loads((work / "costs/train.json").read_text())
        print("costs/train.json:", json.dumps({k: v for k, v in cost.items() if k.startswith(("weights", "s3_"))}))
        version = json.loads((work / "metrics/package.json").read_text())["version"]
        record = subprocess.run([*CLI, "models", "show", version], cwd=work, env=env, capture_output=True, text=True)
        print("registry version record, lineage:", json.dumps(json.loads(record.stdout)["lineage"], indent=2))
    finally:
        s3.down()
        http.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
