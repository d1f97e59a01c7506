"""Start-up: config errors are one ``error:`` line (exit 2) before any training import, and the schema cache
that makes them fast is never stale. Timings are in benchmarks/startup.py, not here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from rlhf_lab import config
from rlhf_lab.config import CONF_DIR, SchemaSpec, build_schema, generate_schema_specs, schema_specs

REPO = Path(__file__).resolve().parents[1]


def _cli(*commands: list[str], env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """``python -m rlhf_lab <args>`` per command, started together."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "rlhf_lab", *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


@pytest.fixture(scope="module")
def config_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    run_dir = f"hydra.run.dir={tmp_path_factory.mktemp('errors')}"
    commands = {
        "typo": ["algo.betta=0.2"],
        "group_typo": ["algoo.beta=0.2"],
        "wrong_place": ["algo.max_steps=3"],
        "option": ["algo=dpoo"],
        "malformed": ["algo.beta=["],
        "bad_value": ["algo.beta=abc"],
        "cfg_typo": ["--cfg", "job", "algo.betta=0.2"],
        "help_typo": ["--help", "algo.betta=0.2"],
        "far_option": ["algo=foo"],
        "other_algos_key": ["algo.lambda=1"],  # ORPO's, not DPO's
        "wrong_type": ["algo=simpo", "algo.gamma=abc"],
        "seed": ["seed=abc"],
        "ckpt_path": ["ckpt_path=/nonexistent/last.ckpt"],
    }
    results = _cli(*([*args, run_dir] for args in commands.values()))
    return dict(zip(commands, results, strict=True))


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def test_a_key_typo_suggests_the_close_keys_never_plus(config_errors) -> None:
    line = _one_error_line(config_errors["typo"])
    assert line.startswith("error: algo.betta is not a key of algo=dpo; did you mean algo.beta")
    assert "+algo" not in line and "+" not in line
    for name in ("cfg_typo", "help_typo"):  # --cfg job and --help compose too
        assert _one_error_line(config_errors[name]) == line


def test_a_typo_in_the_group_or_the_right_key_in_the_wrong_group(config_errors) -> None:
    assert _one_error_line(config_errors["group_typo"]) == (
        "error: algoo.beta is not a key of the config; did you mean algo.beta?"
    )
    assert _one_error_line(config_errors["wrong_place"]) == (
        "error: algo.max_steps is not a key of algo=dpo; did you mean trainer.max_steps?"
    )


def test_an_unknown_option_names_the_close_ones_then_all_sorted(config_errors) -> None:
    options = ", ".join(sorted(path.stem for path in (CONF_DIR / "algo").glob("*.yaml")))
    assert options.startswith("cpo, cpo_simpo, dpo, gkd, grpo, ")
    assert _one_error_line(config_errors["option"]) == (
        f"error: algo=dpoo is not an option of algo; did you mean algo=dpo? choose one of: {options}"
    )
    assert _one_error_line(config_errors["far_option"]) == (
        f"error: algo=foo is not an option of algo; choose one of: {options}"
    )


def test_a_key_of_another_option_lists_this_options_keys(config_errors) -> None:
    line = _one_error_line(config_errors["other_algos_key"])
    assert line.startswith("error: algo.lambda is not a key of algo=dpo; it has: loss, ")
    assert "beta, loss_type" in line and "lambda" not in line.split("it has: ")[1]


def test_a_malformed_override_and_a_wrong_type_are_one_line(config_errors) -> None:
    assert _one_error_line(config_errors["malformed"]).startswith(
        "error: cannot parse the override 'algo.beta=[': no viable alternative at input '['"
    )
    assert _one_error_line(config_errors["bad_value"]) == (
        "error: cannot apply algo.beta=abc: Value 'abc' of type 'str' could not be converted to Float"
    )
    assert _one_error_line(config_errors["wrong_type"]) == (  # simpo has a gamma: its type is the problem
        "error: cannot apply algo.gamma=abc: Value 'abc' of type 'str' could not be converted to Float"
    )


def test_the_runs_own_keys_are_named_before_training(config_errors) -> None:
    """The root config has no schema: ``seed`` and ``ckpt_path`` are checked by the preflight, before
    Lightning's ``int()`` or a ``FileNotFoundError`` traceback."""
    assert _one_error_line(config_errors["seed"]) == "error: seed='abc' must be an integer (e.g. seed=42)"
    assert _one_error_line(config_errors["ckpt_path"]) == (
        "error: ckpt_path=/nonexistent/last.ckpt does not exist: give a checkpoint file (or a DeepSpeed "
        "checkpoint directory), or resume=true to resume from the run directory's newest checkpoint"
    )


