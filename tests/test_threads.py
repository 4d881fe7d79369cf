"""Thread count from the CPUs a process may use, and the heartbeat inside long steps (issue 23)."""

import os
import subprocess
import sys
import time

from conftest import ROOT
from rlsft.console import Heartbeat
from rlsft.threads import available_cpus, cgroup_cpus, configure_env, thread_count


def test_cgroup_quota_rounds_up_and_max_means_none(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert cgroup_cpus(f) == 2
    f.write_text("50000 100000\n")
    assert cgroup_cpus(f) == 1
    f.write_text("max 100000\n")
    assert cgroup_cpus(f) is None
    assert cgroup_cpus(tmp_path / "absent") is None


def test_count_is_omp_num_threads_else_affinity_capped_by_quota(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("100000 100000\n")
    assert thread_count({"OMP_NUM_THREADS": "3"}, f) == 3  # the user's word wins
    assert thread_count({}, f) == 1  # one CPU's quota, whatever the affinity
    f.write_text("max 100000\n")
    assert thread_count({"OMP_NUM_THREADS": "zero"}, f) == available_cpus(f) == len(os.sched_getaffinity(0))


def test_env_defaults_never_override_the_user():
    env = {"OMP_NUM_THREADS": "1"}
    configure_env(env)
    assert env == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive", "MKL_NUM_THREADS": "1"}
    env = {"OMP_WAIT_POLICY": "active"}
    configure_env(env)
    assert env["OMP_WAIT_POLICY"] == "active" and int(env["OMP_NUM_THREADS"]) >= 1


def test_a_process_pinned_to_one_cpu_runs_one_torch_thread():
    """Independent of rlsft's arithmetic: taskset pins the process, torch reports what it was given."""
    code = "from rlsft.threads import configure_threads; import torch; configure_threads(); print(torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"


def test_heartbeat_speaks_while_a_step_runs_and_stays_quiet_for_a_quick_one():
    lines = []
    with Heartbeat(lines.append, "step 1: sampling", every=0.05) as beat:
        time.sleep(0.5)
        beat.what = "step 1: updating"
        time.sleep(0.5)
    n = len(lines)
    time.sleep(0.1)
    assert len(lines) == n  # stopped with the step
    assert any(l.startswith("step 1: sampling") for l in lines) and any(l.startswith("step 1: updating") for l in lines)
    quiet = []
    with Heartbeat(quiet.append, "quick", every=5):
        pass
    assert quiet == []
