"""W&B sweeps: the YAMLs are valid and compose, the offline runner drives them, W&B logs a flat config."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rlhf_lab import sweep
from rlhf_lab.loggers import flatten_config
from rlhf_lab.train import run
from tests.conftest import CONF_DIR, compose_config

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
HYDRA_COMMAND = ["${env}", "${interpreter}", "-m", "rlhf_lab", "${args_no_hyphens}"]
SHORT = ["trainer.max_steps=2", "trainer.limit_val_batches=1"]
TINY = [
    "data.source.num_train=64",
    "data.source.num_eval=32",
    "trainer.max_steps=4",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "export.enabled=false",
]


def sample_value(spec: dict[str, Any]) -> Any:
    """A value the search can propose: the constant, the first listed value, or the range's minimum."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][0]
    return spec["min"]


# --- the YAMLs ---------------------------------------------------------------------------------------------


def test_the_sweeps_cover_the_objectives_with_every_search_method() -> None:
    names = {path.stem for path in SWEEP_FILES}
    assert names == {
        "dpo_beta",
        "dpo_sft_beta",
        "simpo_beta_gamma",
        "orpo_lambda",
        "kto_beta",
        "cpo_alpha",
        "grpo_beta_epsilon_high",
        "ppo_kl_vf",
    }
    methods = {yaml.safe_load(path.read_text())["method"] for path in SWEEP_FILES}
    assert methods == {"grid", "random", "bayes"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_yaml_is_a_valid_wandb_sweep_running_rlhf_lab(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    assert sweep._sweeps().schema_violations_from_proposed_config(config) == []
    assert config["command"] == HYDRA_COMMAND
    # Preference objectives rank pairs held out; online RL maximises the held-out reward of its completions.
    online = config["parameters"]["algo"]["value"] in ("grpo", "rloo", "ppo")
    assert config["metric"] == {
        "name": "val/reward" if online else "val/rewards/accuracies",
        "goal": "maximize",
    }
    assert config["early_terminate"] == {"type": "hyperband", "min_iter": 2}
    assert config["parameters"]["logger"] == {"value": "wandb"}
    assert config["parameters"]["algo"]["value"] == path.stem.split("_")[0]
    # The W&B agent proposes from it locally as well.
    proposal = sweep._sweeps().next_run(config, [])
    assert set(proposal.config) == set(config["parameters"])


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_sweep_parameter_is_a_hydra_override_of_the_real_config(path: Path) -> None:
    parameters = yaml.safe_load(path.read_text())["parameters"]
    values = {name: sample_value(spec) for name, spec in parameters.items()}
    overrides = [f"{name}={sweep.format_value(value)}" for name, value in values.items()]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    for name, value in values.items():
        if (Path(CONF_DIR) / name).is_dir():  # a config group: algo=simpo, logger=wandb
            assert cfg.hydra.runtime.choices[name] == value
        else:
            assert OmegaConf.select(cfg, name, throw_on_missing=True) == value, name


def test_an_invalid_sweep_yaml_is_refused_with_the_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sideways\nparameters:\n  algo.beta:\n    values: [0.1]\n")
    with pytest.raises(sweep.SweepConfigError, match="sideways"):
        sweep.load_sweep_config(bad)


# --- the offline runner, with a stand-in for the training process -------------------------------------------


def test_format_value_spells_values_as_hydra_reads_them() -> None:
    assert sweep.format_value(0.05) == "0.05"
    assert sweep.format_value("simpo") == "simpo"
    assert sweep.format_value(None) == "null"
    assert sweep.format_value(True) == "true"
    assert sweep.format_value([1, "sigmoid", 0.5]) == "[1,sigmoid,0.5]"


def test_expand_command_replaces_the_agent_macros(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_EXTRA", "seed=7")
    params = {"algo": "dpo", "algo.beta": 0.1}
    assert sweep.expand_command(HYDRA_COMMAND, params) == [
        sys.executable,
        "-m",
        "rlhf_lab",
        "algo=dpo",
        "algo.beta=0.1",
    ]
    assert sweep.expand_command(["${interpreter}", "${program}", "${args_append_hydra}"], params, "x.py") == [
        sys.executable,
        "x.py",
        "+algo=dpo",
        "+algo.beta=0.1",
    ]
    assert sweep.expand_command(["${envvar:SWEEP_EXTRA}"], params) == ["seed=7"]
    with pytest.raises(sweep.SweepConfigError, match=r"\$\{args\}"):
        sweep.expand_command(["${interpreter}", "train.py", "${args}"], params)


def test_trial_command_forces_csv_unless_a_logger_is_asked_for(tmp_path: Path) -> None:
    config = sweep.load_sweep_config(REPO / "sweeps" / "dpo_beta.yaml")
    params = {"algo": "dpo", "logger": "wandb", "algo.beta": 0.3}
    command = sweep.trial_command(config, params, ["trainer.max_steps=20"], tmp_path / "trial_0")
    assert command == [
        sys.executable,
        "-m",
        "rlhf_lab",
        "algo=dpo",
        "logger=wandb",
        "algo.beta=0.3",
        "logger=csv",  # after the sweep's logger=wandb: last wins
        "trainer.max_steps=20",
        f"hydra.run.dir={tmp_path / 'trial_0'}",
    ]
    command = sweep.trial_command(config, params, ["logger=wandb"], tmp_path / "trial_0")
    assert "logger=csv" not in command
    assert command[-2:] == ["logger=wandb", f"hydra.run.dir={tmp_path / 'trial_0'}"]


class FakeTrainer:
    """Stands in for `run_process`: writes the summary.json a run with these overrides would, no training."""

    def __init__(self, score: Any, fail_when: Any = lambda overrides: False) -> None:
        self.score = score
        self.fail_when = fail_when
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str], log_file: Path) -> int:
        self.commands.append(command)
        overrides = dict(part.split("=", 1) for part in command if "=" in part)
        run_dir = Path(overrides["hydra.run.dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        log_file.write_text("fake run\n")
        if self.fail_when(overrides):
            return 1
        summary = {"val/rewards/accuracies": self.score(overrides), "val/loss": 0.5, "run/complete": True}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return 0


def test_grid_runs_every_point_once_then_stops(tmp_path: Path) -> None:
    config = sweep.load_sweep_config(REPO / "sweeps" / "dpo_beta.yaml")
    fake = FakeTrainer(score=lambda o: 1.0 - float(o["algo.beta"]))
    trials = sweep.run_sweep(
        config, tmp_path, ["trainer.max_steps=3"], count=100, runner=fake, echo=lambda _: None
    )
    assert [t.params["algo.beta"] for t in trials] == [0.01, 0.05, 0.1, 0.3, 0.5]
    assert [t.metric for t in trials] == pytest.approx([0.99, 0.95, 0.9, 0.7, 0.5])
    assert all(t.state == "finished" and t.run_dir == tmp_path / f"trial_{t.index}" for t in trials)
    assert all("trainer.max_steps=3" in command for command in fake.commands)
    table = pd.read_csv(tmp_path / "summary.csv")
    assert list(table.columns) == [
        "trial",
        "state",
        "algo.beta",
        "val/rewards/accuracies",
        "seconds",
        "run_dir",
    ]
    assert table["algo.beta"].tolist() == [0.01, 0.05, 0.1, 0.3, 0.5]
    assert sweep.best_trial(trials, config).index == 0
    # What ran is kept beside the trials, still a valid sweep config.
    assert sweep.load_sweep_config(tmp_path / "sweep.yaml") == config


def test_a_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    config = sweep.load_sweep_config(REPO / "sweeps" / "dpo_beta.yaml")
    fake = FakeTrainer(score=lambda o: 0.75, fail_when=lambda o: o["algo.beta"] == "0.05")
    lines: list[str] = []
    trials = sweep.run_sweep(config, tmp_path, count=3, runner=fake, echo=lines.append)
    assert [(t.state, t.metric, t.returncode) for t in trials] == [
        ("finished", 0.75, 0),
        ("failed", None, 1),
        ("finished", 0.75, 0),
    ]
    assert (
        f"trial 1: failed (exit 1): algo.beta=0.05; its output is in {tmp_path / 'trial_1' / 'trial.log'}"
        in [line.rsplit(" (", 1)[0] for line in lines]
    )
    table = pd.read_csv(tmp_path / "summary.csv")
    assert table["state"].tolist() == ["finished", "failed", "finished"]
    assert table["val/rewards/accuracies"].isna().tolist() == [False, True, False]


class KilledAt(FakeTrainer):
    """A `FakeTrainer` whose sweep is killed while trial ``index`` trains (after its first checkpoint)."""

    def __init__(self, index: int, score: Any) -> None:
        super().__init__(score)
        self.index = index

    def __call__(self, command: list[str], log_file: Path) -> int:
        if f"trial_{self.index}" in log_file.parent.name:
            (log_file.parent / "checkpoints").mkdir(parents=True)
            (log_file.parent / "summary.json").write_text('{"val/rewards/accuracies": 0.9, "run/comp')
            raise KeyboardInterrupt  # the parent goes mid-trial; a half-written summary.json stays
        return super().__call__(command, log_file)


def test_a_killed_sweep_run_again_keeps_finished_trials_and_resumes_the_interrupted_one(
    tmp_path: Path,
) -> None:
    config = sweep.load_sweep_config(REPO / "sweeps" / "dpo_beta.yaml")

    def score(overrides: dict[str, str]) -> float:
        return 1.0 - float(overrides["algo.beta"])

    whole = sweep.run_sweep(
        config, tmp_path / "whole", count=4, runner=FakeTrainer(score), echo=lambda _: None
    )
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(config, tmp_path / "cut", count=4, runner=KilledAt(2, score), echo=lambda _: None)
    again = FakeTrainer(score)
    lines: list[str] = []
    trials = sweep.run_sweep(config, tmp_path / "cut", count=4, runner=again, echo=lines.append)
    # Trials 0 and 1 kept, 2 resumed (its half-written summary.json never counted), 3 trained.
    assert [command[-1] for command in again.commands] == [
        "resume=true",
        f"hydra.run.dir={tmp_path / 'cut' / 'trial_3'}",
    ]
    assert lines[0] == "trial 0: algo.beta=0.01 (finished earlier, kept)"
    assert [(t.state, t.metric) for t in trials] == [(t.state, t.metric) for t in whole]
    columns = ["trial", "state", "algo.beta", "val/rewards/accuracies"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "cut" / "summary.csv")[columns],
        pd.read_csv(tmp_path / "whole" / "summary.csv")[columns],
    )
    assert not (tmp_path / "cut" / ".sweep.lock").exists()


def test_a_sweep_yaml_that_does_not_parse_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: grid\nparameters:\n  algo.beta: {values: [0.1, 0.2]\n")
    with pytest.raises(
        sweep.SweepConfigError, match=r"broken.yaml is not valid YAML: .* \(line 4, column 1\)"
    ):
        sweep.load_sweep_config(broken)
    assert sweep.main([str(broken), "--dir", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {broken} is not valid YAML: ")


def test_when_every_trial_fails_the_sweep_says_so_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sweep, "run_process", FakeTrainer(score=lambda o: 0.5, fail_when=lambda o: True))
    code = sweep.main([str(REPO / "sweeps" / "dpo_beta.yaml"), "count=2", f"dir={tmp_path}"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: every trial failed; the first, trial 0, with algo.beta=0.01: exit 1; its "
        f"output is in {tmp_path / 'trial_0' / 'trial.log'}"
    ]


def test_bayes_gets_every_finished_trial_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = sweep.load_sweep_config(REPO / "sweeps" / "simpo_beta_gamma.yaml")
    sweeps = sweep._sweeps()
    seen: list[list[tuple[str, dict[str, float]]]] = []
    real_next_run = sweeps.next_run

    def recording_next_run(sweep_config: dict[str, Any], runs: list[Any]) -> Any:
        seen.append([(str(r.state.value), dict(r.summary_metrics)) for r in runs])
        return real_next_run(sweep_config, runs)

    monkeypatch.setattr(sweeps, "next_run", recording_next_run)
    fake = FakeTrainer(score=lambda o: round(float(o["algo.gamma"]), 3))
    trials = sweep.run_sweep(config, tmp_path, count=4, runner=fake, echo=lambda _: None)
    assert len(trials) == 4 and len(seen) == 4
    metric = "val/rewards/accuracies"
    assert seen[3] == [("finished", {metric: trial.metric}) for trial in trials[:3]]
    for trial in trials:
        assert 2.0 <= trial.params["algo.beta"] <= 10.0 and 0.5 <= trial.params["algo.gamma"] <= 1.5
        assert type(trial.params["algo.beta"]) is float  # not a NumPy scalar


def test_random_search_defaults_to_ten_trials(tmp_path: Path) -> None:
    config = sweep.load_sweep_config(REPO / "sweeps" / "orpo_lambda.yaml")
    trials = sweep.run_sweep(config, tmp_path, runner=FakeTrainer(score=lambda o: 0.5), echo=lambda _: None)
    assert len(trials) == sweep.DEFAULT_COUNT == 10
    assert all(0.05 <= t.params["algo.lambda"] <= 1.0 for t in trials)


def test_cli_prints_the_table_and_writes_summary_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sweep, "run_process", FakeTrainer(score=lambda o: float(o["algo.beta"])))
    yaml_path = str(REPO / "sweeps" / "dpo_beta.yaml")
    code = sweep.main([yaml_path, "--count", "2", "--dir", str(tmp_path), "trainer.max_steps=5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "algo.beta  val/rewards/accuracies" in out
    assert f"best: trial 1 ({tmp_path / 'trial_1'})" in out
    assert len(pd.read_csv(tmp_path / "summary.csv")) == 2
    assert sweep.main([str(tmp_path / "missing.yaml")]) == 2


def test_hydra_style_options_become_the_runners_flags() -> None:
    """count=, dir=, sweep_seed= and sweep= are the runner's; every other key=value (seed= too) a trial's."""
    argv = [
        "count=3",
        "trainer.max_steps=5",
        "sweep=s.yaml",
        "dir=out",
        "sweep_seed=7",
        "seed=1",
        "--count",
        "4",
    ]
    assert sweep.flag_arguments(argv) == [
        "s.yaml",
        "--count",
        "3",
        "trainer.max_steps=5",
        "--dir",
        "out",
        "--seed",
        "7",
        "seed=1",
        "--count",
        "4",
    ]
    assert sweep.flag_arguments(["s.yaml", "+algo.x=1", "hydra.run.dir=d"]) == [
        "s.yaml",
        "+algo.x=1",
        "hydra.run.dir=d",
    ]


def test_cli_takes_key_value_options_like_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeTrainer(score=lambda o: float(o["algo.beta"]))
    monkeypatch.setattr(sweep, "run_process", fake)
    yaml_path = REPO / "sweeps" / "dpo_beta.yaml"
    args = [
        f"sweep={yaml_path}",
        "count=2",
        f"dir={tmp_path}",
        "sweep_seed=0",
        "trainer.max_steps=5",
        "seed=3",
    ]
    assert sweep.main(args) == 0
    assert f"best: trial 1 ({tmp_path / 'trial_1'})" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "summary.csv")["algo.beta"].tolist() == [0.01, 0.05]
    # The trials get the overrides (seed=3 is their training seed), not the runner's options.
    assert all(c[-3:-1] == ["trainer.max_steps=5", "seed=3"] for c in fake.commands)
    assert not any(
        part.startswith(("count=", "dir=", "sweep_seed=", "sweep=")) for c in fake.commands for part in c
    )
    with pytest.raises(SystemExit) as stop:  # argparse's usage error
        sweep.main([str(yaml_path), "count=many"])
    assert stop.value.code == 2


def test_sweep_help_documents_the_key_value_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        sweep.main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert "SWEEP_YAML [count=N] [dir=DIR] [sweep_seed=S] [key=value ...]" in out
    assert "seed=S is the trials' training seed" in out


@pytest.mark.slow
def test_offline_sweep_trains_each_trial_and_records_a_failed_one(tmp_path: Path) -> None:
    """`python -m rlhf_lab.sweep`: beta=-1 fails at config validation, the sweep goes on and trains 0.5."""
    config = yaml.safe_load((REPO / "sweeps" / "dpo_beta.yaml").read_text())
    config["parameters"]["algo.beta"]["values"] = [-1.0, 0.5]
    sweep_yaml = tmp_path / "betas.yaml"
    sweep_yaml.write_text(yaml.safe_dump(config))
    out_dir = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_lab.sweep", str(sweep_yaml), "--dir", str(out_dir), *TINY],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(out_dir / "summary.csv")
    assert table["algo.beta"].tolist() == [-1.0, 0.5]
    assert table["state"].tolist() == ["failed", "finished"]
    assert "algo.beta=-1.0 is out of range" in (out_dir / "trial_0" / "trial.log").read_text()
    assert (
        f"trial 0: failed (exit 2): algo.beta=-1.0; its output is in {out_dir / 'trial_0' / 'trial.log'}"
        in (result.stdout)
    )
    run_config = OmegaConf.load(out_dir / "trial_1" / "config.yaml")
    assert run_config.algo.beta == 0.5 and run_config.trainer.max_steps == 4
    assert "csv" in run_config.logger and "wandb" not in run_config.logger  # the offline default
    summary = json.loads((out_dir / "trial_1" / "summary.json").read_text())
    assert table.loc[1, "val/rewards/accuracies"] == summary["val/rewards/accuracies"]
    assert "best: trial 1" in result.stdout


# --- W&B: the composed config, flat and without secrets -----------------------------------------------------


def test_flatten_config_flattens_and_drops_credentials() -> None:
    config = OmegaConf.create(
        {
            "algo": {"beta": 0.1, "loss_type": ["sigmoid", "hinge"], "max_new_tokens": 8},
            "model": {"name": "tiny", "HF_TOKEN": "hf_abc", "extra": {}},
            "logger": {"wandb": {"project": "p", "api_key": "k", "Secrets": {"a": 1}}},
            "db_password": "pw",
            "lr": "${algo.beta}",
        }
    )
    assert flatten_config(config) == {
        "algo.beta": 0.1,
        "algo.loss_type": ["sigmoid", "hinge"],
        "algo.max_new_tokens": 8,
        "model.name": "tiny",
        "model.extra": {},
        "logger.wandb.project": "p",
        "lr": 0.1,
    }
    assert flatten_config({"a": {"b": 1}}, sep="/") == {"a/b": 1}


def _read_wandb_records(wandb_file: Path) -> list[Any]:
    """The protobuf records of a ``run-*.wandb`` file (LevelDB-log framing after a 7-byte ":W&B" header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = wandb_file.read_bytes()
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if (kind == 0 and length == 0) or position + 7 + length > len(data):
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a FULL chunk or the LAST of several: one whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_offline_config(wandb_file: Path, timeout: float = 60.0) -> dict[str, Any]:
    """The config an offline W&B run logged, once its file is complete (ends with the exit record).

    ``wandb.finish()`` can return before W&B's service process has written the file out, so poll.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = _read_wandb_records(wandb_file)
        except Exception:  # a record still being written
            records = []
        kinds = [record.WhichOneof("record_type") for record in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "exit" in kinds, f"{wandb_file} never completed: {kinds}"
    config: dict[str, Any] = {}
    for record, kind in zip(records, kinds, strict=True):
        updates = {"config": record.config.update, "run": record.run.config.update}.get(kind or "", [])
        config.update({item.key: json.loads(item.value_json) for item in updates})
    return config


def test_wandb_offline_run_logs_the_flat_config_without_secrets(tmp_path: Path, no_wandb_login: None) -> None:
    run_dir = tmp_path / "run"
    overrides = ["logger=wandb", "algo.beta=0.2", "+wandb_api_key=hunter2", *SHORT]
    run(compose_config(overrides, run_dir=run_dir))
    import wandb

    wandb.finish()  # ends the run, as the CLI does at exit
    (wandb_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    config = _wandb_offline_config(wandb_file)
    assert config["algo.beta"] == 0.2
    assert config["trainer.max_steps"] == 2
    assert config["logger.wandb.project"] == "rlhf_lab"
    assert "algo" not in config and "wandb_api_key" not in config
    assert b"hunter2" not in wandb_file.read_bytes()


@pytest.mark.slow
def test_each_job_of_a_multirun_gets_its_own_wandb_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs of a --multirun share a process; Lightning would log the second into the first one's open run."""
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for beta in (0.05, 0.5):
        run(compose_config(["logger=wandb", f"algo.beta={beta}", *SHORT], run_dir=tmp_path / str(beta)))
    wandb.finish()
    for beta in (0.05, 0.5):
        (wandb_file,) = (tmp_path / str(beta) / "wandb").glob("offline-run-*/run-*.wandb")
        assert _wandb_offline_config(wandb_file)["algo.beta"] == beta
