"""The default run (``python launch.py``) from an empty cache, idle and beside CPU-bound burners (issue 23).

What a user on a shared 2-core node sees: the whole first run's wall time with ``--burners`` busy-looping processes
beside it, as a ratio to the same run with none, both measured here (other jobs on the machine move both sides), and
the longest console silence (seconds between two lines the run printed), since a run that prints nothing for minutes
looks hung. Each run gets its own empty cache and run folder, so both train the RL stage and generate from scratch.

    python benchmarks/bench_default_run_loaded.py                 # idle, then 2 burners
    python benchmarks/bench_default_run_loaded.py --skip-idle --idle-seconds 643   # reuse a measured idle time
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def burn() -> None:
    while True:
        pass


def timed_run(burners: int, extra: list[str]) -> dict:
    """Wall seconds of one default run and the longest gap between its console lines (stdout and stderr merged)."""
    work = Path(tempfile.mkdtemp(prefix="rlsft-loaded-"))
    env = {**os.environ, "RLSFT_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true",
           "PYTHONUNBUFFERED": "1"}
    env.pop("OMP_NUM_THREADS", None)  # the run decides its threads itself (rlsft.threads)
    cmd = [sys.executable, str(ROOT / "launch.py"), f"hydra.run.dir={work / 'run'}", *extra]
    procs = [subprocess.Popen([sys.executable, __file__, "--burn"]) for _ in range(burners)]
    gaps: list[tuple[float, str]] = []
    try:
        time.sleep(0.5 if burners else 0)
        t0 = last = time.perf_counter()
        run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
        for line in run.stdout:
            now = time.perf_counter()
            gaps.append((now - last, line.rstrip()[:100]))
            last = now
            print(f"  [{now - t0:7.1f}s] {line.rstrip()}", flush=True)
        rc = run.wait()
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    longest = max(gaps, default=(0.0, ""))
    return {"rc": rc, "wall": wall, "max_silence": longest[0], "before_silence_ended": longest[1], "run_dir": work}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burners", type=int, default=2)
    ap.add_argument("--skip-idle", action="store_true", help="take the idle time from --idle-seconds instead")
    ap.add_argument("--idle-seconds", type=float, default=None)
    ap.add_argument("--burn", action="store_true")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides passed to both runs")
    args = ap.parse_args()
    if args.burn:
        burn()
    print(f"{os.cpu_count()} cores, {len(os.sched_getaffinity(0))} in affinity; load average before "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    if args.skip_idle:
        idle = {"rc": 0, "wall": args.idle_seconds, "max_silence": float("nan"), "before_silence_ended": "(given)"}
    else:
        idle = timed_run(0, args.overrides)
    loaded = timed_run(args.burners, args.overrides)
    for name, r in (("idle", idle), (f"{args.burners} burners", loaded)):
        print(f"{name:>10s}: exit {r['rc']}, {r['wall']:7.1f} s, longest console silence {r['max_silence']:.1f} s "
              f"(ended by: {r['before_silence_ended']!r})")
    print(f"ratio loaded / idle: {loaded['wall'] / idle['wall']:.2f}")


if __name__ == "__main__":
    main()
