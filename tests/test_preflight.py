"""The preflight: an unavailable model stops the run in one line, a run too large for its device stops with the
estimate, and the estimate is close to the measured peak of real training steps."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from rlhf_lab.errors import ConfigError
from rlhf_lab.preflight import FirstRetryOnly, availability, estimate, locate_models, plan_of, preflight

REPO = Path(__file__).resolve().parents[1]

# Mistral-7B-v0.1's config.json (the fields that size it).
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
MISTRAL_7B_PARAMS = 7_241_732_096


@pytest.fixture
def mistral_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local directory holding only Mistral-7B's config.json: sized like the real model, no weights (and no GPU
    seen, so the messages are the same on every machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    directory = tmp_path / "mistral-7b"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(MISTRAL_7B))
    return directory


def test_an_unavailable_model_stops_the_cli_in_one_error_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}
    done = subprocess.run(
        [sys.executable, "-m", "rlhf_lab", "algo=simpo", "model=mistral7b", "strategy=zero3",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, cwd=REPO, check=False,
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "Retrying" not in done.stderr + done.stdout
    assert errors[0].startswith(
        "error: model mistralai/Mistral-7B-v0.1 (model.name_or_path) is not available"
    )
    assert "HF_HUB_OFFLINE=1 is set" in errors[0]
    assert errors[0].endswith("set model.name_or_path=DIR")


def test_a_missing_local_directory_is_named(make_config) -> None:
    cfg = make_config("model=hub", "model.name_or_path=/no/such/model")
    with pytest.raises(ConfigError, match=r"model.name_or_path='/no/such/model': no such directory"):
        preflight(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("algo=seqkd", "teacher=hub", "teacher.name_or_path=/nope/x"),
            "teacher.name_or_path='/nope/x': no such directory (and not a hub id)",
        ),
        (
            ("algo=grpo", "data=synthetic_rl", "algo.reward_models=[/nope]"),
            "algo.reward_models[0]='/nope': no such directory (and not a hub id)",
        ),
        (
            ("algo=ppo", "data=synthetic_rl", "algo.value_model=/nope/v"),
            "algo.value_model='/nope/v': no such directory (and not a hub id)",
        ),
    ],
    ids=["teacher", "reward_model", "value_model"],
)
def test_a_missing_companion_model_directory_is_named(make_config, overrides, message) -> None:
    with pytest.raises(ConfigError) as raised:
        preflight(make_config(*overrides))
    assert str(raised.value) == message


def test_a_model_too_large_for_the_device_stops_with_the_estimate(make_config, mistral_dir: Path) -> None:
    cfg = make_config(
        "model=mistral7b",
        f"model.name_or_path={mistral_dir}",
        "data.batch_size=2",
        "data.max_length=512",
        "preflight.device_memory_gib=40",
    )
    with pytest.raises(ConfigError) as raised:
        preflight(cfg)
    message = str(raised.value)
    assert message.startswith(
        f"{mistral_dir} (7.24B parameters in bfloat16) does not fit: the run needs about 88.48 GiB, but the "
        "device has 40.00 GiB (preflight.device_memory_gib). Estimate: "
    )
    # bf16 weights, gradients and AdamW moments (2 + 2 + 4 bytes/param), DPO's frozen copy as reference, the
    # activations of 4 sequences x 512 tokens, and the CPU runtime (80 MiB + 0.35 x the weights).
    assert (
        "weights 13.49 GiB + gradients 13.49 GiB + optimiser 26.98 GiB + reference 13.49 GiB + activations "
        "16.24 GiB + runtime 4.80 GiB = 88.48 GiB" in message
    )
    assert (
        "What would fit: adapter=lora (34.60 GiB); adapter=lora quant=nf4 (21.70 GiB); as configured, "
        in message
    )
    assert message.endswith("(preflight.memory_check=false skips this check)")


def test_a_run_close_to_the_device_memory_is_warned_about(make_config, mistral_dir: Path, caplog) -> None:
    cfg = make_config(
        "model=mistral7b",
        f"model.name_or_path={mistral_dir}",
        "data.batch_size=2",
        "data.max_length=512",
        "preflight.device_memory_gib=95",
        "preflight.disk_check=false",  # its checkpoints would not fit this disk (test_environment_checks.py)
    )
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.preflight"):
        preflight(cfg)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        f"{mistral_dir} (7.24B parameters in bfloat16) needs about 88.48 GiB of 95.00 GiB (93%)"
    )


def test_without_a_gpu_the_machine_ram_is_the_budget(make_config, mistral_dir: Path, monkeypatch) -> None:
    import rlhf_lab.preflight as preflight_module

    monkeypatch.setattr(preflight_module, "available_ram", lambda: 24 * 1024**3)
    cfg = make_config(
        "algo=simpo", "model=mistral7b", f"model.name_or_path={mistral_dir}", "preflight.disk_check=false"
    )
    with pytest.raises(ConfigError, match="no GPU \\(CUDA\\) is available, so it would train on the CPU, and "
                       "this machine has 24.00 GiB of RAM available"):  # fmt: skip
        preflight(cfg)
    cfg.preflight.memory_check = False
    preflight(cfg)  # the model is available: only the memory check stopped it


def test_the_estimate_follows_the_run_settings(make_config, mistral_dir: Path) -> None:
    def parts(*overrides: str) -> dict[str, float]:
        cfg = make_config("model=mistral7b", f"model.name_or_path={mistral_dir}", *overrides)
        plan = plan_of(cfg, locate_models(cfg))
        assert plan is not None and plan.policy.params == MISTRAL_7B_PARAMS
        return {k: round(v / 1024**3, 2) for k, v in estimate(plan).parts.items()}

    dpo = parts()
    assert dpo["reference"] == dpo["weights"] == 13.49
    assert "reference" not in parts("algo=simpo")  # reference-free
    assert "reference" not in parts("algo=dpo", "algo.reference=precomputed")
    lora = parts(
        "adapter=lora"
    )  # the reference is the base with adapters off; r=8 on q/k/v: 4,718,592 params
    assert "reference" not in lora and lora["optimiser"] == round(4_718_592 * 8 / 1024**3, 2) == 0.04
    qlora = parts("adapter=lora", "quant=nf4")
    # 6.98B linear weights at 0.53 byte, 0.26B embeddings and head at 2 bytes, the LoRA factors in fp32.
    assert qlora["weights"] == 3.95
    assert parts("optim=adamw_8bit")["optimiser"] == 13.49  # 2 bytes/param
    zero3 = parts("strategy=zero3", "trainer.devices=4", "trainer.precision=bf16-mixed")
    assert zero3["weights"] == 3.37 and zero3["optimiser"] == 20.23  # fp32 master + moments (12 B) / 4


def test_a_cached_model_loads_offline_when_the_hub_is_unreachable(
    make_config, tmp_path: Path, monkeypatch
) -> None:
    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(MISTRAL_7B))
    (snapshot / "model.safetensors").write_bytes(b"")
    (tmp_path / "hub" / "models--org--model" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--model" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(availability, "ask_hub", lambda source: "the hub cannot be reached (ConnectError)")
    cfg = make_config("model=hub", "model.name_or_path=org/model")
    [located] = locate_models(cfg)
    assert (located.where, located.config_file) == ("cache", snapshot / "config.json")
    assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"


def test_hub_retry_warnings_are_shown_once() -> None:
    retries = FirstRetryOnly()
    records = [
        logging.LogRecord("huggingface_hub.utils._http", logging.WARNING, "", 0, msg, None, None)
        for msg in ("Retrying in 1s [Retry 1/5].", "Retrying in 2s [Retry 2/5].", "HTTP error 500")
    ]
    assert [retries.filter(record) for record in records] == [True, False, True]


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "memory_estimate", REPO / "benchmarks" / "memory_estimate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_estimate_is_within_48_mib_of_the_tiny_models_peak(tmp_path: Path) -> None:
    # The tiny model's peak is almost all runtime (loops, data, pages of the libraries touched while
    # training), which varies by machine: the same run measured 121.5 MB here and 152 MB on CI. So the
    # bound is absolute; the mid-size test below checks the model-dependent terms to 20%.
    result = load_benchmark().measure("tiny", steps=2, cache_dir=str(tmp_path / "cache"))
    assert result["params"] == 139_584
    assert abs(result["estimate"] - result["measured"]) <= 48 * 2**20, result


@pytest.mark.slow
def test_the_estimate_is_within_20_percent_of_a_mid_size_models_peak(tmp_path: Path) -> None:
    result = load_benchmark().measure(
        "mid", steps=2, cache_dir=str(tmp_path / "cache"), overrides=("data.batch_size=1",)
    )
    assert result["params"] == 136_340_480
    assert abs(result["estimate"] / result["measured"] - 1) <= 0.2, result
