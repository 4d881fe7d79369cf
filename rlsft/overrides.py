"""Command-line overrides checked before Hydra runs: a misspelt key, an unknown option or a wrong type is one
``error:`` line naming the key and the nearest valid keys or options, exit status 2 (README's promise).

Hydra reports these itself in 7-22 lines ending in a hint about ``HYDRA_FULL_ERROR``, and exits 1. Here the same
composition runs once first (``hydra.compose``, a fraction of a second); with ``HYDRA_FULL_ERROR=1`` it is skipped
and Hydra's own message shows. A sweep is checked value by value (``combinations``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                    "--package", "-p", "--experimental-rerun"}


def override_args(argv: list[str]) -> list[str] | None:
    """The overrides among the command-line arguments; None when another config than conf/config is asked for."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in FLAGS_WITH_VALUE:
            if arg in ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"):
                return None
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def combinations(overrides: list[str], limit: int = 8) -> list[list[str]]:
    """The overrides with each sweep (``a=1,2``, ``range(...)``) at its first value, then each further value of each
    sweep with the others at their first (at most ``limit`` lists: a typo in any listed option is caught, and a
    long range is not composed value by value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [None] for o in parsed]

    def line(i: int, value) -> str:
        o = parsed[i]
        return o.input_line if value is None else f"{o.get_key_element()}={value}"

    first = [line(i, v[0]) for i, v in enumerate(values)]
    out = [first]
    for i, vs in enumerate(values):
        for v in vs[1:]:
            out.append(first[:i] + [line(i, v)] + first[i + 1 :])
    return out[:limit]


def nearest(word: str, options, what: str) -> str:
    """``; nearest <what>: a, b`` (difflib), or every option when none is close and they are few."""
    options = sorted(set(map(str, options)))
    close = difflib.get_close_matches(word, options, n=3, cutoff=0.5)
    if close:
        return f"; nearest {what}: {', '.join(close)}"
    return f"; valid {what}: {', '.join(options)}" if len(options) <= 20 else ""


def _keys_at(conf_dir: Path, parent: str) -> list[str]:
    """Keys of the default config at ``parent`` ("" for the root, with the config groups' names)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose("config")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    keys = list(node.keys()) if OmegaConf.is_dict(node) else []
    if not parent:
        keys += [p.name for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra"]
    return keys


def describe(exc: BaseException, conf_dir: Path) -> str:
    """One line for a composition error."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    from .grpo.config import MOVED_KEYS, moved_key_message

    cause = exc.__cause__
    if isinstance(exc, MissingConfigException) and getattr(exc, "options", None) is not None:
        group, _, option = (exc.missing_cfg_file or "").rpartition("/")
        return f"unknown option {option!r} for {group}{nearest(option, exc.options, f'{group} options')}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override {exc.override!r}: {exc.message.splitlines()[0]}"
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        parent, _, key = cause.full_key.rpartition(".")
        if parent == "grpo" and key in MOVED_KEYS:
            return moved_key_message(key)
        return f"unknown key {cause.full_key!r}{nearest(key, _keys_at(conf_dir, parent), 'keys')}"
    if isinstance(cause, ValidationError) and cause.full_key:
        return f"wrong type for {cause.full_key}: {str(cause).splitlines()[0]}"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return first + (" (a sweep needs -m)" if first.startswith("Ambiguous value") else "")


def check(argv: list[str], conf_dir: Path) -> str | None:
    """The one-line problem with these command-line overrides, or None (also when Hydra should speak itself)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = override_args(argv)
    if overrides is None:
        return None
    try:
        runs = combinations(overrides) if any(a in argv for a in ("-m", "--multirun")) else [overrides]
        for run in runs:
            with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
                compose("config", overrides=run, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        return describe(exc, conf_dir)
    return None
