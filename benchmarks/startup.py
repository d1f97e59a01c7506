"""Start-up time of ``python -m rlhf_lab``: ``--help``, ``--cfg job`` and a key typo, each its own process.

    python benchmarks/startup.py [--repeat 3] [--repo DIR] [--json FILE]

Every command runs from ``--repo`` (default: this checkout; Python imports the ``rlhf_lab`` of the directory
it starts in, so ``git archive <commit> | tar -x -C DIR`` times an older commit with the same interpreter)
with an empty ``RLHF_LAB_CACHE`` of its own. The first ``--help`` builds the schema cache (what the first
start after an install or an edit of the package pays: ``first``); then each command runs ``--repeat`` times
and the median is reported. The exit status is shown too: a typo exits 2 with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "--help": ["--help"],
    "--cfg job": ["--cfg", "job"],
    "key typo (algo.betta=0.2)": ["algo.betta=0.2"],
}


def timed(args: list[str], repo: Path, env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds, exit status and the last stderr line of ``python -m rlhf_lab <args>`` run in ``repo``."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_lab", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    last = (result.stderr.strip().splitlines() or [""])[-1]
    return seconds, result.returncode, last


def measure(repo: Path, repeat: int) -> dict[str, Any]:
    """``first`` (``--help`` with an empty cache) and each command's median of ``repeat`` runs."""
    with tempfile.TemporaryDirectory() as scratch:
        env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
        env["RLHF_LAB_CACHE"] = str(Path(scratch) / "cache")
        run_dir = f"hydra.run.dir={Path(scratch) / 'run'}"
        first, _, _ = timed(["--help"], repo, env)
        rows = []
        for name, args in COMMANDS.items():
            runs = [timed([*args, run_dir], repo, env) for _ in range(repeat)]
            rows.append(
                {
                    "command": name,
                    "median_s": round(statistics.median(seconds for seconds, _, _ in runs), 2),
                    "runs_s": [round(seconds, 2) for seconds, _, _ in runs],
                    "exit": runs[-1][1],
                    "stderr_last_line": runs[-1][2],
                }
            )
    return {
        "repo": str(repo),
        "python": sys.version.split()[0],
        "first_help_s": round(first, 2),
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"python -m rlhf_lab start-up, {result['repo']} (Python {result['python']})")
    print(f"first --help (empty schema cache): {result['first_help_s']:.2f} s")
    print(f"{'command':<28} {'median s':>9}  {'runs s':<20} exit")
    for row in result["rows"]:
        runs = ", ".join(f"{s:.2f}" for s in row["runs_s"])
        print(f"{row['command']:<28} {row['median_s']:>9.2f}  {runs:<20} {row['exit']}")
    typo = result["rows"][-1]["stderr_last_line"]
    print(f"key typo says: {typo}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (the median is reported)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to time (default: this one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = measure(args.repo.resolve(), args.repeat)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
