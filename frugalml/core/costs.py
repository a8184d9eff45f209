"""Cost meter, price sheet and ledger.

A stage runs inside ``CostMeter``; on exit the meter holds wall and CPU seconds (self and
children) counted from the start of the stage's process (its imports are part of its cost),
peak RSS, GPU seconds where CUDA was used, GPU energy from NVML where a driver answers, and
the S3 traffic this process made. ``price`` turns a ledger entry into dollars with
``costs.prices``.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from frugalml.core.config import CostsConfig
from frugalml.core.procs import start_ticks
from frugalml.core.store import TRAFFIC


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _process_age_s() -> float:
    """Seconds since this process started (0 where the OS does not say).

    On Linux: /proc/self/stat's start time (clock ticks since boot) against CLOCK_BOOTTIME,
    10 ms resolution. (psutil's create_time adds whole-second boot-time rounding.)
    """

    try:
        ticks = start_ticks()
        if ticks is not None:
            return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:
        return 0.0


def _self_peak_rss_kib() -> int:
    """This process's own peak RSS.

    ``VmHWM`` belongs to the current address space; ``ru_maxrss`` for RUSAGE_SELF would carry
    over the high-water mark of the process that exec'd us (DVC), over-reporting small stages.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _Nvml:
    """Total GPU energy counters through NVML (Volta and newer); absent without a driver."""

    def __init__(self) -> None:
        self.handles: list = []
        try:
            import pynvml  # lazy: pynvml: optional, absent on machines without NVIDIA drivers

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # no NVIDIA driver, or the package is missing: nothing to measure
            self.handles = []

    def energy_mj(self) -> int | None:
        if not self.handles:
            return None
        try:
            return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles)
        except Exception:
            return None


@dataclass
class CostMeter:
    stage: str
    run_id: str
    extra: dict = field(default_factory=dict)
    count_startup: bool = False  # a stage process: bill from the process start, imports included
    _t0: float = 0.0
    _cpu0: float = 0.0
    entry: dict = field(default_factory=dict)

    def __enter__(self) -> CostMeter:
        self._traffic0 = TRAFFIC.as_dict()
        self._startup_s = _process_age_s() if self.count_startup else 0.0
        self._t0 = time.perf_counter()
        self._cpu0 = 0.0 if self.count_startup else _cpu_s()  # os.times() counts from the process start
        self._nvml = _Nvml()
        self._energy0 = self._nvml.energy_mj()
        return self

    def elapsed_s(self) -> float:
        """Wall seconds billed so far (the process start-up included for a stage)."""
        return time.perf_counter() - self._t0 + self._startup_s

    def add(self, **items: float) -> None:
        """Stage-specific quantities: ``labeled_images``, ``stored_bytes``, ``gpu_s``..."""
        for k, v in items.items():
            self.extra[k] = self.extra.get(k, 0) + v

    def __exit__(self, *exc) -> None:
        wall_s = time.perf_counter() - self._t0 + self._startup_s
        cpu_s = _cpu_s() - self._cpu0
        energy1 = self._nvml.energy_mj()
        if self._energy0 is not None and energy1 is not None:
            # All GPUs of the machine: on a shared machine this includes other tenants' work.
            self.extra["gpu_energy_j"] = round((energy1 - self._energy0) / 1000, 1)
        rss_self = _self_peak_rss_kib()
        rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        traffic = {k: v - self._traffic0[k] for k, v in TRAFFIC.as_dict().items()}
        self.entry = {
            "stage": self.stage,
            "run_id": self.run_id,
            "wall_s": round(wall_s, 3),
            "startup_s": round(self._startup_s, 3),
            "cpu_s": round(cpu_s, 3),
            "peak_rss_mb": round(max(rss_self, rss_children) / 1024, 1),  # ru_maxrss is KiB on Linux
            **traffic,
            **self.extra,
        }


def price(entry: dict, costs: CostsConfig, capacity: str = "on_demand") -> dict:
    """Dollar figures for one ledger entry.

    Compute is billed like a rented machine: wall time x vCPUs x price per vCPU-hour
    (``costs.vcpus``, 0 = this machine's core count), plus GPU-hours at ``costs.gpu_type``,
    at the on-demand or the spot rates of the price sheet (``capacity``).
    """
    p = costs.prices
    vcpus = costs.vcpus or os.cpu_count() or 1

    def machine(capacity: str, share: float = 1.0) -> tuple[float, float]:
        """(compute, GPU) USD of ``share`` of the entry's wall and GPU time at ``capacity``'s rates."""
        per_vcpu, per_gpu = p.rates(capacity)
        return (
            share * entry.get("wall_s", 0) / 3600 * vcpus * per_vcpu,
            share * entry.get("gpu_s", 0) / 3600 * per_gpu.get(costs.gpu_type, 0.0),
        )

    compute, gpu = machine(capacity)
    requests = (
        entry.get("s3_requests_put", 0) * p.usd_per_1k_put + entry.get("s3_requests_get", 0) * p.usd_per_1k_get
    ) / 1000
    labeling = entry.get("labeled_images", 0) * p.labeling_usd_per_image
    storage_month = entry.get("stored_bytes", 0) / 1e9 * p.usd_per_gb_month
    total = compute + gpu + requests + labeling
    # The counterfactual: the work that was kept (not lost to an interruption) on on-demand capacity.
    wall = entry.get("wall_s", 0)
    kept = (wall - min(entry.get("lost_s", 0), wall)) / wall if wall else 1.0
    on_demand = sum(machine("on_demand", kept))
    return {
        "compute_usd": round(compute, 6),
        "gpu_usd": round(gpu, 6),
        "s3_requests_usd": round(requests, 6),
        "labeling_usd": round(labeling, 6),
        "storage_usd_per_month": round(storage_month, 6),
        "total_usd": round(total, 6),
        "on_demand_usd": round(on_demand + requests + labeling, 6),
    }
