"""How many intra-op threads a process uses: the CPUs it is actually allowed, set once at start (issue 23).

PyTorch starts as many OpenMP threads as the machine has cores, whatever the process may use. Each parallel region of
a small model's op ends at a barrier that waits for its slowest thread, so when another job holds a core one thread
is descheduled and every op waits for it; OpenMP's default wait spins, burning the very CPU the late thread needs.
The default run on 2 shared cores ran 60-100x slower (benchmarks/bench_contention.py measures the ratios). Here:

- the count follows what the process may use: ``OMP_NUM_THREADS`` when set, else the CPUs in its affinity mask
  (``taskset``, SLURM's ``--cpus-per-task``) capped by its cgroup quota (``cpu.max``, docker ``--cpus``);
- ``OMP_WAIT_POLICY=passive`` unless set: a waiting thread sleeps instead of spinning. It only takes effect if set
  before OpenMP starts, so ``configure_env`` runs first thing in ``launch.py``, before torch is imported.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """CPUs the cgroup (v2) quota allows, rounded up; None when there is no quota ("max") or no cgroup file."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may run on: its affinity mask, capped by its cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity masks
        n = os.cpu_count() or 1
    quota = cgroup_cpus(cpu_max)
    return min(n, quota) if quota else n


def thread_count(environ=os.environ, cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """``OMP_NUM_THREADS`` when it is a positive integer (the user's word), else ``available_cpus``."""
    value = environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return available_cpus(cpu_max)


def configure_env(environ=os.environ) -> None:
    """Before torch loads: passive OpenMP waits and the thread count, unless the user set them."""
    environ.setdefault("OMP_WAIT_POLICY", "passive")
    environ.setdefault("OMP_NUM_THREADS", str(thread_count(environ)))
    environ.setdefault("MKL_NUM_THREADS", environ["OMP_NUM_THREADS"])


def configure_threads() -> int:
    """``configure_env`` and torch's intra-op thread count; returns the count."""
    configure_env()
    import torch

    n = thread_count()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
