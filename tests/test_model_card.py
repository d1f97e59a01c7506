"""The export's model card (``export/README.md``) and ``export.push_to_hub`` (up to the upload call)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_lab.export import PushError, export_model, push_to_hub
from rlhf_lab.model_card import model_card
from rlhf_lab.models.tiny import TinyModel
from tests.conftest import compose_config


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def held_out_row(summary: dict[str, Any], key: str) -> str:
    start = summary.get("val_start/" + key.removeprefix("val/"))
    end = f"{summary[key]:.4f}"
    return f"| {key} | {end if start is None else f'{start:.4f} -> {end}'} |"


@pytest.fixture
def hub_login(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """A token and the network on, as far as `push_to_hub` checks; ``HfApi`` replaced by a recorder."""
    import huggingface_hub

    calls: list[tuple[str, Any]] = []

    class RecordingApi:
        def create_repo(self, repo_id: str, **options: Any) -> str:
            calls.append(("create_repo", (repo_id, options)))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **options: Any) -> None:
            calls.append(("upload_folder", {**options, "files": sorted(os.listdir(options["folder_path"]))}))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    return calls


def test_a_runs_card_states_its_config_data_and_held_out_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny DPO run asked to push while offline: the named error, after the export and summary are written."""
    from rlhf_lab.train import run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_config(["algo.beta=0.2", "export.push_to_hub=me/tiny-dpo"], run_dir=tmp_path)
    with pytest.raises(PushError) as error:
        run(cfg)
    export = tmp_path / "export"
    assert str(error.value) == (
        f"export.push_to_hub=me/tiny-dpo: not uploaded (the export is kept at {export}): HF_HUB_OFFLINE is set; "
        f"unset it and upload with `hf upload me/tiny-dpo {export}`"
    )
    assert (export / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    card = (export / "README.md").read_text()

    assert front_matter(card) == {
        "library_name": "transformers",
        "tags": ["rlhf_lab", "dpo"],
        "pipeline_tag": "text-generation",
    }
    lines = card.splitlines()
    assert (
        "| Objective | dpo (`rlhf_lab.objectives.PairwiseObjective`, loss `rlhf_lab.losses.dpo_loss`) |"
        in lines
    )
    assert "| Optimiser steps | 4 |" in lines and summary["trainer/global_step"] == 4
    assert "| `algo.beta` | `0.2` |" in lines and '| `algo.loss_type` | `"sigmoid"` |' in lines
    assert f"Layout detected: {summary['data/format']}" in lines
    assert (summary["data/train/examples"], summary["data/val/examples"]) == (64, 32)
    assert "| train | 64 | 64 | 0 | 0 | 0 |" in lines and "| val | 32 | 32 | 0 | 0 | 0 |" in lines
    val_keys = sorted(key for key in summary if key.startswith("val/"))
    assert "val/rewards/accuracies" in val_keys
    table_start = lines.index("| metric | value |")
    assert lines[table_start + 2 : table_start + 2 + len(val_keys)] == [
        held_out_row(summary, k) for k in val_keys
    ]
    # Loading from the repository it was to be pushed to; chatting from the local copy.
    assert 'model = AutoModelForCausalLM.from_pretrained("me/tiny-dpo")' in lines
    assert f'python -m rlhf_lab.chat {export.resolve()} --prompt "Hello"' in lines


def test_an_adapter_card_names_the_hub_base_and_loads_with_peft(tmp_path: Path) -> None:
    cfg = compose_config(["model=qwen2_5_0_5b", "adapter=lora", "algo=simpo"], run_dir=tmp_path)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "adapter_config.json").write_text("{}")
    summary = {
        "val/loss": 0.25,
        "val_start/loss": 0.6931,
        "val/rewards/accuracies": 0.875,
        "val/rewards/margins": float("nan"),
        "data/format": "standard",
        "data/train/examples": 10.0,
    }
    card = model_card(cfg, summary, tmp_path / "export", local="/runs/a/export")
    assert front_matter(card) == {
        "library_name": "peft",
        "base_model": "Qwen/Qwen2.5-0.5B-Instruct",
        "tags": ["rlhf_lab", "simpo", "lora"],
        "pipeline_tag": "text-generation",
    }
    lines = card.splitlines()
    assert "| Base model | `Qwen/Qwen2.5-0.5B-Instruct` |" in lines
    assert "| Adapter | LoRA r=8, alpha=16, targets default |" in lines
    assert "| Export | the adapter alone (peft) |" in lines
    assert "| `algo.gamma` | `1.0` |" in lines and '| `algo.reference` | `"none"` |' in lines
    table_start = lines.index("| metric | value |")
    assert lines[table_start + 2 : table_start + 5] == [
        "| val/loss | 0.6931 -> 0.2500 |",  # start -> end where the run validated at step 0
        "| val/rewards/accuracies | 0.8750 |",
        "| val/rewards/margins | nan |",
    ]
    assert "| train | - | 10 | - | - | - |" in lines  # counts the summary lacks are not invented
    assert (
        'model = PeftModel.from_pretrained(base, "/runs/a/export")  # model.merge_and_unload() to merge'
        in lines
    )


