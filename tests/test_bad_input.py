"""Bad input files fail early and clearly; odd-but-valid input (identical pairs, over-long rows,
Parquet, plain strings) trains and is counted in summary.json.

The CLI cases run ``python -m rlhf_lab`` as a user would. Each CLI process spends most of its time
importing Lightning, so all of them are started at once by one module-scoped fixture.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_lab.data.formats import DataError
from rlhf_lab.data.sources import LocalFiles
from rlhf_lab.data.synthetic import SyntheticPreferences
from rlhf_lab.train import build, train
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]

# A few optimiser steps with validation, for local-file runs (the TINY_OVERRIDES of conftest are
# synthetic-only: `data.source.num_train` does not exist for `data=jsonl`).
FILE_RUN = (
    "data=jsonl",
    "debug=fast",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.accelerator=cpu",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "export.enabled=false",
)


def synthetic_rows(n: int, seed: int = 5) -> list[dict[str, Any]]:
    """``n`` valid conversational preference rows from the bundled task."""
    return SyntheticPreferences(num_train=n, num_eval=0, seed=seed).load()["train"][0].rows


def plain_rows(n: int, seed: int = 5) -> list[dict[str, Any]]:
    """The same task as plain strings (no chat template)."""
    return [
        {
            "prompt": f"Q: {row['prompt'][0]['content']}\nA:",
            "chosen": " " + row["chosen"][0]["content"],
            "rejected": " " + row["rejected"][0]["content"],
        }
        for row in synthetic_rows(n, seed)
    ]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- the bad files --------------------------------------------------------------------------------


def _missing_column(rows: list[dict]) -> None:
    del rows[5]["rejected"]


def _empty_completion(rows: list[dict]) -> None:
    rows[3]["chosen"][0]["content"] = "   "


def _non_string_content(rows: list[dict]) -> None:
    rows[6]["rejected"][0]["content"] = 42


def _wrong_role_order(rows: list[dict]) -> None:
    rows[2]["prompt"] = [
        {"role": "user", "content": "Hello"},
        {"role": "user", "content": "Is a cat a tool?"},
    ]


@dataclass
class Case:
    """A broken file and the location and reason its error must name."""

    name: str
    make: Callable[[Path], Path]
    expected: str  # the error message; "{path}" stands for the file


def _row_case(name: str, mutate: Callable[[list[dict]], None], location: str, reason: str) -> Case:
    """A file of 8 valid rows with one made bad by ``mutate``; ``location`` is e.g. ``row 5, field 'x'``."""

    def make(directory: Path) -> Path:
        rows = synthetic_rows(8)
        mutate(rows)
        return write_jsonl(directory / f"{name}.jsonl", rows)

    return Case(name, make, f"{{path}}, {location}: {reason}")


def _bad_json(directory: Path) -> Path:
    path = directory / "bad_json.jsonl"
    good = [json.dumps(row) for row in synthetic_rows(8)]
    # Line 3 is blank (not a record), so the broken record is row 2 but line 4 of the file.
    lines = [good[0], good[1], "", '{"prompt": [{"role": "user", "content": "Is a', *good[3:]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CASES = [
    _row_case("missing_column", _missing_column, "row 5, field 'rejected'", "missing column 'rejected'"),
    _row_case(
        "empty_completion",
        _empty_completion,
        "row 3, field 'chosen[0].content'",
        "empty completion: assistant content is blank",
    ),
    _row_case(
        "non_string_content",
        _non_string_content,
        "row 6, field 'rejected[0].content'",
        "message content must be a string, got int",
    ),
    _row_case(
        "wrong_role_order",
        _wrong_role_order,
        "row 2, field 'prompt[1].role'",
        "roles must alternate user/assistant starting with user; got 'user' where 'assistant' was expected",
    ),
    Case("bad_json", _bad_json, "{path}: line 4: invalid JSON: Unterminated string"),
    Case("missing_file", lambda directory: directory / "does_not_exist.jsonl", "{path}: file not found"),
]


@dataclass
class CliResult:
    path: Path
    run_dir: Path
    cache: Path
    returncode: int
    output: str


# Runs `python -m rlhf_lab` once per case, each in its own process with its own exit status and output,
# without paying the Lightning import (~6 CPU-seconds) per case: the driver imports the package once and
# forks; each child executes rlhf_lab/__main__.py exactly as `-m` does (runpy, as __main__).
FORK_DRIVER = """
import json, os, runpy, sys
import rlhf_lab.__main__  # noqa: F401  (the imports every run needs, done once before forking)
import rlhf_lab.train  # noqa: F401
children = {}
for case in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        out = os.open(case["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.environ.update(case["env"])
        sys.argv = [rlhf_lab.__main__.__file__, *case["args"]]
        code = 0
        try:
            runpy.run_module("rlhf_lab", run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    children[pid] = case["name"]
codes = {}
for pid, name in children.items():
    codes[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(codes))
"""


def run_cli(
    commands: dict[str, tuple[list[str], dict[str, str]]], workdir: Path
) -> dict[str, tuple[int, str]]:
    """Run ``python -m rlhf_lab <args>`` per command (name -> (args, extra env)), all at once.

    Returns ``{name: (exit status, stdout + stderr)}``.
    """
    if hasattr(os, "fork") and sys.platform == "linux":
        cases = [
            {"name": name, "args": args, "env": env, "output": str(workdir / f"{name}.out")}
            for name, (args, env) in commands.items()
        ]
        driver = subprocess.run(
            [sys.executable, "-c", FORK_DRIVER, json.dumps(cases)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert driver.returncode == 0, driver.stderr
        codes = json.loads(driver.stdout.strip().splitlines()[-1])
        return {name: (codes[name], (workdir / f"{name}.out").read_text()) for name in commands}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "rlhf_lab", *args],
            env={**os.environ, **env},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, (args, env) in commands.items()
    }
    results = {}
    for name, process in processes.items():
        output = process.communicate(timeout=240)[0]
        results[name] = (process.returncode, output)
    return results


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliResult]:
    root = tmp_path_factory.mktemp("bad_input_cli")
    commands, meta = {}, {}
    for case in CASES:
        directory = root / case.name
        directory.mkdir()
        path = case.make(directory)
        run_dir = directory / "run"
        # An empty cache of its own: anything built there would mean a model was prepared.
        cache = directory / "cache"
        args = [
            "data=jsonl",
            f"data.source.train_path={path}",
            "data.source.eval_fraction=0.25",
            "debug=fast",
            "trainer.enable_progress_bar=false",
            "trainer.accelerator=cpu",
            f"hydra.run.dir={run_dir}",
        ]
        commands[case.name] = (args, {"RLHF_LAB_CACHE": str(cache)})
        meta[case.name] = (path, run_dir, cache)
    results = run_cli(commands, root)
    return {name: CliResult(*meta[name], *results[name]) for name in commands}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_cli_bad_file_fails_with_file_row_and_field(case: Case, cli_results: dict[str, CliResult]) -> None:
    result = cli_results[case.name]
    assert result.returncode == 2, result.output
    expected = case.expected.format(path=result.path)
    # One line, the last, with the message: no traceback to dig it out of.
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1] == f"error: {expected}" or (lines[-1].startswith("error: ") and expected in lines[-1]), (
        lines[-8:]
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_cli_bad_file_fails_before_any_model_is_built(case: Case, cli_results: dict[str, CliResult]) -> None:
    result = cli_results[case.name]
    assert result.returncode != 0
    # The run directory exists (Hydra wrote its config), but nothing past data loading happened.
    assert (result.run_dir / ".hydra" / "config.yaml").is_file()
    for artefact in ("checkpoints", "export", "summary.json", "metrics.csv"):
        assert not (result.run_dir / artefact).exists(), artefact
    # No tiny model or tokenizer was built in the run's cache.
    assert not (result.cache / "tiny").exists()


# --- the same errors in process ---------------------------------------------------------------------


def _file_config(make_config: Callable[..., Any], path: Path, *overrides: str) -> Any:
    return make_config(
        *FILE_RUN, f"data.source.train_path={path}", "data.source.eval_fraction=0.25", *overrides, tiny=False
    )


@pytest.mark.parametrize(
    ("mutate", "row", "field", "reason"),
    [
        (_missing_column, 5, "rejected", r"missing column 'rejected' \(found columns: chosen, prompt; "),
        (_empty_completion, 3, "chosen[0].content", "empty completion"),
        (_non_string_content, 6, "rejected[0].content", "must be a string, got int"),
        (_wrong_role_order, 2, "prompt[1].role", "roles must alternate"),
    ],
    ids=["missing_column", "empty_completion", "non_string_content", "wrong_role_order"],
)
def test_build_raises_data_error_naming_file_row_and_field(
    tmp_path, make_config, mutate, row, field, reason
) -> None:
    rows = synthetic_rows(8)
    mutate(rows)
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=reason) as caught:
        build(_file_config(make_config, path))
    error = caught.value
    assert (error.file, error.row, error.field) == (str(path), row, field)
    assert str(error).startswith(f"{path}, row {row}, field {field!r}: ")


def test_row_numbers_are_file_positions_when_the_bad_row_is_held_out(tmp_path, make_config) -> None:
    """With ``eval_fraction`` the held-out rows are a subset; errors still name their line in the file."""
    cfg = _file_config(make_config, tmp_path / "train.jsonl")
    splitter = LocalFiles(train_path=str(tmp_path / "train.jsonl"), eval_fraction=0.25, seed=cfg.seed)
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(8))
    held_out = splitter.load()["val"][0].row_numbers
    assert held_out is not None and len(held_out) == 2
    bad = held_out[-1]
    rows = synthetic_rows(8)
    rows[bad]["chosen"][0]["content"] = ""
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=f", row {bad}, field 'chosen\\[0\\].content': empty completion"):
        build(cfg)


def test_plain_row_with_non_string_completion(tmp_path, make_config) -> None:
    rows = plain_rows(8)
    rows[4]["chosen"] = 7
    path = write_jsonl(tmp_path / "plain.jsonl", rows)
    with pytest.raises(DataError) as caught:
        build(_file_config(make_config, path))
    assert str(caught.value) == f"{path}, row 4, field 'chosen': expected a string, got int"


def test_bad_json_line_number_counts_blank_lines(tmp_path, make_config) -> None:
    path = _bad_json(tmp_path)
    with pytest.raises(DataError, match=r": line 4: invalid JSON: ") as caught:
        build(_file_config(make_config, path))
    assert caught.value.file == str(path)
    assert caught.value.row is None


def test_unknown_file_type(tmp_path, make_config) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("prompt\tchosen\trejected\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        build(_file_config(make_config, path))
    assert (
        str(caught.value)
        == f"{path}: unknown file type '.tsv'; expected one of: .jsonl, .json, .parquet, .csv"
    )


# --- odd but valid input: trains, and the summary counts what was dropped --------------------------


def _train_files(run_dir: Path, train_path: Path, eval_path: Path, *overrides: str) -> dict[str, float]:
    cfg = compose_config(
        [
            *FILE_RUN,
            f"data.source.train_path={train_path}",
            f"data.source.eval_path={eval_path}",
            *overrides,
        ],
        run_dir=run_dir,
        tiny=False,
    )
    summary = train(cfg)
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == pytest.approx(summary)
    return on_disk


@pytest.fixture(scope="module")
def dropped_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """24 training rows: 3 identical pairs, 4 prompts far over ``max_length``; 8 held-out rows, 1 identical."""
    root = tmp_path_factory.mktemp("dropped")
    rows = synthetic_rows(32, seed=11)
    train_rows, eval_rows = rows[:24], rows[24:]
    for index in (1, 8, 17):
        train_rows[index]["rejected"] = train_rows[index]["chosen"]
    eval_rows[3]["rejected"] = eval_rows[3]["chosen"]
    long_prompt = " ".join(["Tell me about the hammer, the wrench and the eagle in the barn."] * 12)
    for index in (4, 12, 20, 22):
        train_rows[index]["prompt"][0]["content"] = long_prompt
    return _train_files(
        root / "run",
        write_jsonl(root / "train.jsonl", train_rows),
        write_jsonl(root / "eval.jsonl", eval_rows),
        "data.max_length=64",
        "data.max_prompt_length=null",
    )


def test_identical_pairs_are_dropped_and_counted(dropped_run: dict[str, float]) -> None:
    assert dropped_run["data/train/rows"] == 24
    assert dropped_run["data/train/identical_dropped"] == 3
    assert dropped_run["data/val/rows"] == 8
    assert dropped_run["data/val/identical_dropped"] == 1
    # What is left goes to tokenisation.
    assert dropped_run["data/train/examples"] == 21
    assert dropped_run["data/val/examples"] == 7


def test_too_long_examples_are_dropped_and_counted(dropped_run: dict[str, float]) -> None:
    assert dropped_run["data/train/dropped_too_long"] == 4
    assert dropped_run["data/val/dropped_too_long"] == 0
    assert dropped_run["trainer/global_step"] == 4
    assert math.isfinite(dropped_run["val/loss"])


def test_parquet_file_trains(tmp_path) -> None:
    rows = synthetic_rows(32, seed=21)
    pq.write_table(pa.Table.from_pylist(rows[:24]), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[24:]), tmp_path / "eval.parquet")
    summary = _train_files(tmp_path / "run", tmp_path / "train.parquet", tmp_path / "eval.parquet")
    assert math.isfinite(summary["val/loss"])
    assert summary["trainer/global_step"] == 4
    assert (summary["data/train/examples"], summary["data/val/examples"]) == (24, 8)
    assert summary["data/train/dropped_too_long"] == 0


def test_plain_string_jsonl_trains(tmp_path) -> None:
    rows = plain_rows(32, seed=31)
    summary = _train_files(
        tmp_path / "run",
        write_jsonl(tmp_path / "train.jsonl", rows[:24]),
        write_jsonl(tmp_path / "eval.jsonl", rows[24:]),
    )
    assert math.isfinite(summary["val/loss"])
    assert summary["trainer/global_step"] == 4
    assert (summary["data/train/examples"], summary["data/val/examples"]) == (24, 8)
