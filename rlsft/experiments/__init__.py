"""Experiments: short scripts that chain cached stages. Each module has ``run(cfg, ctx) -> dict``."""

import importlib

from ..errors import RlsftError

EXPERIMENTS = ["evaluate", "eap", "report", "probe", "ablation", "variability", "grpo", "lenses"]


def get_experiment(name: str):
    if name not in EXPERIMENTS:
        raise RlsftError(f"unknown experiment {name!r}; expected one of {EXPERIMENTS}")
    return importlib.import_module(f"{__name__}.{name}").run
