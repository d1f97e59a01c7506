"""rlhf_lab.analysis: loading runs (local and W&B), the CI arithmetic, figures, and every run's curves.png."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from rlhf_lab import analysis
from rlhf_lab.train import run, write_curves
from tests.conftest import compose_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1024


def write_run(
    run_dir: Path,
    beta: float,
    seed: int,
    accuracy: float,
    algo_choice: str | None = "dpo",
    target: str = "rlhf_lab.objectives.DPO",
    summary: bool = True,
    metrics: str | None = None,
) -> Path:
    """A run directory as `python -m rlhf_lab` leaves it (the parts analysis reads)."""
    run_dir.mkdir(parents=True)
    config = {"algo": {"_target_": target, "beta": beta}, "seed": seed, "optim": {"betas": [0.9, 0.999]}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if algo_choice:
        hydra = {
            "hydra": {"runtime": {"choices": {"algo": algo_choice, "model": "tiny"}}, "run": {"dir": "${x}"}}
        }
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    if summary:
        (run_dir / "summary.json").write_text(
            json.dumps({"val/rewards/accuracies": accuracy, "val/loss": 0.5})
        )
    (run_dir / "metrics.csv").write_text(
        metrics
        or "epoch,step,train/loss,val/loss,val/rewards/accuracies\n"
        "0,0,0.69,,\n0,1,0.60,,\n0,1,,0.65,0.5\n0,2,0.40,,\n0,3,,0.45,"
        + str(accuracy)
        + "\n"
    )
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A multirun-like directory: jobs 0, 1, 2, 10 (sorted as numbers), two objectives, two seeds."""
    root = tmp_path / "multirun"
    write_run(root / "0", beta=0.1, seed=0, accuracy=0.6)
    write_run(root / "1", beta=0.1, seed=1, accuracy=0.8)
    write_run(root / "2", beta=0.5, seed=0, accuracy=0.9)
    write_run(
        root / "10", beta=2.0, seed=0, accuracy=0.7, algo_choice=None, target="rlhf_lab.objectives.SimPO"
    )
    return root


# ------------------------------------------------------------------------------------------- mean_ci
def test_mean_ci_student_t_by_hand() -> None:
    # mean 2.5, sample sd sqrt(5/3) = 1.290994, se = 0.645497, t(0.975, 3) = 3.182446 -> half 2.054260
    mean, low, high = analysis.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert low == pytest.approx(0.445740, abs=1e-6)
    assert high == pytest.approx(4.554260, abs=1e-6)
    # Two values: t(0.975, 1) = 12.706205, se = 0.5 -> half 6.353102
    assert analysis.mean_ci([1.0, 2.0]) == pytest.approx((1.5, 1.5 - 6.353102, 1.5 + 6.353102), abs=1e-5)


def test_mean_ci_normal_without_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy", None)  # `from scipy import stats` now raises ImportError
    mean, low, high = analysis.mean_ci([1.0, 2.0, 3.0, 4.0])
    # 1.959964 * 0.645497 = 1.265151
    assert (mean, low, high) == pytest.approx((2.5, 1.234849, 3.765151), abs=1e-6)
    assert analysis.ci_method() == "normal"


