"""The one entrypoint: `python launch.py [group=option ...] [-m for sweeps]` (see README.md)."""

import sys

import hydra

from rlsft.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    from rlsft.run import main as run

    return run(cfg)


if __name__ == "__main__":
    main()
    from rlsft.run import exit_status

    sys.exit(exit_status())  # a multirun with a failed task: 2 (rlsft.run.SweepSummary)