def test_hydra_full_error_still_gives_the_traceback(tmp_path: Path) -> None:
    typo, seed = _cli(
        ["algo.betta=0.2", f"hydra.run.dir={tmp_path / 'a'}"],
        ["seed=abc", f"hydra.run.dir={tmp_path / 'b'}"],
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert typo.returncode == seed.returncode == 1
    assert "Traceback" in typo.stderr and "Traceback" in seed.stderr
    assert "ConfigAttributeError: Key 'betta' not in 'AlgoDpoSchema'" in typo.stderr
    assert "rlhf_lab.errors.ConfigError: seed='abc' must be an integer" in seed.stderr
    assert "error: " not in typo.stderr + seed.stderr


# Training stands in: the run raises what a bug in training would (no Lightning import, no model).
TRAINING_FAILS = """
import runpy, sys, types
from rlhf_lab.config import register_schemas
register_schemas()  # before the stand-ins: a stale schema cache is rebuilt from the real objectives
train = types.ModuleType("rlhf_lab.train")
def fail(cfg):
    raise RuntimeError("a bug in training")
train.train = fail
objectives = types.ModuleType("rlhf_lab.objectives.base")
objectives.NonFiniteError = type("NonFiniteError", (Exception,), {})
sys.modules.update({"rlhf_lab.train": train, "rlhf_lab.objectives": objectives})
sys.modules["rlhf_lab.objectives.base"] = objectives
sys.argv = ["rlhf_lab", *sys.argv[1:]]
runpy.run_module("rlhf_lab", run_name="__main__", alter_sys=True)
"""


def test_an_error_in_training_keeps_its_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", TRAINING_FAILS, f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: a bug in training" in result.stderr
    assert "error: " not in result.stderr


# --- the schema cache ----------------------------------------------------------------------------------------


def _typed(spec: SchemaSpec) -> dict[str, Any]:
    """A schema as Hydra sees it: each key's node type, optional flag and value."""
    node = OmegaConf.structured(build_schema(spec.title, spec.fields))
    keys = {key: node._get_node(key) for key in node}
    return {
        "type": str(OmegaConf.get_type(node)),
        "keys": {
            key: (type(child).__name__, child._is_optional(), child._value()) for key, child in keys.items()
        },
        "yaml": OmegaConf.to_yaml(node),
    }


def _no_generating(*args: Any) -> Any:
    raise AssertionError("generated although the cache is current")


def test_cached_schemas_equal_freshly_generated_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = generate_schema_specs()
    assert schema_specs(CONF_DIR, tmp_path) == fresh  # a miss: generated, then cached
    assert config.schema_cache_file(CONF_DIR, tmp_path).exists()
    monkeypatch.setattr(config, "generate_schema_specs", _no_generating)
    cached = schema_specs(CONF_DIR, tmp_path)
    assert [(s.group, s.name, s.title) for s in cached] == [(s.group, s.name, s.title) for s in fresh]
    assert [_typed(s) for s in cached] == [_typed(s) for s in fresh]
    dpo = next(s for s in cached if (s.group, s.name) == ("algo", "dpo"))
    assert ("beta", float, 0.1) in [(n, a, d) for n, a, d in dpo.fields]
    orpo = next(s for s in cached if (s.group, s.name) == ("algo", "orpo"))
    assert "lambda" in OmegaConf.structured(build_schema(orpo.title, orpo.fields))  # the keyword rename


MY_TARGET = (
    "class Thing:\n    def __init__(self, alpha: float = {alpha}) -> None:\n        self.alpha = alpha\n"
)
MY_OPTION = "defaults:\n  - /schema/thing/{name}@_here_\n  - _self_\n_target_: my_things.Thing\n"


def _write(path: Path, text: str, seconds_ago: float) -> None:
    """Write ``text`` with an mtime ``seconds_ago`` before this process started (`config._STARTED_NS`): a file
    as it was before this (long-lived: a test worker runs for many minutes) process started."""
    path.write_text(text)
    past = config._STARTED_NS / 1e9 - seconds_ago
    os.utime(path, (past, past))


def test_a_changed_source_or_yaml_invalidates_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's module and config dir: editing the module's default, or adding an option, is a miss."""
    code, conf, cache = tmp_path / "code", tmp_path / "conf", tmp_path / "cache"
    (conf / "thing").mkdir(parents=True)
    code.mkdir()
    _write(code / "my_things.py", MY_TARGET.format(alpha="1.0"), seconds_ago=300)
    _write(conf / "thing" / "a.yaml", MY_OPTION.format(name="a"), seconds_ago=300)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "my_things", raising=False)

    def alpha_defaults() -> dict[str, Any]:
        return {s.name: dict((n, d) for n, _, d in s.fields)["alpha"] for s in schema_specs(conf, cache)}

    assert alpha_defaults() == {"a": 1.0}
    written = config.schema_cache_file(conf, cache).read_text()
    assert str(code / "my_things.py") in written  # a module the schemas came from is part of the key
    with monkeypatch.context() as patched:
        patched.setattr(config, "generate_schema_specs", _no_generating)
        assert alpha_defaults() == {"a": 1.0}  # a hit

    _write(code / "my_things.py", MY_TARGET.format(alpha="2.50"), seconds_ago=200)
    monkeypatch.delitem(sys.modules, "my_things")  # as a new process would import it
    assert alpha_defaults() == {"a": 2.5}
    _write(conf / "thing" / "b.yaml", MY_OPTION.format(name="b"), seconds_ago=200)
    assert alpha_defaults() == {"a": 2.5, "b": 2.5}
    with monkeypatch.context() as patched:
        patched.setattr(config, "generate_schema_specs", _no_generating)
        assert alpha_defaults() == {"a": 2.5, "b": 2.5}  # each rebuild was cached


def test_a_file_newer_than_the_process_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a long-lived process holds in memory may predate an edit: it generates, but caches nothing."""
    (tmp_path / "conf" / "thing").mkdir(parents=True)
    (tmp_path / "my_things.py").write_text(MY_TARGET.format(alpha="3.0"))  # written now
    (tmp_path / "conf" / "thing" / "a.yaml").write_text(MY_OPTION.format(name="a"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_things", raising=False)
    (spec,) = schema_specs(tmp_path / "conf", tmp_path / "cache")
    assert ("alpha", float, 3.0) in spec.fields
    assert not config.schema_cache_file(tmp_path / "conf", tmp_path / "cache").exists()


def test_the_cache_key_follows_file_stats(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("x = 1\n")
    key = config.schema_cache_key(tmp_path, [str(module)])
    assert config.schema_cache_key(tmp_path, [str(module)]) == key
    module.write_text("x = 22\n")
    assert config.schema_cache_key(tmp_path, [str(module)]) != key
    module.unlink()
    assert config.schema_cache_key(tmp_path, [str(module)]) != key
