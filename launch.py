"""The one entrypoint: `python launch.py [group=option ...] [-m for sweeps]` (see README.md)."""

import sys

from rlsft.threads import configure_env

configure_env()  # before torch loads: OpenMP reads its thread count and wait policy once (rlsft/threads.py)

import hydra  # noqa: E402

from rlsft.config import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    from rlsft.run import main as run

    return run(cfg)


if __name__ == "__main__":
    from pathlib import Path

    from rlsft.errors import RlsftError
    from rlsft.overrides import check
    from rlsft.parallel import shared_run_dir

    problem = check(sys.argv[1:], Path(__file__).resolve().parent / "conf")
    if not problem:  # several data-parallel processes (accelerate launch) share one run folder
        try:
            sys.argv += shared_run_dir(sys.argv[1:])
        except RlsftError as exc:
            problem = str(exc)
    if problem:  # a misspelt key, an unknown option, a wrong type: one line, before Hydra's own many
        print(f"error: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()
    from rlsft.run import exit_status

    sys.exit(exit_status())  # a multirun with a failed task: 2 (rlsft.run.SweepSummary)
