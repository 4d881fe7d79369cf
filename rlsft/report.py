"""Gather a finished multirun folder into paper-style tables, figures and one static HTML page.

Every job folder of a sweep holds its resolved config, its ``result.json`` (only when it finished) and CSV tables.
The report stacks each kind of table across jobs (with the job's pair, dataset, experiment and alpha in front),
builds the paper's Table 1 from the EAP summaries, draws each EAP metric against alpha per pair and dataset, and
lists every task of the sweep with its status and error line. ``rlsft-report MULTIRUN_DIR`` and ``python launch.py
experiment=report report.dir=MULTIRUN_DIR`` both write ``MULTIRUN_DIR/report/`` and print where (a multirun writes it
at its end too).
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import itertools
import math
import sys
from pathlib import Path

import yaml

from .cache import atomic_path, atomic_write_bytes
from .eap.metrics import METRICS
from .eap.results import RESULTS
from .errors import RlsftError

EAP_METRICS = list(METRICS)  # the one registry: Table 1 and the figures show every registered metric


def job_dirs(root: Path) -> list[Path]:
    """Folders of the jobs under ``root`` (any depth: sweeps nest as <sweep>/<num>/): those holding Hydra's record of
    the job (``.hydra/overrides.yaml``, written before the job starts) or a resolved config, never W&B's or a
    report's folders."""
    found = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    found |= {p.parent for p in root.rglob("config_resolved.yaml")}
    return sorted(p for p in found if not _skipped(p, root))


