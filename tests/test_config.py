"""The Hydra config tree: every option composes, typed schemas reject bad values, the CLI explains itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from rlhf_lab.config import config_group_dirs
from rlhf_lab.errors import ConfigError
from rlhf_lab.train import build
from tests.conftest import CONF_DIR, compose_config

REPO = Path(__file__).resolve().parents[1]
CONF = Path(CONF_DIR)
# Hydra's own config (conf/hydra/help) is not a group a run selects.
GROUPS = [p.name for p in config_group_dirs(CONF)]
# hparams_search needs the optuna sweeper plugin (the hpo extra): tests/test_multirun.py composes it.
OPTIONS = [
    (group, path.stem)
    for group in GROUPS
    if group != "hparams_search"
    for path in sorted((CONF / group).glob("*.yaml"))
]

# Required (``???``) keys of some options, and a dummy value for each: composing must not need the file.
DUMMY_REQUIRED = {
    "model.name_or_path": "some-org/some-model",
    "teacher.name_or_path": "some-org/some-teacher",
    "data.source.train_path": "data/train.jsonl",
    "data.source.name": "some-org/some-dataset",
    "strategy.config_path": "ds_config.json",
}


def config_error(error: BaseException) -> ConfigError:
    """The `ConfigError` in an exception chain (Hydra's instantiate wraps what a constructor raises)."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ConfigError):
            return current
        current = current.__cause__ or current.__context__
    raise AssertionError(f"no ConfigError in the chain of {error!r}")


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    # A mapping keyed by dotted names (leaderboard.grid.dpo: {algo.beta: [...]}) is compared whole.
    if isinstance(node, dict) and not any("." in str(key) for key in node):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _option_values(group: str, option: str) -> dict[str, Any]:
    """The option file's own values as dotted keys of the composed config (``defaults`` left out)."""
    path = CONF / group / f"{option}.yaml"
    text = path.read_text(encoding="utf-8")
    own = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    assert isinstance(own, dict)
    defaults = own.pop("defaults", None) or []
    mirrored = [
        d for d in defaults if isinstance(d, str) and d.endswith("@_here_") and not d.startswith("/schema/")
    ]
    if not own and len(mirrored) == 1:
        # An option that is another group's option (teacher=tiny is model=tiny): that file's values, here.
        other_group, other_option = mirrored[0].removesuffix("@_here_").strip("/").split("/")
        return {
            f"{group}.{key.removeprefix(other_group + '.')}": value
            for key, value in _option_values(other_group, other_option).items()
        }
    package = "" if "@package _global_" in text else group
    return {f"{package}.{key}" if package else key: value for key, value in _leaves(own)}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group: str, option: str) -> None:
    cfg = compose_config([f"{group}={option}"], tiny=False)
    missing = OmegaConf.missing_keys(cfg)
    assert missing <= set(DUMMY_REQUIRED), f"required keys without a dummy in this test: {missing}"
    if missing:
        cfg = compose_config(
            [f"{group}={option}", *(f"{key}={DUMMY_REQUIRED[key]}" for key in sorted(missing))], tiny=False
        )
    assert OmegaConf.missing_keys(cfg) == set()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    assert {"algo", "model", "adapter", "data", "optim", "trainer", "logger", "seed"} <= set(resolved)

    # The option's own values are what the run gets (nothing later in the defaults list overrides them).
    values = _option_values(group, option)
    assert values or option == "none", f"conf/{group}/{option}.yaml sets nothing"
    for key, expected in values.items():
        if isinstance(expected, str) and "${" in expected:
            continue  # interpolations resolve to other keys' values
        actual = OmegaConf.select(cfg, key, throw_on_missing=False)
        if isinstance(actual, DictConfig | ListConfig):
            actual = OmegaConf.to_container(actual)
        if expected == "???":
            assert key in missing
            continue
        assert actual == expected, f"{key}: conf/{group}/{option}.yaml sets {expected!r}, composed {actual!r}"
        if key.endswith("._target_") or key == "_target_":
            assert callable(get_object(actual)), actual


def test_debug_fast_dev_run_disables_export() -> None:
    """A @package _global_ option overrides the primary config's own keys."""
    cfg = compose_config(["debug=fast_dev_run"], tiny=False)
    assert cfg.trainer.fast_dev_run is True
    assert cfg.export.enabled is False
    assert compose_config([], tiny=False).export.enabled is True


def test_experiment_overrides_groups_and_values() -> None:
    cfg = compose_config(["experiment=dpo_ultrafeedback_mistral7b"], tiny=False)
    assert cfg.model.name_or_path == "mistralai/Mistral-7B-v0.1"
    assert cfg.model.gradient_checkpointing is True
    assert cfg.adapter.use_dora is False
    assert (cfg.adapter.target_modules, cfg.adapter.r, cfg.adapter.alpha) == ("all", 16, 32)
    assert cfg.data.source.name == "HuggingFaceH4/ultrafeedback_binarized"
    assert (cfg.data.batch_size, cfg.trainer.accumulate_grad_batches) == (2, 16)
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")
    assert cfg.optim.lr == pytest.approx(5.0e-6)


