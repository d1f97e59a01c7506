"""``python -m rlhf_lab.leaderboard [overrides]``: ``python -m rlhf_lab experiment=leaderboard [overrides]`` (or
the ``experiment=`` the overrides name, such as ``experiment=suite``)."""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    if not any(arg.lstrip("+").startswith("experiment=") for arg in sys.argv[1:]):
        sys.argv.insert(1, "experiment=leaderboard")
    # The package's entry point, run as `python -m rlhf_lab` runs it (importing it would be an import cycle).
    runpy.run_module("rlhf_lab", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
