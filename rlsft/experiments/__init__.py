"""Experiments: short scripts that chain cached stages. Each module declares what rlsft.run and
rlsft.config.validate need of it, so neither names an experiment:

- ``run(cfg, ctx) -> dict``: the experiment; its result becomes the run's ``result.json``.
- ``check(cfg) -> None``: the config checks only this experiment needs (RlsftError, one line), called by
  ``validate`` after the section checks of truncation, generation and eap, before the probe, ablation, lenses and
  grpo sections.
- ``tags(cfg) -> list[str]``: its W&B tags beside the pair's, the dataset's and ``logger.tags``.
- ``READS_INTERNALS: bool``: it reads a model's modules (architectures.py), so a stage of an unsupported
  architecture is refused before anything is loaded or generated.
- ``DATA_PARALLEL: bool``: it runs as several data-parallel processes (``accelerate launch``, rlsft.parallel); any
  other is refused when started so (each process would run it all and write the same files).

Importing a module here must stay cheap (``validate`` does it): models load inside ``run`` only.
"""

import importlib
from types import ModuleType

from ..errors import RlsftError

EXPERIMENTS = ["evaluate", "eap", "report", "probe", "ablation", "variability", "grpo", "lenses", "lr_sweep"]


def get_experiment(name: str) -> ModuleType:
    """The module of experiment ``name`` (its ``run``, ``check``, ``tags``, ``READS_INTERNALS``,
    ``DATA_PARALLEL``)."""
    if name not in EXPERIMENTS:
        raise RlsftError(f"unknown experiment {name!r}; expected one of {EXPERIMENTS}")
    return importlib.import_module(f"{__name__}.{name}")