def _skipped(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts if path != root else ()
    return any(part == "report" or part == "wandb" or part.startswith(".") for part in parts)


def expected_tasks(sweep: Path) -> list[list[str]] | None:
    """The override list of every task of a sweep, in job-number order, from Hydra's ``multirun.yaml``."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        record = yaml.safe_load((sweep / "multirun.yaml").read_text())
        sweeper = record["hydra"].get("sweeper") or {}
        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        return sweep_jobs(OverridesParser.create().parse_overrides(params + list(record["hydra"]["overrides"]["task"])))
    except Exception:  # not a basic-sweeper record (another sweeper, a damaged file): fall back to the folders
        return None


def sweep_jobs(overrides: list) -> list[list[str]]:
    """The jobs of parsed overrides (hydra.core.override_parser.types.Override) in Hydra's basic sweeper's order.

    One entry per key (a later override of a key takes the earlier one's place), every combination, the last key
    varying fastest. Hydra keeps this expansion in ``hydra._internal`` (``BasicSweeper.split_arguments``), which is
    not its API and may change in any release, so it is written out here from the public ``Override``.
    """
    choices: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:  # an interval: only an optimizing sweeper can draw from it
            raise ValueError(f"{key}: a {override.value_type.name} has no list of jobs")
    return [list(job) for job in itertools.product(*choices.values())]


def sweep_tasks(root: str | Path) -> list[dict]:
    """Every task under ``root`` with its status (finished / failed / unfinished / not started) and error line.

    Tasks come from each sweep's ``multirun.yaml`` (so a task that left no folder, or failed before writing its
    resolved config, is still listed) and from any other job folder found.
    """
    root = Path(root)
    folders = job_dirs(root)
    claimed: set[Path] = set()
    tasks = []
    for record in sorted(root.rglob("multirun.yaml")):
        sweep = record.parent
        expected = expected_tasks(sweep)
        if expected is None or _skipped(sweep, root):
            continue
        for num, overrides in enumerate(expected):
            folder = sweep / str(num)
            if folder not in folders or folder in claimed:
                folder = next((f for f in folders if f not in claimed and _overrides(f) == overrides), None)
            if folder is not None:
                claimed.add(folder)
            name = _rel(sweep / str(num), root) if sweep != root else str(num)
            tasks.append(_task(name, overrides, folder, sweep, num))
    for folder in folders:
        if folder not in claimed:
            tasks.append(_task(_rel(folder, root) if folder != root else folder.name, _overrides(folder), folder,
                               None, None))
    return tasks


def _overrides(folder: Path) -> list[str]:
    path = folder / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []


def _task(name: str, overrides: list[str], folder: Path | None, sweep: Path | None, num: int | None) -> dict:
    labels = _labels(folder, overrides)
    if folder is None:
        status, error = "not started", _submitit_error(sweep, num)
    elif (folder / "result.json").exists():
        status, error = "finished", ""
    else:
        error = _error_line(folder) or _submitit_error(sweep, num)
        status = "failed" if error else "unfinished"
    log = next(iter(sorted(folder.glob("*.log"))), None) if folder is not None else None
    return {"job": name, "overrides": overrides, "folder": str(folder) if folder else "", "status": status,
            "error": error, "log": str(log) if log else "", **labels}


def _labels(folder: Path | None, overrides: list[str]) -> dict:
    """experiment, pair, dataset, alpha of a job: from its resolved config, else Hydra's composed one, else the
    command line."""
    cfg = {}
    for name in ("config_resolved.yaml", ".hydra/config.yaml"):
        if folder is not None and (folder / name).exists():
            cfg = yaml.safe_load((folder / name).read_text()) or {}
            break
    given = dict(o.split("=", 1) for o in overrides if "=" in o)
    pick = lambda section, key, override: str((cfg.get(section) or {}).get(key, given.get(override, "")))
    return {"experiment": pick("run", "experiment", "experiment"), "model_pair": pick("model_pair", "name", "model_pair"),
            "dataset": pick("dataset", "name", "dataset"), "alpha_cfg": pick("truncation", "alpha", "truncation.alpha")}


def _error_line(folder: Path) -> str:
    """The job's recorded failure (``error.txt``, written by rlsft.run), else the last error line of its log."""
    if (folder / "error.txt").exists():
        return (folder / "error.txt").read_text().strip()
    for log in sorted(folder.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        for line in reversed(lines):
            if "error: " in line or "Error:" in line or "Exception:" in line:
                return line.split("error: ", 1)[-1].strip() if "error: " in line else line.strip()
    return ""


def _submitit_error(sweep: Path | None, num: int | None) -> str:
    """A SLURM task that died without a Python error: the last error line of its submitit stderr."""
    if sweep is None or num is None:
        return ""
    for err in sorted((sweep / ".submitit").glob(f"*_{num}/*_log.err")):
        lines = [l for l in err.read_text(errors="replace").splitlines() if "error" in l.lower()]
        if lines:
            return lines[-1].strip()
    return ""


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def gather(root: Path) -> tuple[dict, list[dict]]:
    """{table name: (columns, rows)} stacked over finished tasks, and every task (rlsft.report.sweep_tasks)."""
    tables: dict[str, tuple[list[str], list[list]]] = {}
    tasks = sweep_tasks(root)
    for task in tasks:
        if task["status"] != "finished":
            continue
        job = Path(task["folder"])
        labels = {**task, "job": job.name}
        for path in sorted(job.glob("*.csv")):
            columns, rows = read_csv(path)
            prefix = ["job", "experiment", "model_pair"] + (["dataset"] if "dataset" not in columns else [])
            full = prefix + columns
            if path.stem in tables and tables[path.stem][0] != full:
                raise RlsftError(f"{path}: columns differ from other jobs' {path.name}")
            tables.setdefault(path.stem, (full, []))[1].extend([[labels[c] for c in prefix] + r for r in rows])
    return tables, tasks


def table1(tables: dict) -> tuple[list[str], list[list]]:
    """The paper's Table 1: per pair, dataset and alpha, each metric for SFT and RL (with 95% bootstrap CIs)."""
    if "eap_summary" not in tables:
        return [], []
    columns, rows = tables["eap_summary"]
    idx = {c: i for i, c in enumerate(columns)}
    # every metric, then each other typed result with an interval per stage (eap.faithfulness: frac80, method.md 2.7)
    shown = EAP_METRICS + [m for m, kind in RESULTS.items() if not kind.per_sample and f"{m}_lo" in idx]
    cells: dict[tuple, dict] = {}
    for r in rows:
        key = (r[idx["model_pair"]], r[idx["dataset"]], float(r[idx["alpha"]]))
        cell = cells.setdefault(key, {})
        for m in shown:
            if r[idx[m]] not in ("", None):
                lo, hi = _number(r[idx[m + "_lo"]]), _number(r[idx[m + "_hi"]])
                interval = "(point)" if math.isnan(lo) else f"[{lo:.3g}, {hi:.3g}]"  # a point value has no interval
                cell[(m, r[idx["stage"]])] = f"{float(r[idx[m]]):.4g} {interval}"
    stages = sorted({s for c in cells.values() for (_, s) in c}, key=lambda s: (s != "sft", s))
    tests = _tests(tables)  # method.md 2.8: each difference's role and (Holm-adjusted) p, as the console says it
    tested = [m for m in shown if any(k[3] == m for k in tests)]
    out_cols = (["model_pair", "dataset", "alpha"] + [f"{m} ({s})" for m in shown for s in stages]
                + [f"{m} (RL - SFT test)" for m in tested])
    out = [[p, d, a] + [cells[(p, d, a)].get((m, s), "") for m in shown for s in stages]
           + [tests.get((p, d, a, m), "") for m in tested] for (p, d, a) in sorted(cells)]
    return out_cols, out


def _tests(tables: dict) -> dict[tuple, str]:
    """{(pair, dataset, alpha, metric): "diff [lo, hi] primary p=.. | secondary Holm p=.."} from eap_tests (plain
    runs only: compare runs have a stage per row and their own tables)."""
    if "eap_tests" not in tables:
        return {}
    columns, rows = tables["eap_tests"]
    idx = {c: i for i, c in enumerate(columns)}
    out = {}
    for r in rows:
        if r[idx["stage"]] not in ("", None) or r[idx["role"]] == "point":
            continue
        lo, hi = _number(r[idx["lo"]]), _number(r[idx["hi"]])
        p = _number(r[idx["p"]] if r[idx["role"]] == "primary" else r[idx["p_holm"]])
        label = "PRIMARY p" if r[idx["role"]] == "primary" else "secondary, Holm p"
        out[(r[idx["model_pair"]], r[idx["dataset"]], float(r[idx["alpha"]]), r[idx["metric"]])] = (
            f"{float(r[idx['diff']]):.3g} [{lo:.3g}, {hi:.3g}] {label} = {p:.2g}")
    return out


def _number(cell) -> float:
    """A numeric table cell; nan for an empty one (a point value's missing interval)."""
    return math.nan if cell in ("", None) else float(cell)


def _csv(columns, rows) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows([columns, *rows])
    return buf.getvalue()


def _md(columns, rows) -> str:
    from .experiments.common import markdown_table

    return markdown_table(columns, [[_shown(v) for v in r] for r in rows])


def _shown(value) -> str:
    """A cell as read by a person: a number to 4 significant digits (the CSV keeps every digit)."""
    text = str(value)
    if any(c in text for c in ".eE") and not text.isalpha():
        try:
            return f"{float(text):.4g}"
        except ValueError:
            pass
    return text


def _html_table(columns, rows) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_shown(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def metrics_vs_alpha(tables: dict, out: Path) -> list[Path]:
    """One figure per (pair, dataset): each EAP metric against alpha, one colour per stage, with CI bands."""
    if "eap_summary" not in tables:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .experiments.common import stage_color, stage_order

    columns, rows = tables["eap_summary"]
    idx = {c: i for i, c in enumerate(columns)}
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r[idx["model_pair"]], r[idx["dataset"]]), []).append(r)
    paths = []
    for (pair, dataset), rs in sorted(groups.items()):
        # A grid, 4 panels a row: one row of every metric was a 2541x418 strip, unreadable at page width.
        ncols = min(4, len(EAP_METRICS))
        nrows = -(-len(EAP_METRICS) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.1 * nrows + 0.4), layout="constrained",
                                 squeeze=False)
        for ax in axes.flat[len(EAP_METRICS):]:
            ax.set_visible(False)
        for ax, m in zip(axes.flat, EAP_METRICS):
            point = all(math.isnan(_number(r[idx[m + "_lo"]])) for r in rs)  # no interval anywhere: say so
            for stage in stage_order({r[idx["stage"]] for r in rs}):
                pts = sorted((float(r[idx["alpha"]]), float(r[idx[m]]), _number(r[idx[m + "_lo"]]),
                              _number(r[idx[m + "_hi"]])) for r in rs if r[idx["stage"]] == stage)
                a, v, lo, hi = zip(*pts)
                ax.plot(a, v, marker="o", color=stage_color(stage), label=stage)
                ax.fill_between(a, lo, hi, color=stage_color(stage), alpha=0.2)
            alphas = sorted({float(r[idx["alpha"]]) for r in rs})
            ax.set(xscale="log", xlabel="alpha")
            ax.set_title(m.replace("_", " ") + (" (point value, no interval)" if point else ""), fontsize=9)
            ax.set_xticks(alphas, [f"{a:g}" for a in alphas])  # only the swept alphas: no overlapping 10^k labels
            ax.minorticks_off()
            ax.legend(fontsize=8)
        fig.suptitle(f"{pair} on {dataset}: EAP metrics against alpha (95% bootstrap bands)")
        path = out / f"eap_vs_alpha_{pair}_{dataset}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


