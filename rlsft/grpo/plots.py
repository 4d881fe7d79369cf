"""Figures of GRPO runs: held-out accuracy and the EAP metric differences against step, one line per run.

A panel per ``eap/<metric>_diff`` key some run logged (experiment=grpo's EAP drift, rlsft.experiments.eap_drift), in
the order the drift logs them, so a metric added to the EAP registry gets its panel with nothing to change here.

``plot_multirun(multirun_dir)`` reads every job's ``grpo_history.json`` (and its temperature from
``config_resolved.yaml``) under a Hydra multirun folder, e.g. the rebuttal sweep ``-m grpo.temperature=0.6,1.0``,
and writes ``grpo_temperature.png`` + ``grpo_temperature.csv`` there. Also a command:
``python -m rlsft.grpo.plots <multirun_dir>``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from ..cache import atomic_path, atomic_write_bytes, locked


def panels(histories: list[list[dict]]) -> list[tuple[str, str]]:
    """(key, title): held-out accuracy, then every ``eap/<metric>_diff`` of the histories in the order first logged."""
    keys: list[str] = []
    for history in histories:
        for row in history:
            keys += [k for k in row if k.startswith("eap/") and k.endswith("_diff") and k not in keys]
    return [("eval/accuracy", "held-out accuracy (greedy)")] + [(k, f"{k[4:-5]}: current - initial") for k in keys]


def plot_runs(runs: list[tuple[str, list[dict]]], title: str = ""):
    """One figure, a panel per metric some run logged, a line per (label, history); steps without the metric are
    skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = panels([h for _, h in runs])
    ncols = min(len(shown), 4)  # a grid: one row of nine panels is too wide to read
    nrows = -(-len(shown) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(shown):]:
        ax.axis("off")
    for ax, (key, name) in zip(axes, shown):
        for label, history in runs:
            pts = [(row["step"], row[key]) for row in history if isinstance(row.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=label)
        if key != "eval/accuracy":
            ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    if axes[0].get_legend_handles_labels()[0]:  # a run without evaluation may leave the first panel empty
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _job_label(job: Path) -> tuple[float | None, str]:
    from omegaconf import OmegaConf

    cfg_path = job / "config_resolved.yaml"
    if not cfg_path.exists():
        return None, job.name
    cfg = OmegaConf.load(cfg_path)
    t = OmegaConf.select(cfg, "grpo.temperature")
    seed = OmegaConf.select(cfg, "grpo.seed")
    return t, f"T={t}" + (f" seed={seed}" if seed else "")


def plot_multirun(multirun_dir: str | Path) -> Path | None:
    """Draw every finished or running job of a sweep folder; returns the figure path (None: no history yet)."""
    root = Path(multirun_dir)
    jobs = sorted({p.parent for p in root.glob("*/grpo_history.json")} | {p.parent for p in root.glob("grpo_history.json")})
    runs = []
    for job in jobs:
        t, label = _job_label(job)
        runs.append((t if t is not None else float("inf"), label, json.loads((job / "grpo_history.json").read_text())))
    if not runs:
        return None
    runs.sort(key=lambda r: (r[0], r[1]))
    out = root / "grpo_temperature.png"
    with locked(out):
        fig = plot_runs([(label, h) for _, label, h in runs], title=f"GRPO: {root.name}")
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
        columns = [k for k, _ in panels([h for _, _, h in runs])]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["run", "step"] + columns)
        for _, label, h in runs:
            for row in h:
                if any(k in row for k in columns):
                    w.writerow([label, row["step"]] + [row.get(k, "") for k in columns])
        atomic_write_bytes(root / "grpo_temperature.csv", buf.getvalue().encode())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rlsft.grpo.plots <multirun_dir>")
    path = plot_multirun(sys.argv[1])
    print(path or f"no grpo_history.json under {sys.argv[1]}")
