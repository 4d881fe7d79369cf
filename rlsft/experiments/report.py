"""``experiment=report report.dir=MULTIRUN_DIR``: rlsft.report from the entrypoint, tables also logged to W&B.

It writes where ``rlsft-report MULTIRUN_DIR`` does (``MULTIRUN_DIR/report/``); the run folder keeps only the log."""

from ..errors import RlsftError
from ..report import build_report

READS_INTERNALS = False
DATA_PARALLEL = False


def check(cfg) -> None:
    """Nothing beyond rlsft.config.validate's checks: report.dir is asked for when the job runs, so that
    ``experiment=report`` alone composes and validates like every option in conf/."""


def tags(cfg) -> list[str]:
    """No W&B tags beyond the pair's and the dataset's."""
    return []


def run(cfg, ctx):
    if not cfg.report.dir:
        raise RlsftError("experiment=report needs report.dir=<a finished multirun folder>")
    result = build_report(cfg.report.dir, tracker=ctx.tracker)
    print(f"report: {result['index']}", flush=True)  # the page; rlsft.run's last line names the run folder
    return result
