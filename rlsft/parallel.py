"""Data-parallel processes: ``accelerate launch`` / ``torchrun`` (WORLD_SIZE) or SLURM tasks started by ``srun``.

One process (``python launch.py``) needs no setup at all: ``processes()`` is then ``Processes()``, whose collectives
return their input, and nothing of torch.distributed or accelerate is touched. Several processes share a
process group (accelerate's ``PartialState``: gloo on CPU, NCCL on GPUs); each owns one GPU, its local rank's.
"""

from __future__ import annotations

import atexit
import functools
import os
import time
from dataclasses import dataclass
from typing import Any

from .errors import RlsftError


@dataclass(frozen=True)
class Processes:
    index: int = 0  # this process's rank
    count: int = 1
    device: str | None = None  # this process's device (cpu, cuda:<local rank>); None alone: the run's setting

    @property
    def main(self) -> bool:
        """The process that writes files, logs and tracks."""
        return self.index == 0

    def gather(self, obj: Any) -> list:
        """Every process's ``obj``, in rank order, on every process."""
        if self.count == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def first(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        return self.gather(obj)[0]

    def sum_(self, tensors) -> None:
        """Sum each tensor over the processes, in place."""
        if self.count == 1:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def world_size(environ=os.environ) -> int:
    """Processes this run was started as: WORLD_SIZE (torchrun, accelerate), else SLURM tasks of a submitit job."""
    if "WORLD_SIZE" in environ:
        return int(environ["WORLD_SIZE"])
    if environ.get("SUBMITIT_EXECUTOR") == "slurm":  # srun started tasks_per_node x nodes copies of the job
        return int(environ.get("SLURM_NTASKS", 1))
    return 1


@functools.cache
def processes() -> Processes:
    """This run's processes; the process group is joined on the first call (a no-op for one process)."""
    if world_size() == 1:
        return Processes()
    sharded = [name for name in ("FSDP", "DEEPSPEED") if _flag(f"ACCELERATE_USE_{name}")]
    if sharded:
        raise RlsftError(f"accelerate launch with {sharded[0]}: GRPO keeps the whole policy on every process (data "
                         "parallel only; sharding is not implemented, rlsft/grpo/README.md)")
    import torch
    from accelerate import PartialState

    if "WORLD_SIZE" not in os.environ:  # srun: torch.distributed's variables from SLURM's (each task sees every GPU)
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    cpu = not torch.cuda.is_available() or _flag("ACCELERATE_USE_CPU")
    state = PartialState(cpu=cpu)
    if state.num_processes != world_size():
        raise RlsftError(f"{world_size()} processes were started but accelerate joined {state.num_processes} "
                         f"({state.distributed_type})")
    atexit.register(_leave_process_group)
    return Processes(state.process_index, state.num_processes, "cpu" if cpu else f"cuda:{state.local_process_index}")


def _leave_process_group() -> None:
    """Tear the group down before the interpreter does: left to exit, gloo's threads were destroyed while still
    joinable and a process ended in SIGABRT ("terminate called without an active exception") about once in 15
    runs, after its work was done."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def shared_run_dir(argv: list[str]) -> list[str]:
    """The ``hydra.run.dir=`` override that gives every process the main process's run folder (Hydra's default,
    ``outputs/<date>/<time>``, would follow each process's own clock); [] for one process or a given folder."""
    if world_size() == 1:
        return []
    if any(a in ("-m", "--multirun") for a in argv):
        raise RlsftError("data-parallel processes run one job, not a sweep (-m): launch each job on its own, or "
                         "sweep with hydra/launcher=slurm_gpu_dp")
    if any(a.startswith("hydra.run.dir=") for a in argv):
        return []
    return [f"hydra.run.dir={processes().first(time.strftime('outputs/%Y-%m-%d/%H-%M-%S'))}"]
