"""trainer.val_on_start: a held-out validation before the first training step, in metrics.csv (step 0), the
curves, summary.json (``val_start/...``) and the final report ("start -> end"); kept, never repeated, by a
resume; skipped by fast_dev_run; invisible to training (the same steps without it). Online RL's start (its
held-out reward) is checked by the GRPO run of tests/test_diagnostics.py."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from rlhf_lab import analysis
from rlhf_lab.callbacks import StartValidation
from rlhf_lab.train import report, run
from tests.conftest import compose_config

# 4 steps validating every 2 (logged at steps 1 and 3), one held-out batch, last.ckpt at the end.
SHORT = ("trainer.limit_val_batches=1", "checkpoint.save_top_k=0", "export.enabled=false")
TIMING = "train/tokens_per_sec"


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return [{k: v for k, v in row.items() if k != TIMING} for row in csv.DictReader(file)]


def val_rows(run_dir: Path) -> list[dict[str, str]]:
    return [row for row in rows(run_dir) if row["val/loss"]]


def summary(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DPO run with the default trainer.val_on_start=true."""
    run_dir = tmp_path_factory.mktemp("straight")
    run(compose_config(SHORT, run_dir=run_dir))
    return run_dir


def test_the_first_row_is_the_validation_at_step_0(straight: Path) -> None:
    first = rows(straight)[0]
    val_columns = [key for key in first if key.startswith("val/")]
    assert (first["step"], first["epoch"]) == ("0", "0")
    assert all(first[key] for key in val_columns) and not any(
        first[k] for k in first if k.startswith("train/")
    )
    # The policy is its reference at step 0: DPO's loss is ln 2 and every implicit reward 0.
    assert float(first["val/loss"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(first["val/rewards/margins"]) == 0.0
    # Start, after steps 2 and 4 (logged at 1 and 3), and the final validation.
    assert [row["step"] for row in val_rows(straight)] == ["0", "1", "3", "4"]


def test_summary_curves_and_report_show_start_and_end(straight: Path, capsys: pytest.CaptureFixture) -> None:
    values = summary(straight)
    first = rows(straight)[0]
    starts = {key: value for key, value in values.items() if key.startswith("val_start/")}
    assert starts == {f"val_start/{key[4:]}": float(first[key]) for key in first if key.startswith("val/")}
    assert values["val_start/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert values["val/loss"] != values["val_start/loss"]

    figure = analysis.run_curves_figure(straight)
    (loss_panel,) = [axis for axis in figure.axes if axis.get_title() == "loss"]
    lines = {line.get_label(): line for line in loss_panel.get_lines()}
    assert lines["val/loss"].get_xdata()[0] == 0
    assert list(lines["start (step 0)"].get_ydata()) == [values["val_start/loss"]]

    report(straight, values)
    printed = capsys.readouterr().out.splitlines()
    assert "held-out metrics (start -> end):" in printed
    assert f"  {'val/loss':<28} 0.6931 -> {values['val/loss']:.4f}" in printed
    assert sum(line.startswith("  val/") and " -> " in line for line in printed) == len(starts)


def test_a_resumed_run_keeps_the_start_and_does_not_validate_it_again(straight: Path, tmp_path: Path) -> None:
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    run(compose_config([*SHORT, "trainer.max_steps=6", "resume=true"], run_dir=resumed))
    # Rows up to the checkpoint (step 4) kept, the final validation of the first run dropped, one step 0.
    assert [row["step"] for row in val_rows(resumed)] == ["0", "1", "3", "5", "6"]
    assert rows(resumed)[:7] == rows(straight)[:7]
    starts = {k: v for k, v in summary(resumed).items() if k.startswith("val_start/")}
    assert starts == {k: v for k, v in summary(straight).items() if k.startswith("val_start/")}


def test_without_it_training_is_the_same_and_the_report_has_no_start(
    straight: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    result = run(compose_config([*SHORT, "trainer.val_on_start=false"], run_dir=tmp_path))
    train_rows = [row for row in rows(tmp_path) if row["train/loss"]]
    assert train_rows == [row for row in rows(straight) if row["train/loss"]]  # the random state put back
    assert [row["step"] for row in val_rows(tmp_path)] == ["1", "3", "4"]
    assert not [key for key in result.summary if key.startswith("val_start/")]
    assert "held-out metrics:" in capsys.readouterr().out.splitlines()


def test_with_gradient_accumulation_the_start_precedes_the_first_micro_batch(tmp_path: Path) -> None:
    run(
        compose_config(
            [
                *SHORT,
                "trainer.accumulate_grad_batches=2",
                "trainer.max_steps=1",
                "trainer.val_check_interval=4",
            ],
            run_dir=tmp_path,
        )
    )
    first, second = rows(tmp_path)[:2]
    assert first["step"] == "0" and float(first["val/loss"]) == pytest.approx(math.log(2), abs=1e-6)
    assert second["train/loss"] and not second["val/loss"]  # then the first optimiser step's row
    assert summary(tmp_path)["val_start/loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_fast_dev_run_skips_it(tmp_path: Path) -> None:
    result = run(compose_config(["debug=fast_dev_run"], run_dir=tmp_path))
    assert "val/loss" in result.summary
    assert not [key for key in result.summary if key.startswith("val_start/")]


def test_its_values_come_back_with_a_checkpoint_even_when_disabled() -> None:
    saved = StartValidation()
    saved.start_metrics = {"val/loss": 0.69, "val/rewards/accuracies": 0.5}
    restored = StartValidation(enabled=False)
    restored.load_state_dict(saved.state_dict())
    assert restored.summary_values() == {"val_start/loss": 0.69, "val_start/rewards/accuracies": 0.5}