# --- composition errors name the key -------------------------------------------------------------


def _composition_error(*overrides: str) -> str:
    with pytest.raises(ConfigCompositionException) as caught:
        compose_config(overrides, tiny=False)
    return f"{caught.value}\n{caught.value.__cause__}"


def test_wrongly_typed_value_fails_at_composition() -> None:
    message = _composition_error("algo.beta=abc")
    assert "algo.beta=abc" in message
    assert "Value 'abc' of type 'str' could not be converted to Float" in message
    assert "full_key: algo.beta" in message


def test_unknown_key_fails_at_composition() -> None:
    message = _composition_error("algo.betaa=1")
    assert "Could not override 'algo.betaa'" in message
    assert "Key 'betaa' not in 'AlgoDpoSchema'" in message


def test_key_of_another_option_fails_at_composition() -> None:
    message = _composition_error("algo=sft", "algo.beta=0.1")
    assert "Could not override 'algo.beta'" in message
    assert "Key 'beta' not in 'AlgoSftSchema'" in message


def test_unknown_option_fails_at_composition() -> None:
    message = _composition_error("algo=trpo")
    assert "Could not find 'algo/trpo'" in message
    assert "dpo" in message and "sft" in message


# --- errors at instantiation name the key and what is allowed ------------------------------------


def test_unknown_loss_type_lists_the_allowed_values(make_config) -> None:
    with pytest.raises(Exception) as caught:
        build(make_config("algo.loss_type=nope"))
    message = str(config_error(caught.value))
    assert message.startswith("algo.loss_type='nope' is not supported; choose one of: ")
    allowed = message.split("choose one of: ", 1)[1].split(", ")
    assert {"sigmoid", "ipo", "hinge", "robust"} <= set(allowed)


def test_adapter_off_reference_needs_an_adapter(make_config) -> None:
    with pytest.raises(Exception) as caught:
        build(make_config("algo.reference=adapter_off", "adapter=full"))
    message = str(config_error(caught.value))
    assert "algo.reference=adapter_off" in message
    assert "adapter=lora" in message and "adapter=full" in message


def test_unknown_reference_mode(make_config) -> None:
    with pytest.raises(Exception) as caught:
        build(make_config("algo.reference=frozen"))
    message = str(config_error(caught.value))
    assert message.startswith("algo.reference='frozen' is not supported; choose one of: auto, ")
    assert "copy" in message and "precomputed" in message


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """``--help`` and ``--cfg job``, started together (each process spends seconds importing Lightning)."""
    env = {**os.environ, "RLHF_LAB_CACHE": os.environ["RLHF_LAB_CACHE"]}
    run_dir = tmp_path_factory.mktemp("cli")
    commands = {
        "help": ["--help"],
        "cfg": ["--cfg", "job", "algo=dpo", "adapter=lora", f"hydra.run.dir={run_dir}"],
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "rlhf_lab", *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=180)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results


def test_help_lists_groups_and_options(cli_output) -> None:
    result = cli_output["help"]
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("== Config groups (group=option) ==", 1)[1].split("==", 1)[0]
    listed = dict(re.findall(r"^(\S+): (.+)$", section, flags=re.MULTILINE))
    user_groups = {group: options.split(", ") for group, options in listed.items()}
    expected = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in GROUPS}
    assert user_groups == expected
    assert {
        "algo",
        "model",
        "adapter",
        "data",
        "strategy",
        "quant",
        "logger",
        "trainer",
        "experiment",
        "debug",
    } <= set(user_groups)
    assert (
        "dpo" in user_groups["algo"] and "tiny" in user_groups["model"] and "lora" in user_groups["adapter"]
    )
    # The internal typed schemas (schema/<group>) the options build on are not listed: they are not options.
    assert "schema" not in result.stdout.split("== Composed config ==")[0]
    assert "python -m rlhf_lab --cfg job" in result.stdout
    assert "beta: 0.1" in result.stdout  # the composed config follows


def test_cfg_job_prints_the_composed_config(cli_output) -> None:
    result = cli_output["cfg"]
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.algo.beta == 0.1
    assert printed.algo.loss_type == "sigmoid"
    assert printed.algo._target_ == "rlhf_lab.objectives.PairwiseObjective"
    assert printed.algo.loss == "rlhf_lab.losses.dpo_loss"
    assert printed.adapter._target_ == "rlhf_lab.models.LoraAdapter"
    assert printed.model._target_ == "rlhf_lab.models.TinyModel"
    assert "beta: 0.1\n" in result.stdout
    assert "hydra" not in printed  # job config only
