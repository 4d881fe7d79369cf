"""Hydra multiruns through hydra-submitit-launcher on the local SLURM cluster.

Start the cluster first (root; installs Debian's slurm/munge on first use):

    scripts/slurm/start.sh
    pytest -m slurm tests/test_slurm_cluster.py

The ``slurm`` tests skip (with the reason) when ``sinfo`` is missing or no node of the
``debug`` partition is up. The sweeps use ``hydra/launcher=slurm_local`` from ``conf/``
with the tiny app in ``tests/slurm_app/`` (and ``launch.py`` with the tiny evaluate job).
``test_launcher_configs_compose`` needs no cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "tests" / "slurm_app" / "app.py"
CONF = REPO / "conf"
PARTITION = os.environ.get("RLSFT_SLURM_PARTITION", "debug")
SWEEP_TIMEOUT_S = 150  # a hung sweep fails the test instead of blocking CI


def _cluster_down_reason() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM client tools (sinfo/sbatch) not installed; run scripts/slurm/start.sh"
    try:
        out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo failed ({e}); run scripts/slurm/start.sh"
    if out.returncode != 0:
        return f"SLURM cluster not reachable (sinfo: {out.stderr.strip()}); run scripts/slurm/start.sh"
    states = out.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no usable node in partition {PARTITION!r} (states: {states or 'none'}); run scripts/slurm/start.sh"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """Skips (once per session, with the reason) unless the local cluster answers."""
    reason = _cluster_down_reason()
    if reason:
        pytest.skip(reason)


def run_sweep(sweep_dir: Path, *overrides: str, app: Path = APP, timeout: int = SWEEP_TIMEOUT_S,
              env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, str(app), "-m", "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep_dir}", *overrides]
    if app == APP:
        cmd.append(f"hydra.searchpath=[file://{CONF}]")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def job_result(sweep_dir: Path, num: int) -> dict:
    return json.loads((sweep_dir / str(num) / "result.json").read_text())


def slurm_logs(sweep_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((sweep_dir / ".submitit").glob("*/*_log.*")))


def test_launcher_configs_compose():
    """Both launcher configs compose (no cluster needed) and take their RLSFT_SLURM_* overrides."""
    base = [sys.executable, str(APP), f"hydra.searchpath=[file://{CONF}]"]
    flags = ["--cfg", "hydra", "-p", "hydra.launcher", "--resolve"]
    env = {**os.environ, "RLSFT_SLURM_ACCOUNT": "acct1", "RLSFT_SLURM_GPUS": "4", "RLSFT_SLURM_PARTITION": "a100"}
    out = subprocess.run([*base, "hydra/launcher=slurm_gpu", *flags], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for line in ["partition: a100", "account: acct1", "gpus_per_node: 4", "requeue: true",
                 "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"]:
        assert line in out.stdout, (line, out.stdout)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLSFT_SLURM_")}
    out = subprocess.run([*base, "hydra/launcher=slurm_local", *flags], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for line in ["partition: debug", "gpus_per_node: null", "cpus_per_task: 1", "mem_gb: 2"]:
        assert line in out.stdout, (line, out.stdout)


@pytest.mark.slurm
def test_sweep_runs_every_job_on_slurm(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    t0 = time.time()
    out = run_sweep(sweep, "x=1,2,3")
    assert out.returncode == 0, out.stdout + out.stderr
    results = [job_result(sweep, num) for num in range(3)]
    for num, (x, r) in enumerate(zip([1, 2, 3], results)):
        assert r["x"] == x and r["y"] == x * x and r["hydra_job_num"] == num
        assert r["slurm_job_id"] and r["restart_count"] == 0
    # one SLURM job array, one task per override combination
    assert len({r["slurm_array_job_id"] for r in results}) == 1
    assert sorted(r["slurm_array_task_id"] for r in results) == ["0", "1", "2"]
    assert "[rlsft] job" in slurm_logs(sweep)  # the `setup` lines of slurm_local.yaml ran in the sbatch script
    print(f"3-job sweep took {time.time() - t0:.1f}s")


@pytest.mark.slurm
def test_failing_job_surfaces_its_error_and_others_finish(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    out = run_sweep(sweep, "x=1,2,3", "fail_on=2")
    # The launcher waits for the whole array, then re-raises the failed job's exception: exit status 1.
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Error executing job with overrides: ['x=2', 'fail_on=2']" in out.stderr
    assert "SweepJobError: job with x=2 failed on purpose" in out.stderr
    # The other jobs of the sweep finished normally.
    assert job_result(sweep, 0)["y"] == 1 and job_result(sweep, 2)["y"] == 9
    assert not (sweep / "1" / "result.json").exists()
    # Only the exception object travels back to the launcher; the traceback is in the job's own logs
    # because the task function logs it before re-raising (see tests/slurm_app/app.py).
    job_log = (sweep / "1" / "app.log").read_text()
    assert "Traceback" in job_log and "failed on purpose" in job_log


@pytest.mark.slurm
def test_hard_crash_is_reported_via_sacct(slurm_cluster, tmp_path):
    """A job that dies without a Python exception (OOM kill, segfault) leaves no result pickle; submitit
    learns from `sacct` that it FAILED and the launcher raises UncompletedJobError with the job's stderr."""
    if subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True).returncode != 0:
        pytest.skip("sacct unavailable (cluster started with SLURM_ACCOUNTING=0): submitit would wait forever")
    sweep = tmp_path / "sweep"
    out = run_sweep(sweep, "x=1,2", "crash_on=1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "UncompletedJobError" in out.stderr and "has not produced any output (state: FAILED)" in out.stderr
    assert "job with x=1 crashes hard on purpose" in out.stderr


@pytest.mark.slurm
@pytest.mark.parametrize("how", ["scontrol_requeue", "usr2_signal"])
def test_requeued_job_runs_again_and_sees_restart_count(slurm_cluster, tmp_path, how):
    """A requeued task reruns from the start under the same job id, in the same Hydra output dir, with
    SLURM_RESTART_COUNT=1; the launcher just keeps waiting and the sweep succeeds.

    scontrol_requeue: what an admin / preemption with PreemptMode=REQUEUE does (SIGTERM, SIGKILL, requeue).
    usr2_signal: what submitit does before the time limit (sbatch --signal=USR2@signal_delay_s): its handler
    calls the launcher's ``checkpoint()`` and runs ``scontrol requeue`` itself. With timeout_min=20 the signal
    counts as a preemption, so max_num_timeout=0 does not stop it.
    """
    sweep = tmp_path / "sweep"
    proc = run_sweep(sweep, "x=5", "sleep_s=20", "hydra.launcher.timeout_min=20", wait=False)
    try:
        attempts = sweep / "0" / "attempts.txt"
        deadline = time.time() + 60
        while not attempts.exists() and time.time() < deadline:
            time.sleep(0.5)
        assert attempts.exists(), "job never started"
        job_id = attempts.read_text().split()[1]
        if how == "scontrol_requeue":
            subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
        else:
            subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        stdout, _ = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout
    lines = [line.split() for line in attempts.read_text().splitlines()]
    assert [line[0] for line in lines] == ["0", "1"]  # SLURM_RESTART_COUNT of each attempt
    assert lines[0][1] == lines[1][1] == job_id  # same job id
    r = job_result(sweep, 0)
    assert r["restart_count"] == 1 and r["y"] == 25
    if how == "usr2_signal":
        assert "this job is preempted" in slurm_logs(sweep) and "Requeued job" in slurm_logs(sweep)


@pytest.mark.slurm
def test_launch_py_tiny_evaluate_sweep(slurm_cluster, tmp_path):
    """The real entrypoint: a 2-job evaluate sweep of the tiny model pair through the local cluster."""
    if not (REPO / "launch.py").exists() or not (CONF / "model_pair" / "tiny.yaml").exists():
        pytest.skip("launch.py / conf/model_pair/tiny.yaml not available")
    sweep = tmp_path / "sweep"
    out = run_sweep(sweep, "experiment=evaluate", "model_pair=tiny", "dataset=arithmetic", "dataset.n=8",
                    "dataset.seed=0,1", "logger=disabled", app=REPO / "launch.py",
                    env={"RLSFT_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stdout + out.stderr
    for num in (0, 1):
        assert json.loads((sweep / str(num) / "result.json").read_text())
    assert slurm_logs(sweep).count("[rlsft] job") == 2  # both ran as tasks of the SLURM array


@pytest.mark.slurm
def test_launch_py_job_requeued_mid_generation_resumes_from_the_cache(slurm_cluster, tmp_path):
    """Preempt a real launch.py job while it generates: the requeued job reuses the answers already cached."""
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    proc = run_sweep(sweep, "experiment=evaluate", "model_pair=tiny", "dataset.arithmetic.count=400", "dataset.arithmetic.digits=2",
                     "generation.batch_size=2", "model_pair.max_new_tokens=48", "logger=disabled",
                     "dataset.seed=0", app=REPO / "launch.py", env={"RLSFT_CACHE_DIR": str(cache)}, wait=False)
    try:
        deadline, partial = time.time() + 120, []
        while time.time() < deadline and not partial:
            partial = [p for p in cache.glob("generations/*/records.partial.jsonl")
                       if len(p.read_text().splitlines()) >= 4]
            time.sleep(0.5)
        assert partial, "the job never started generating"
        job_id = next(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir())
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
        stdout, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout
    assert json.loads((sweep / "0" / "result.json").read_text())["sft"]["n"] == 400
    log = (sweep / "0" / "launch.log").read_text()
    cached = [int(n) for n in __import__("re").findall(r"generate \[sft\]: (\d+) answers cached", log)]
    assert cached[0] == 0 and cached[1] >= 4, log  # first attempt from scratch, the requeued one resumed
    assert "restart 1" in slurm_logs(sweep)


@pytest.mark.slurm
def test_launch_py_sweep_with_a_failing_task_lists_both_in_the_report(slurm_cluster, tmp_path):
    """A 2-task SLURM sweep whose second task fails validation (before it writes config_resolved.yaml): the sweep
    ends with one error line for it, exit 2, and the report lists both tasks with their status and error line."""
    sweep = tmp_path / "sweep"
    out = run_sweep(sweep, "experiment=evaluate", "model_pair=tiny", "dataset.n=8", "logger=disabled",
                    "truncation.alpha=0.1,2.0", app=REPO / "launch.py", env={"RLSFT_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "error: task 1 (experiment=evaluate model_pair=tiny dataset.n=8 logger=disabled truncation.alpha=2.0): " \
           "failed: truncation.alpha must be in (0, 1], got 2.0" in out.stderr, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"report: {sweep / 'report' / 'index.html'}"
    assert not (sweep / "1" / "config_resolved.yaml").exists()
    rows = [line.split(",") for line in (sweep / "report" / "tasks.csv").read_text().splitlines()[1:]]
    assert [r[:2] for r in rows] == [["0", "finished"], ["1", "failed"]]
    assert slurm_logs(sweep).count("[rlsft] job") == 2  # both ran as tasks of the SLURM array