def test_mean_ci_degenerate_inputs() -> None:
    mean, low, high = analysis.mean_ci([0.7, float("nan")])
    assert mean == pytest.approx(0.7) and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in analysis.mean_ci([]))
    assert analysis.mean_ci([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    assert analysis.mean_ci([1.0, 2.0, 3.0, 4.0], confidence=0.9)[1] == pytest.approx(
        2.5 - 2.353363 * 0.645497
    )


# --------------------------------------------------------------------------------------------- loading
def test_load_runs_flattens_config_and_reads_summaries(sweep: Path) -> None:
    runs = analysis.load_runs(sweep)
    assert [Path(p).name for p in runs["run_dir"]] == ["0", "1", "2", "10"]
    assert list(runs.columns[:3]) == ["run_dir", "objective", "finished"]
    assert runs["objective"].tolist() == ["dpo", "dpo", "dpo", "simpo"]  # the last from its _target_
    assert runs["algo.beta"].tolist() == [0.1, 0.1, 0.5, 2.0]
    assert runs["algo._target_"].iloc[3] == "rlhf_lab.objectives.SimPO"
    assert runs["seed"].tolist() == [0, 1, 0, 0]
    assert runs["optim.betas"].iloc[0] == "[0.9, 0.999]"  # lists become hashable strings
    assert runs["val/rewards/accuracies"].tolist() == [0.6, 0.8, 0.9, 0.7]
    assert runs["finished"].all()


def test_load_runs_of_one_run_and_of_an_unfinished_run(tmp_path: Path) -> None:
    one = write_run(tmp_path / "a", beta=0.3, seed=5, accuracy=0.75)
    unfinished = write_run(tmp_path / "b", beta=0.3, seed=6, accuracy=0.55, summary=False)
    runs = analysis.load_runs(one, unfinished)
    assert runs["finished"].tolist() == [True, False]
    # Without summary.json: each metric's last logged value.
    assert runs.loc[1, "val/rewards/accuracies"] == pytest.approx(0.55)
    assert runs.loc[1, "train/loss"] == pytest.approx(0.40)
    with pytest.raises(FileNotFoundError, match="no such run"):
        analysis.load_runs(tmp_path / "missing")


def test_load_history_is_long_and_tidy(sweep: Path) -> None:
    history = analysis.load_history(sweep / "0", sweep / "2")
    assert list(history.columns) == ["run_dir", "objective", "epoch", "step", "metric", "value"]
    first = history[history["run_dir"] == str(sweep / "0")]
    assert first[first["metric"] == "train/loss"]["value"].tolist() == [0.69, 0.60, 0.40]
    assert first[first["metric"] == "train/loss"]["step"].tolist() == [0, 1, 2]
    assert first[first["metric"] == "val/loss"]["step"].tolist() == [1, 3]
    assert set(history["metric"]) == {"train/loss", "val/loss", "val/rewards/accuracies"}
    assert not history["value"].isna().any()


class FakeSummary:
    def __init__(self, values: dict[str, Any]) -> None:
        self._json_dict = values


class FakeRun:
    def __init__(self, run_id: str, config: dict[str, Any], summary: Any, history: pd.DataFrame) -> None:
        self.id, self.name, self.config, self.summary, self._history = (
            run_id,
            f"run-{run_id}",
            config,
            summary,
            history,
        )

    def history(self, pandas: bool = True) -> pd.DataFrame:
        return self._history


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        history = pd.DataFrame(
            {"_step": [0, 1, 2], "trainer/global_step": [0, 5, 10], "train/loss": [0.7, 0.5, float("nan")]}
        )
        self.runs_ = [
            # Flat dotted keys, as rlhf_lab's W&B logger writes them; summary with _json_dict.
            FakeRun(
                "a1",
                {"algo._target_": "rlhf_lab.objectives.DPO", "algo.beta": 0.1, "seed": 0, "_wandb": {}},
                FakeSummary({"val/rewards/accuracies": 0.9, "_runtime": 12.0, "_step": 2}),
                history,
            ),
            # Nested and API-wrapped values; a plain-dict summary.
            FakeRun(
                "b2",
                {
                    "algo": {"value": {"_target_": "rlhf_lab.objectives.SimPO", "beta": 2.0}},
                    "seed": {"value": 1},
                },
                {"val/rewards/accuracies": 0.8},
                pd.DataFrame(),
            ),
        ]

    def runs(self, path: str, filters: Any = None) -> list[FakeRun]:
        self.calls.append((path, filters))
        return self.runs_


def test_load_wandb_runs_with_a_fake_api(monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    api = FakeApi()
    monkeypatch.setattr(wandb, "Api", lambda: api)
    runs = analysis.load_wandb_runs("me", "rlhf", filters={"config.seed": 0})
    assert api.calls == [("me/rlhf", {"config.seed": 0})]
    assert runs["run_dir"].tolist() == ["wandb:me/rlhf/a1", "wandb:me/rlhf/b2"]
    assert runs["objective"].tolist() == ["dpo", "simpo"]
    assert runs["algo.beta"].tolist() == [0.1, 2.0]
    assert runs["seed"].tolist() == [0, 1]
    assert runs["val/rewards/accuracies"].tolist() == [0.9, 0.8]
    assert not any(column.startswith("_") for column in runs.columns)

    runs, history = analysis.load_wandb_runs("me", "rlhf", history=True)
    assert len(runs) == 2
    assert list(history.columns) == ["run_dir", "objective", "step", "metric", "value"]
    assert history["step"].tolist() == [0, 5]  # Lightning's global step, NaN dropped
    assert history["value"].tolist() == [0.7, 0.5]
    assert set(history["metric"]) == {"train/loss"}


# ------------------------------------------------------------------------------------------- figures
def test_summarize_and_figures(sweep: Path, tmp_path: Path) -> None:
    runs = analysis.load_runs(sweep)
    table = analysis.summarize(runs, ["val/rewards/accuracies", "absent"])
    assert table["objective"].tolist() == ["dpo", "simpo"]
    assert table["n"].tolist() == [3, 1]
    dpo = table.iloc[0]
    expected = analysis.mean_ci([0.6, 0.8, 0.9])
    assert (dpo["val/rewards/accuracies/mean"], dpo["val/rewards/accuracies/low"]) == pytest.approx(
        expected[:2]
    )
    assert math.isnan(dpo["absent/mean"])

    history = analysis.load_history(sweep)
    figure = analysis.plot_curves(history, ["train/loss", "val/loss"], out=tmp_path / "f" / "curves.png")
    assert [axis.get_title() for axis in figure.axes] == ["train/loss", "val/loss"]
    assert len(figure.axes[0].lines) == 4
    assert_png(tmp_path / "f" / "curves.png")

    figure = analysis.plot_parameter(runs, "algo.beta", "val/rewards/accuracies", out=tmp_path / "beta.png")
    assert figure.axes[0].get_xscale() == "log"  # 0.1 .. 2.0 spans 20x
    assert_png(tmp_path / "beta.png")

    figure = analysis.plot_objectives(runs, out=tmp_path / "objectives.png")
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["dpo", "simpo"]
    assert_png(tmp_path / "objectives.png")


def test_run_curves_skip_absent_panels(tmp_path: Path) -> None:
    sft = write_run(
        tmp_path / "sft",
        0.1,
        0,
        0.5,
        algo_choice="sft",
        metrics="epoch,step,train/loss,val/loss\n0,0,2.0,\n0,1,,1.5\n",
    )
    assert analysis.plot_run_curves(sft) == sft / "curves.png"
    assert_png(sft / "curves.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.csv").write_text("epoch,step\n")
    assert analysis.plot_run_curves(empty) is None
    assert not (empty / "curves.png").exists()


def test_curves_failure_never_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(run_dir: Path) -> None:
        raise RuntimeError("no display")

    monkeypatch.setattr(analysis, "plot_run_curves", broken)
    with caplog.at_level(logging.WARNING):
        write_curves(tmp_path)
    assert "could not write" in caplog.text and "no display" in caplog.text


def test_every_run_writes_curves_png(tmp_path: Path) -> None:
    run(compose_config(["trainer.max_steps=2", "trainer.limit_val_batches=1"], run_dir=tmp_path))
    assert_png(tmp_path / "curves.png")
    history = analysis.load_history(tmp_path)
    assert {"train/loss", "val/loss", "train/rewards/accuracies", "val/logps/chosen"} <= set(
        history["metric"]
    )
    runs = analysis.load_runs(tmp_path)
    assert runs.loc[0, "objective"] == "dpo"  # compose_config has no hydra.yaml: from algo.loss (dpo_loss)
    assert runs.loc[0, "trainer.max_steps"] == 2
