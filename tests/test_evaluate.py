"""python -m rlhf_lab.evaluate: the run's own held-out numbers, reproduced from its saved weights, plus samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf_lab.evaluate import EvalOptions, answer_metrics, evaluate, load_config, parse_args
from rlhf_lab.train import run
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[1]
SHORT = ["trainer.max_steps=4", "trainer.limit_val_batches=1"]


def test_parse_args_splits_options_from_overrides() -> None:
    options = parse_args(
        ["run_dir=out/r", "samples=2", "validate=false", "data.eval_batch_size=4", "data=jsonl"]
    )
    assert options.run_dir == Path("out/r")
    assert (options.samples, options.validate, options.weights) == (2, False, "auto")
    assert options.overrides == ["data.eval_batch_size=4", "data=jsonl"]
    with pytest.raises(ValueError, match="run_dir"):
        parse_args(["samples=2"])


def test_load_config_applies_overrides_to_the_saved_config(tmp_path: Path) -> None:
    OmegaConf.save(compose_config(["algo.beta=0.3"], run_dir=Path("/elsewhere")), tmp_path / "config.yaml")
    cfg = load_config(tmp_path, ["data.eval_batch_size=4", "data=jsonl", "data.source.eval_path=x.jsonl"])
    assert cfg.algo.beta == 0.3  # from the run
    assert cfg.paths.run_dir == str(tmp_path)  # the run moved
    assert cfg.data.source._target_.endswith("LocalFiles")  # the group swapped
    assert cfg.data.source.eval_path == "x.jsonl"
    assert cfg.data.eval_batch_size == 4
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_config(tmp_path / "nothing")


def test_runs_from_before_the_pairwise_merge_still_load(tmp_path: Path) -> None:
    """A run directory written when SimPO was its own class (``_target_: rlhf_lab.objectives.SimPO``)."""
    from rlhf_lab.train import build

    cfg = compose_config(["algo=simpo", "algo.gamma=0.7"], run_dir=tmp_path)
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    saved = OmegaConf.load(tmp_path / "config.yaml")
    saved.algo._target_ = "rlhf_lab.objectives.SimPO"
    del saved.algo["loss"]
    OmegaConf.save(saved, tmp_path / "config.yaml")
    loaded = load_config(tmp_path)
    assert loaded.algo._target_ == "rlhf_lab.objectives.PairwiseObjective"
    assert loaded.algo.loss == "rlhf_lab.losses.simpo_loss"
    objective, _, _ = build(loaded)
    assert objective.name == "simpo_loss" and objective.loss_kwargs["gamma"] == 0.7


@pytest.mark.slow
def test_evaluate_cli_reproduces_the_runs_held_out_accuracy(tmp_path: Path) -> None:
    run(compose_config(SHORT, run_dir=tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_lab.evaluate", f"run_dir={tmp_path}", "samples=3", "max_new_tokens=8"],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # Same data, same weights (the export), same reference: the same numbers.
    for key in ("val/rewards/accuracies", "val/rewards/margins", "val/loss"):
        assert metrics[key] == pytest.approx(summary[key], abs=1e-5), key
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3
    assert all(s["completion"].strip() and 0 < s["new_tokens"] <= 8 for s in samples)
    assert all(s["prompt"] and s["chosen"] and s["rejected"] for s in samples)
    assert metrics["generation/samples"] == 3
    assert metrics["generation/mean_new_tokens"] == pytest.approx(sum(s["new_tokens"] for s in samples) / 3)
    assert "val/rewards/accuracies" in result.stdout and "completion:" in result.stdout


@pytest.mark.slow
def test_evaluate_reward_model_from_its_checkpoint(tmp_path: Path) -> None:
    run(compose_config(["algo=reward", "optim.lr=2e-3", *SHORT], run_dir=tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    metrics = evaluate(EvalOptions(run_dir=tmp_path, weights="checkpoint", samples=2))
    # Pairwise accuracy of the scores; the checkpoint of the last validation holds the final weights.
    assert metrics["val/rewards/accuracies"] == pytest.approx(summary["val/rewards/accuracies"], abs=1e-6)
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2
    assert all(
        isinstance(s["chosen_score"], float) and isinstance(s["rejected_score"], float) for s in samples
    )
    assert "generation/mean_new_tokens" not in metrics  # a reward model does not generate


def test_evaluate_is_a_hydra_app_that_writes_nothing_and_names_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rlhf_lab.errors import ConfigError
    from rlhf_lab.evaluate import main

    options = parse_args(["run_dir=r", "split=test", "max_new_tokens=8", "algo.reference=copy"])
    assert options.config_overrides == ["data.eval_split=test", "algo.reference=copy"]
    assert options.max_new_tokens == 8
    # Hydra's grammar and typing for the app's own options; the error names the key.
    with pytest.raises(Exception, match="samples"):
        parse_args(["run_dir=r", "samples=many"])
    # A run-config override whose key the run's config does not have is a typo, not a new key.
    OmegaConf.save(compose_config(run_dir=tmp_path), tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"sample=3: 'sample' is neither an option"):
        load_config(tmp_path, ["sample=3"])
    assert load_config(tmp_path, ["+note=x"]).note == "x"

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["--cfg", "job", f"run_dir={tmp_path}", "data.eval_batch_size=4"]) == {}
    assert f"run_dir: {tmp_path}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["samples=2"])
    assert exited.value.code == 2
    assert "error: run_dir is required" in capsys.readouterr().err
    assert list(cwd.iterdir()) == []  # no outputs/, no .hydra/, no log file


def test_group_overrides_compose_inside_another_hydra_app(tmp_path: Path) -> None:
    """`python -m rlhf_lab.evaluate run_dir=... data=synthetic_rl`: the evaluate app's own Hydra knows only its
    options, so the package's groups are composed beside it, and the app's Hydra is put back after."""
    from hydra import compose, initialize_config_dir

    from rlhf_lab.config import compose_package_config

    (tmp_path / "app.yaml").write_text("option: 7\n")
    with initialize_config_dir(version_base="1.3", config_dir=str(tmp_path)):
        composed = compose_package_config(["data=synthetic_rl", "algo=grpo"])
        assert composed.algo.advantage_estimator == "grpo"
        assert OmegaConf.select(composed, "hydra.runtime.choices.data") in (None, "synthetic_rl")
        assert compose("app").option == 7


def test_answer_metrics_score_greedy_answers_on_suite_tasks_only() -> None:
    """On a suite task each greedy sample is checked against its (held-out, so right) chosen answer."""
    suite = {"_target_": "rlhf_lab.data.SuiteTask", "task": "length_bias", "rows": "pairs"}
    cfg = OmegaConf.create({"data": {"eval_split": "test", "source": suite}})
    samples = [
        {"completion": "It is a tool, if you ask me.", "chosen": "It is a tool."},
        {"completion": "It is It is", "chosen": "It is an animal."},
    ]
    # Right, then degenerate (no answer); 8 and 4 words.
    assert answer_metrics(cfg, samples) == {"test/generation_accuracy": 0.5, "test/answer_length": 6.0}
    assert [sample["correct"] for sample in samples] == [True, False]
    cfg.data.source.task, cfg.data.eval_split = "control", "val"
    assert answer_metrics(cfg, samples[:1]) == {"val/generation_accuracy": 1.0}
    # Other data has no verifiable answers.
    synthetic = OmegaConf.create({"data": {"source": {"_target_": "rlhf_lab.data.SyntheticPreferences"}}})
    assert answer_metrics(synthetic, samples) == {}
