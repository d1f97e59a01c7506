"""The table written and printed at the end of a ``--multirun`` (`rlhf_lab.multirun.MultirunSummary`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from rlhf_lab.multirun import MultirunSummary


def fake_job(sweep: Path, name: str, number: int, overrides: list[str], summary: dict | None) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": number}}}))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    return job


def test_one_row_per_job_with_its_overrides_and_held_out_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["algo=dpo", "trainer.max_steps=4"]
    fake_job(
        tmp_path,
        "1",
        1,
        [*common, "algo.beta=0.5"],
        {"val/loss": 0.5, "train/loss": 0.1, "run/diverged": 0.0},
    )
    job0 = fake_job(
        tmp_path,
        "0",
        0,
        [*common, "algo.beta=0.05"],
        {"val/loss": 0.25, "val_start/loss": 0.6931, "run/diverged": 0.0},
    )
    fake_job(tmp_path, "2", 2, [*common, "algo.beta=1.0"], None)  # a job without a summary
    fake_job(job0, "child", 0, ["seed=3"], {"val/loss": 9.0})  # a job's own child run is not a job

    MultirunSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))

    with (tmp_path / "summary.csv").open() as stream:
        rows = list(csv.reader(stream))
    assert rows == [
        ["job", "algo", "trainer.max_steps", "algo.beta", "status", "val/loss", "val_start/loss"],
        ["0", "dpo", "4", "0.05", "ok", "0.25", "0.6931"],
        ["1", "dpo", "4", "0.5", "ok", "0.5", ""],
        ["2", "dpo", "4", "1.0", "no summary.json", "", ""],
    ]
    markdown = (tmp_path / "summary.md").read_text()
    assert markdown.splitlines() == [
        "3 jobs: algo=dpo trainer.max_steps=4",
        "",
        "| job | algo.beta | status | val/loss |",
        "|---|---|---|---|",
        "| 0 | 0.05 | ok | 0.6931 -> 0.2500 |",  # from its validation at step 0
        "| 1 | 0.5 | ok | 0.5000 |",
        "| 2 | 1.0 | no summary.json |  |",
    ]
    assert capsys.readouterr().out == f"\nmultirun summary ({tmp_path / 'summary.csv'}):\n{markdown}\n"


def assert_the_multirun_summary(sweep: Path, stdout: str) -> None:
    """A real 2-job ``--multirun algo.beta=0.05,0.5`` (tests/test_notebook.py runs one) ended with the table:
    one row per job, its held-out metrics exactly as in its summary.json, printed too."""
    with (sweep / "summary.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["job"], row["algo.beta"], row["status"]) for row in rows] == [
        ("0", "0.05", "ok"),
        ("1", "0.5", "ok"),
    ]
    for row in rows:
        summary = json.loads((sweep / row["job"] / "summary.json").read_text())
        held_out = {key: value for key, value in summary.items() if key.startswith(("val/", "val_start/"))}
        assert "val/loss" in held_out
        assert {key: float(row[key]) for key in held_out} == held_out
    printed = stdout[stdout.index("multirun summary") :]
    assert printed.splitlines()[3].startswith("| job | algo.beta | status | val/logits/chosen |")
    assert printed.count("| ok |") == 2


def test_a_job_that_did_not_learn_says_so_in_its_status(tmp_path: Path) -> None:
    from rlhf_lab.multirun import read_job

    flagged = fake_job(tmp_path, "0", 0, ["optim.lr=1e4"], {"val/loss": 0.697, "run/learned": False})
    learned = fake_job(tmp_path, "1", 1, ["optim.lr=1e-3"], {"val/loss": 0.68, "run/learned": True})
    assert [read_job(job).status for job in (flagged, learned)] == ["did not learn", "ok"]
