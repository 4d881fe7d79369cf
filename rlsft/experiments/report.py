"""``experiment=report report.dir=MULTIRUN_DIR``: rlsft.report from the entrypoint, tables also logged to W&B.

It writes where ``rlsft-report MULTIRUN_DIR`` does (``MULTIRUN_DIR/report/``); the run folder keeps only the log."""

from ..errors import RlsftError
from ..report import build_report


def run(cfg, ctx):
    if not cfg.report.dir:
        raise RlsftError("experiment=report needs report.dir=<a finished multirun folder>")
    return build_report(cfg.report.dir, tracker=ctx.tracker)
