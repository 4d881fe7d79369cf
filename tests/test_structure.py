"""The layout rules of docs/style.md that a reader would otherwise check by eye, read from the source's syntax tree.

Every module under rlsft/: no import of ``hydra._internal`` (not Hydra's API; it may change in any release), no
private name (``_x``) taken from another rlsft module, no comparison of the experiment's name outside
rlsft/experiments/ (an experiment declares what the dispatcher needs: ``run``, ``check``, ``tags``,
``READS_INTERNALS``). Each rule is first shown to catch a small example, so a pass means something.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rlsft
from rlsft.experiments import EXPERIMENTS, get_experiment

PACKAGE = Path(rlsft.__file__).resolve().parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def module_of(path: Path) -> str:
    """rlsft/eap/scores.py -> rlsft.eap.scores; rlsft/eap/__init__.py -> rlsft.eap."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` reads (``from ..run import x`` in rlsft.experiments.grpo ->
    rlsft.run)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def hydra_internal(tree: ast.AST) -> list[int]:
    """Lines importing hydra._internal in any spelling."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            lines += [node.lineno for a in node.names if (a.name + ".").startswith("hydra._internal.")]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            mod = node.module or ""
            if (mod + ".").startswith("hydra._internal.") or (mod == "hydra" and
                                                              any(a.name == "_internal" for a in node.names)):
                lines.append(node.lineno)
    return lines


def private_imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, name) of each private name this module takes from another rlsft module, by ``from x import _y``
    (at any depth, in functions too) or as ``x._y`` on a module it imported."""
    found, modules = [], set()  # modules: local names bound to an rlsft module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = absolute(node, module, is_package)
            if source != "rlsft" and not source.startswith("rlsft."):
                continue
            for a in node.names:
                if is_private(a.name) and source != module:
                    found.append((node.lineno, f"{source}.{a.name}"))
                if is_rlsft_module(f"{source}.{a.name}"):
                    modules.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            modules.update(a.asname for a in node.names if a.asname and a.name.startswith("rlsft."))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and is_private(node.attr)):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return found


def is_rlsft_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def names_experiment(node: ast.AST) -> bool:
    """``experiment``, ``cfg.run.experiment``, ``x["experiment"]`` or ``x.get("experiment")``."""
    if isinstance(node, ast.Name):
        return node.id == "experiment"
    if isinstance(node, ast.Attribute):
        return node.attr == "experiment"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "experiment"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "experiment"
    return False


def experiment_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing an experiment's name with ==, !=, in or not in."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                                                 for op in node.ops):
            if any(names_experiment(side) for side in [node.left, *node.comparators]):
                lines.append(node.lineno)
    return lines


def parsed(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{line}: {path.read_text().splitlines()[line - 1].strip()}"


# ---------------------------------------------------------------------------------------------- the rules catch
@pytest.mark.parametrize("source,caught", [
    ("from hydra._internal.core_plugins.basic_sweeper import BasicSweeper", True),
    ("def f():\n    import hydra._internal.utils as u", True),
    ("from hydra import _internal", True),
    ("from hydra.core.override_parser.overrides_parser import OverridesParser", False),
    ("from hydra.experimental.callback import Callback", False),
])
def test_the_hydra_rule_catches_each_spelling(source, caught):
    assert bool(hydra_internal(ast.parse(source))) == caught


@pytest.mark.parametrize("source,module,caught", [
    ("def f():\n    from ..run import _sweep_info", "rlsft.experiments.grpo", ["rlsft.run._sweep_info"]),
    ("from .cache import _helper, stage_key", "rlsft.run", ["rlsft.cache._helper"]),
    ("from rlsft.grading import _norm_text", "rlsft.report", ["rlsft.grading._norm_text"]),
    ("from .. import run\nrun._sweep_info()", "rlsft.experiments.grpo", ["run._sweep_info"]),
    ("import rlsft.run as r\nr._main(None)", "rlsft.report", ["r._main"]),
    ("from ..run import sweep_info", "rlsft.experiments.grpo", []),
    ("from .common import __all__", "rlsft.experiments.eap", []),
    ("from os.path import _joinrealpath", "rlsft.report", []),  # another package's business
    ("from .scores import _x", "rlsft.eap.scores", []),  # not another module
])
def test_the_private_rule_catches_imports_and_attributes(source, module, caught):
    assert [name for _, name in private_imports(ast.parse(source), module, False)] == caught


@pytest.mark.parametrize("source,caught", [
    ("if cfg.run.experiment == 'eap':\n    pass", True),
    ("ok = cfg.run.experiment != 'eap' or x", True),
    ("if cfg.run.experiment in ('eap', 'probe'):\n    pass", True),
    ("if experiment not in READS:\n    pass", True),
    ("if 'report' == name_of['experiment']:\n    pass", True),
    ("if cfg.run.get('experiment') == 'report':\n    pass", True),
    ("module = get_experiment(cfg.run.experiment)", False),
    ("if part == 'report':\n    pass", False),
])
def test_the_experiment_rule_catches_comparisons(source, caught):
    assert bool(experiment_comparisons(ast.parse(source))) == caught


def test_module_names_resolve_relative_imports():
    node = ast.parse("from ..run import x").body[0]
    assert absolute(node, "rlsft.experiments.grpo", False) == "rlsft.run"
    assert absolute(ast.parse("from .metrics import M").body[0], "rlsft.eap", True) == "rlsft.eap.metrics"
    assert module_of(PACKAGE / "eap" / "__init__.py") == "rlsft.eap" and is_rlsft_module("rlsft.run")


# ---------------------------------------------------------------------------------------------- the package obeys
def test_sources_are_found():
    assert PACKAGE / "run.py" in SOURCES and PACKAGE / "experiments" / "eap.py" in SOURCES


def test_no_module_imports_hydra_internal():
    bad = [where(p, line) for p in SOURCES for line in hydra_internal(parsed(p))]
    assert not bad, "hydra._internal is not Hydra's API:\n" + "\n".join(bad)


def test_no_module_takes_a_private_name_from_another():
    bad = [f"{where(p, line)}  ({name})" for p in SOURCES
           for line, name in private_imports(parsed(p), module_of(p), p.name == "__init__.py")]
    assert not bad, "private names used outside their module:\n" + "\n".join(bad)


def test_only_experiments_compare_the_experiment_name():
    outside = [p for p in SOURCES if PACKAGE / "experiments" not in p.parents]
    bad = [where(p, line) for p in outside for line in experiment_comparisons(parsed(p))]
    assert not bad, "an experiment declares this in its module (rlsft/experiments/):\n" + "\n".join(bad)


# ---------------------------------------------------------------------------------------------- experiments declare
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_declares_what_the_dispatcher_calls(name):
    module = get_experiment(name)
    for attr in ("run", "check", "tags"):
        assert callable(getattr(module, attr, None)), f"rlsft.experiments.{name} has no {attr}()"
    assert isinstance(getattr(module, "READS_INTERNALS", None), bool), \
        f"rlsft.experiments.{name} must set READS_INTERNALS = True or False"
    assert isinstance(getattr(module, "DATA_PARALLEL", None), bool), \
        f"rlsft.experiments.{name} must set DATA_PARALLEL = True or False"
