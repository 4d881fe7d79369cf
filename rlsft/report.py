"""Gather a finished multirun folder into paper-style tables, figures and one static HTML page.

Every job folder of a sweep holds its resolved config, its ``result.json`` (only when it finished) and CSV tables.
The report stacks each kind of table across jobs (with the job's pair, dataset, experiment and alpha in front),
builds the paper's Table 1 from the EAP summaries, draws each EAP metric against alpha per pair and dataset, and
lists the jobs that did not finish. ``rlsft-report MULTIRUN_DIR`` or ``python launch.py experiment=report
report.dir=MULTIRUN_DIR``.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import sys
from pathlib import Path

import yaml

from .cache import atomic_path, atomic_write_bytes
from .errors import RlsftError

EAP_METRICS = ["activation_intensity", "information_complexity", "distribution_kurtosis"]


def job_dirs(root: Path) -> list[Path]:
    """Folders holding a job's resolved config (any depth: sweeps nest as <sweep>/<num>/)."""
    return sorted(p.parent for p in root.rglob("config_resolved.yaml") if "report" not in p.parts)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def job_labels(job: Path) -> dict:
    cfg = yaml.safe_load((job / "config_resolved.yaml").read_text())
    return {"job": str(job.name), "experiment": cfg["run"]["experiment"], "model_pair": cfg["model_pair"]["name"],
            "dataset": cfg["dataset"]["name"], "alpha_cfg": cfg["truncation"]["alpha"]}


def gather(root: Path) -> tuple[dict, list[dict]]:
    """{table name: (columns, rows)} stacked over finished jobs, and the list of unfinished jobs."""
    tables: dict[str, tuple[list[str], list[list]]] = {}
    unfinished = []
    for job in job_dirs(root):
        labels = job_labels(job)
        if not (job / "result.json").exists():
            log = next(iter(sorted(job.glob("*.log"))), None)
            unfinished.append({**labels, "folder": str(job), "log": str(log) if log else ""})
            continue
        for path in sorted(job.glob("*.csv")):
            columns, rows = read_csv(path)
            prefix = ["job", "experiment", "model_pair"] + (["dataset"] if "dataset" not in columns else [])
            full = prefix + columns
            if path.stem in tables and tables[path.stem][0] != full:
                raise RlsftError(f"{path}: columns differ from other jobs' {path.name}")
            tables.setdefault(path.stem, (full, []))[1].extend([[labels[c] for c in prefix] + r for r in rows])
    return tables, unfinished


def table1(tables: dict) -> tuple[list[str], list[list]]:
    """The paper's Table 1: per pair, dataset and alpha, each metric for SFT and RL (with 95% bootstrap CIs)."""
    if "eap_summary" not in tables:
        return [], []
    columns, rows = tables["eap_summary"]
    idx = {c: i for i, c in enumerate(columns)}
    cells: dict[tuple, dict] = {}
    for r in rows:
        key = (r[idx["model_pair"]], r[idx["dataset"]], float(r[idx["alpha"]]))
        cell = cells.setdefault(key, {})
        for m in EAP_METRICS:
            cell[(m, r[idx["stage"]])] = f"{float(r[idx[m]]):.4g} [{float(r[idx[m + '_lo']]):.3g}, " \
                                         f"{float(r[idx[m + '_hi']]):.3g}]"
    stages = sorted({s for c in cells.values() for (_, s) in c}, key=lambda s: (s != "sft", s))
    out_cols = ["model_pair", "dataset", "alpha"] + [f"{m} ({s})" for m in EAP_METRICS for s in stages]
    out = [[p, d, a] + [cells[(p, d, a)].get((m, s), "") for m in EAP_METRICS for s in stages]
           for (p, d, a) in sorted(cells)]
    return out_cols, out


def _csv(columns, rows) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows([columns, *rows])
    return buf.getvalue()


def _md(columns, rows) -> str:
    from .experiments.common import markdown_table

    return markdown_table(columns, rows)


def _html_table(columns, rows) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metrics_vs_alpha(tables: dict, out: Path) -> list[Path]:
    """One figure per (pair, dataset): each EAP metric against alpha, SFT vs RL, with CI bands."""
    if "eap_summary" not in tables:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, rows = tables["eap_summary"]
    idx = {c: i for i, c in enumerate(columns)}
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r[idx["model_pair"]], r[idx["dataset"]]), []).append(r)
    paths = []
    for (pair, dataset), rs in sorted(groups.items()):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
        for ax, m in zip(axes, EAP_METRICS):
            for stage in sorted({r[idx["stage"]] for r in rs}):
                pts = sorted((float(r[idx["alpha"]]), float(r[idx[m]]), float(r[idx[m + "_lo"]]),
                              float(r[idx[m + "_hi"]])) for r in rs if r[idx["stage"]] == stage)
                a, v, lo, hi = zip(*pts)
                ax.plot(a, v, marker="o", label=stage)
                ax.fill_between(a, lo, hi, alpha=0.2)
            ax.set(xscale="log", xlabel="alpha", title=m)
            ax.legend()
        fig.suptitle(f"{pair} on {dataset}")
        path = out / f"eap_vs_alpha_{pair}_{dataset}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def build_report(root: str | Path, out: str | Path | None = None, tracker=None) -> dict:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise RlsftError(f"report: folder not found: {root}")
    if not job_dirs(root):
        raise RlsftError(f"report: no job folders (with config_resolved.yaml) under {root}")
    out = Path(out) if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables, unfinished = gather(root)
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
    figures = metrics_vs_alpha(tables, out)
    figures += sorted(p for p in root.rglob("*.png") if out not in p.parents)
    imgs = "".join(f'<figure><img src="{html.escape(str(Path(_rel(p, out))))}" width="720">'
                   f"<figcaption>{html.escape(_rel(p, out))}</figcaption></figure>" for p in figures)
    failed = _html_table(["job", "experiment", "model_pair", "dataset", "folder", "log"],
                         [[u["job"], u["experiment"], u["model_pair"], u["dataset"], u["folder"], u["log"]]
                          for u in unfinished]) if unfinished else "<p>every job finished</p>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>rlsft report: {html.escape(root.name)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
            f"<h1>rlsft report: {html.escape(str(root))}</h1><h2>unfinished jobs</h2>{failed}"
            f"{''.join(sections)}<h2>figures</h2>{imgs}</body></html>")
    atomic_write_bytes(out / "index.html", page.encode())
    return {"out": str(out), "tables": sorted(tables), "unfinished": len(unfinished), "figures": len(figures)}


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
    print(f"report written to {result['out']}/index.html ({len(result['tables'])} tables, "
          f"{result['figures']} figures, {result['unfinished']} unfinished jobs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