TASK_COLUMNS = ["job", "status", "experiment", "model_pair", "dataset", "overrides", "error", "log"]


def job_figures(tasks: list[dict], root: Path) -> list[Path]:
    """The figures the finished jobs wrote, not W&B's copies of them (``wandb/.../media/images``)."""
    figures = []
    for task in tasks:
        if task["status"] == "finished":
            folder = Path(task["folder"])
            figures += sorted(p for p in folder.rglob("*.png") if not _skipped(p.parent, folder))
    return figures


def build_report(root: str | Path, out: str | Path | None = None, tracker=None) -> dict:
    """Tables, figures and ``index.html`` in ``out`` (default ``<root>/report``, for ``rlsft-report`` and
    ``experiment=report`` alike)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise RlsftError(f"report: folder not found: {root}")
    if not job_dirs(root):
        raise RlsftError(f"report: no job folders (with .hydra/ or config_resolved.yaml) under {root}")
    out = Path(out) if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables, tasks = gather(root)
    t1 = table1(tables)
    if t1[0]:
        tables = {"table1_eap": t1, **tables}
    sections = []
    for name, (columns, rows) in tables.items():
        atomic_write_bytes(out / f"{name}.csv", _csv(columns, rows).encode())
        atomic_write_bytes(out / f"{name}.md", _md(columns, rows).encode())
        sections.append(f"<h2>{html.escape(name)}</h2>{_html_table(columns, rows)}")
        if tracker is not None:
            tracker.log_table(name, columns, rows)
    task_rows = [[t["job"], t["status"], t["experiment"], t["model_pair"], t["dataset"], " ".join(t["overrides"]),
                  t["error"], t["log"]] for t in tasks]
    atomic_write_bytes(out / "tasks.csv", _csv(TASK_COLUMNS, task_rows).encode())
    figures = metrics_vs_alpha(tables, out) + job_figures(tasks, root)
    imgs = "".join(f'<figure><img src="{html.escape(_rel(p, out))}" style="max-width:100%" width="900">'
                   f"<figcaption>{html.escape(_rel(p, out))}</figcaption></figure>" for p in figures)
    done = sum(t["status"] == "finished" for t in tasks)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>rlsft report: {html.escape(root.name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
            "table{border-collapse:collapse;font-size:12px;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#f2f2f2}"
            "tr.failed td,tr.unfinished td,tr.not-started td{background:#fde8e8}"
            "div.wide{overflow-x:auto}figure{margin:1em 0}figcaption{font-size:12px;color:#555}</style></head><body>"
            f"<h1>rlsft report: {html.escape(str(root))}</h1>"
            f"<h2>tasks: {done} of {len(tasks)} finished</h2>{_task_table(task_rows)}"
            f"{''.join(sections)}<h2>figures</h2>{imgs or '<p>no figures</p>'}</body></html>")
    atomic_write_bytes(out / "index.html", page.encode())
    return {"out": str(out), "index": str(out / "index.html"), "tables": sorted(tables), "tasks": len(tasks),
            "unfinished": len(tasks) - done, "figures": len(figures)}


def _task_table(rows) -> str:
    head = "".join(f"<th>{c}</th>" for c in TASK_COLUMNS)
    body = "".join(f"<tr class='{r[1].replace(' ', '-')}'>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _rel(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlsft-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir")
    parser.add_argument("--out", default=None, help="output folder (default: <multirun_dir>/report)")
    args = parser.parse_args(argv)
    try:
        result = build_report(args.multirun_dir, args.out)
    except RlsftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {result['index']} ({result['tasks']} tasks, {result['unfinished']} not finished, "
          f"{len(result['tables'])} tables, {result['figures']} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
