"""DVC on a large prepared dataset: how long `dvc push` and `dvc status` take.

    .venv/bin/python benchmarks/dvc_scale.py [--images 20000]

Builds a throwaway git + DVC repo with the pipeline, a local source of N generated images,
runs the ingest stage, then times against a fresh embedded SeaweedFS:
`dvc status` (workspace), `dvc push` (cold), `dvc status -c` (vs the remote), `dvc push`
again (nothing to send); then, side by side, the same images as loose files (`dvc add`,
`dvc push`, `dvc status -c`). Prints seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import BENCH_DIR, BIN, bin_on_path, pipeline_repo  # noqa: E402
from ingest import generate  # noqa: E402


def timed(cmd, cwd, env) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{cmd} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return round(time.perf_counter() - t0, 2)


def main() -> None:
    from _common import exit_cleanly_on_sigterm

    exit_cleanly_on_sigterm()
    from frugalml.core.embedded import EmbeddedS3

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    args = ap.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
        tmp = Path(tmp)
        env = bin_on_path(dict(os.environ))
        repo = pipeline_repo(tmp / "repo", env)
        print(f"generating {args.images} images ...", flush=True)
        generate(tmp / "src", args.images)
        from frugalml.core.config import write_overrides

        write_overrides(repo / "params.yaml", [f"data.source={tmp / 'src'}"])
        server = EmbeddedS3(repo, bucket="frugalml")
        server.up()
        try:
            subprocess.run(
                [sys.executable, "-m", "frugalml.cli", "storage", "configure"],
                cwd=repo,
                env={**env, "FRUGALML_S3_ENDPOINT": ""},
                check=True,
                capture_output=True,
            )
            t_ingest = timed([str(BIN / "dvc"), "repro", "ingest"], repo, env)
            result = {
                "images": args.images,
                "dvc_repro_ingest_s": t_ingest,
                "dvc_status_s": timed([str(BIN / "dvc"), "status"], repo, env),
                "dvc_push_cold_s": timed([str(BIN / "dvc"), "push"], repo, env),
                "dvc_status_cloud_s": timed([str(BIN / "dvc"), "status", "-c"], repo, env),
                "dvc_push_noop_s": timed([str(BIN / "dvc"), "push"], repo, env),
            }
            result["shard_files"] = len(list((repo / "data" / "prepared").iterdir()))
            # Side by side: the same images as loose files, tracked with `dvc add`.
            shutil.copytree(tmp / "src", repo / "loose")
            result["loose_files"] = args.images
            result["loose_dvc_add_s"] = timed([str(BIN / "dvc"), "add", "loose"], repo, env)
            result["loose_dvc_push_cold_s"] = timed([str(BIN / "dvc"), "push", "loose.dvc"], repo, env)
            result["loose_dvc_status_cloud_s"] = timed([str(BIN / "dvc"), "status", "-c", "loose.dvc"], repo, env)
            result["push_ratio_loose_to_shards"] = round(result["loose_dvc_push_cold_s"] / result["dvc_push_cold_s"], 1)
            print(json.dumps(result, indent=2))
        finally:
            server.down()


if __name__ == "__main__":
    main()