def test_a_card_of_a_run_that_did_not_learn_says_so_first(tmp_path: Path) -> None:
    """run/learned: false (optim.lr=1e4's collapse): a warning right under the title; true or unjudged: none."""
    cfg = compose_config(["algo=dpo"], run_dir=tmp_path)
    summary = {
        "val/loss": 0.6928,
        "val_start/loss": 0.6931,
        "trainer/global_step": 20.0,
        "run/learned": False,
    }
    lines = model_card(cfg, summary, tmp_path, local="/runs/x/export").splitlines()
    title = lines.index("# dpo model trained with rlhf_lab")
    assert lines[title + 2].startswith(
        "> **Warning: this run did not learn.** Its held-out objective did not improve from step 0"
    )
    assert "`run/learned: false` in `summary.json`" in lines[title + 2]
    assert "| val/loss | 0.6931 -> 0.6928 |" in lines
    for learned in ({"run/learned": True}, {}):
        card = model_card(cfg, {**summary, **learned} if learned else {"val/loss": 0.5}, tmp_path, local="x")
        assert "did not learn" not in card


def test_a_vision_language_card_loads_the_processor(tmp_path: Path) -> None:
    cfg = compose_config(["model=qwen2_vl_2b"], run_dir=tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{}")
    card = model_card(cfg, {}, tmp_path, local="/runs/v/export")
    assert front_matter(card)["pipeline_tag"] == "image-text-to-text"
    assert front_matter(card)["base_model"] == "Qwen/Qwen2-VL-2B-Instruct"
    lines = card.splitlines()
    assert 'model = AutoModelForImageTextToText.from_pretrained("/runs/v/export")' in lines
    assert 'processor = AutoProcessor.from_pretrained("/runs/v/export")' in lines
    assert 'python -m rlhf_lab.chat /runs/v/export --prompt "Hello" --image picture.png' in lines
    assert "(no validation)" in lines


def test_push_to_hub_creates_the_repo_and_uploads_the_export_with_its_card(
    tmp_path: Path, hub_login: list[tuple[str, Any]]
) -> None:
    spec = TinyModel(cache_dir=os.environ["RLHF_LAB_CACHE"])
    spec.prepare(lambda: ["Hello there.", "It is red.", "It is blue."] * 8)
    cfg = compose_config(["export.push_to_hub=me/tiny", "export.private=true"], run_dir=tmp_path)
    export = export_model(spec.load_model(), spec.load_tokenizer(), tmp_path / "export", cfg=cfg, summary={})
    assert hub_login == [
        ("create_repo", ("me/tiny", {"private": True, "repo_type": "model", "exist_ok": True})),
        (
            "upload_folder",
            {
                "repo_id": "me/tiny",
                "folder_path": export,
                "repo_type": "model",
                "commit_message": "Upload rlhf_lab export",
                "files": sorted(os.listdir(export)),
            },
        ),
    ]
    assert "README.md" in hub_login[1][1]["files"] and "model.safetensors" in hub_login[1][1]["files"]


def test_push_failures_are_named_and_keep_the_export(
    tmp_path: Path, hub_login: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    folder = tmp_path / "export"
    folder.mkdir()
    kept = f"export.push_to_hub=me/x: not uploaded (the export is kept at {folder})"

    class Unreachable:
        def create_repo(self, repo_id: str, **options: Any) -> None:
            raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    with pytest.raises(PushError) as error:
        push_to_hub(folder, "me/x")
    assert str(error.value) == f"{kept}: [Errno -2] Name or service not known"

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PushError) as error:
        push_to_hub(folder, "me/x")
    assert str(error.value) == f"{kept}: no Hugging Face token; run `hf auth login` or set HF_TOKEN"
    assert folder.is_dir() and not hub_login
