"""Hub datasets through `datasets.load_dataset`, exercised on a local dataset directory (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_lab.train import build
from tests.conftest import compose_config


def ultrafeedback_row(i: int) -> dict:
    """A row shaped like HuggingFaceH4/ultrafeedback_binarized (extra columns included)."""
    prompt = f"Is item {i} an animal or a tool?"
    user = {"role": "user", "content": prompt}
    return {
        "prompt": prompt,
        "prompt_id": f"id{i}",
        "chosen": [user, {"role": "assistant", "content": "It is an animal."}],
        "rejected": [user, {"role": "assistant", "content": "It is a tool."}],
        "messages": [user, {"role": "assistant", "content": "It is an animal."}],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }


@pytest.fixture
def local_hub_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    directory = tmp_path / "ultrafeedback"
    directory.mkdir()
    for split, rows in (("train", range(40)), ("test", range(40, 52))):
        with (directory / f"{split}.jsonl").open("w") as file:
            for i in rows:
                file.write(json.dumps(ultrafeedback_row(i)) + "\n")
    return directory


def test_ultrafeedback_config_reads_implicit_prompt_pairs(local_hub_dataset: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "data=ultrafeedback",
            f"data.source.name={local_hub_dataset}",
            "data.source.train_split=train",
            "data.source.eval_split=test",
            "data.batch_size=4",
            "data.max_length=64",
            "data.max_prompt_length=32",
        ],
        run_dir=tmp_path / "run",
        tiny=False,
    )
    _, datamodule, _ = build(cfg)
    examples = datamodule.load_examples()
    assert (len(examples["train"]), len(examples["val"])) == (40, 12)
    first = examples["train"][0]
    assert first.prompt == [{"role": "user", "content": "Is item 0 an animal or a tool?"}]
    assert first.chosen == [{"role": "assistant", "content": "It is an animal."}]
    assert first.rejected == [{"role": "assistant", "content": "It is a tool."}]
    assert datamodule.stats["train"]["rows"] == 40


def test_hub_source_holds_out_a_fraction_when_there_is_no_eval_split(
    local_hub_dataset: Path, tmp_path: Path
) -> None:
    cfg = compose_config(
        [
            "data=hub",
            f"data.source.name={local_hub_dataset}",
            "data.source.eval_fraction=0.25",
            "data.source.max_train_rows=20",
            "data.source.columns=[chosen,rejected]",
            "data.format=implicit_prompt",
        ],
        run_dir=tmp_path / "run",
        tiny=False,
    )
    _, datamodule, _ = build(cfg)
    examples = datamodule.load_examples()
    assert (len(examples["train"]), len(examples["val"])) == (15, 5)
    train_prompts = {e.prompt[0]["content"] for e in examples["train"]}
    val_prompts = {e.prompt[0]["content"] for e in examples["val"]}
    assert not train_prompts & val_prompts
