"""Training recipes shipped with the package (package data), so a derived model naming a preset loads from any
install, not only from a checkout: ``grpo/<name>.yaml`` (GRPO recipes, also Hydra's ``grpo=<name>`` config group,
found through ``hydra.searchpath: [pkg://rlsft.presets]`` in conf/config.yaml) and ``arms/<name>.yaml`` (the offline
arms of method.md 8)."""

from pathlib import Path

PRESETS = Path(__file__).resolve().parent
