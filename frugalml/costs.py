"""Cost meter, price sheet and ledger.

A stage runs inside ``CostMeter``; on exit the meter holds wall and CPU seconds (self and
children), peak RSS, GPU seconds where CUDA was used, and the S3 traffic this process made.
``price`` turns a ledger entry into dollars with ``costs.prices``.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field

from frugalml.config import CostsConfig


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class CostMeter:
    stage: str
    run_id: str
    extra: dict = field(default_factory=dict)
    _t0: float = 0.0
    _cpu0: float = 0.0
    entry: dict = field(default_factory=dict)

    def __enter__(self) -> "CostMeter":
        from frugalml.store import TRAFFIC

        self._traffic0 = TRAFFIC.as_dict()
        self._t0 = time.perf_counter()
        self._cpu0 = _cpu_s()
        return self

    def add(self, **items: float) -> None:
        """Stage-specific quantities: ``labeled_images``, ``stored_bytes``, ``gpu_s``..."""
        for k, v in items.items():
            self.extra[k] = self.extra.get(k, 0) + v

    def __exit__(self, *exc) -> None:
        from frugalml.store import TRAFFIC

        wall_s = time.perf_counter() - self._t0
        cpu_s = _cpu_s() - self._cpu0
        rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        traffic = {k: v - self._traffic0[k] for k, v in TRAFFIC.as_dict().items()}
        self.entry = {
            "stage": self.stage,
            "run_id": self.run_id,
            "wall_s": round(wall_s, 3),
            "cpu_s": round(cpu_s, 3),
            "peak_rss_mb": round(max(rss_self, rss_children) / 1024, 1),  # ru_maxrss is KiB on Linux
            **traffic,
            **self.extra,
        }


def price(entry: dict, costs: CostsConfig) -> dict:
    """Dollar figures for one ledger entry.

    Compute is billed like a rented machine: wall time x vCPUs x price per vCPU-hour
    (``costs.vcpus``, 0 = this machine's core count), plus GPU-hours at ``costs.gpu_type``.
    """
    p = costs.prices
    vcpus = costs.vcpus or os.cpu_count() or 1
    compute = entry.get("wall_s", 0) / 3600 * vcpus * p.usd_per_vcpu_hour
    gpu = entry.get("gpu_s", 0) / 3600 * p.usd_per_gpu_hour.get(costs.gpu_type, 0.0)
    requests = (entry.get("s3_requests_put", 0) * p.usd_per_1k_put
                + entry.get("s3_requests_get", 0) * p.usd_per_1k_get) / 1000
    labeling = entry.get("labeled_images", 0) * p.labeling_usd_per_image
    storage_month = entry.get("stored_bytes", 0) / 1e9 * p.usd_per_gb_month
    total = compute + gpu + requests + labeling
    return {
        "compute_usd": round(compute, 6), "gpu_usd": round(gpu, 6), "s3_requests_usd": round(requests, 6),
        "labeling_usd": round(labeling, 6), "storage_usd_per_month": round(storage_month, 6),
        "total_usd": round(total, 6),
    }
