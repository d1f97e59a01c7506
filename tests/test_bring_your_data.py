"""Bring your data: the peers' own sample files train from the command line as they are.

Every file under ``tests/assets/peers`` (LLaMA-Factory's own demo data; TRL's and ms-swift's layouts written
from their documentation) trains with the objective that fits it and ``data=jsonl
data.source.train_path=<file>``, no mapping option: the layout is detected, every row of the file is read
(``data/train/rows + data/val/rows`` equals the file's rows), and ``summary.json`` says what was read.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from rlhf_lab.data.io import read_rows
from rlhf_lab.train import run
from tests.conftest import compose_config
from tests.real_tokenizers import llama3_tokenizer, mistral_instruct_template, mistral_tokenizer, trl_template
from tests.subprocesses import python_module

PEERS = Path(__file__).resolve().parent / "assets" / "peers"
LLAMAFACTORY = PEERS / "llamafactory" / "data"
# A few optimiser steps and one held-out batch: enough to show the file trains, cheap enough for every layout.
QUICK = (
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "checkpoint.save_top_k=0",
    "export.enabled=false",
)
# Online RL: two prompts, two samples each, short completions.
QUICK_RL = ("data.batch_size=2", "algo.num_generations=2", "algo.max_new_tokens=8")


def cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return python_module("rlhf_lab", *QUICK, *overrides, f"hydra.run.dir={run_dir}")


def summary_of(result: subprocess.CompletedProcess[str], run_dir: Path) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def rows_read(summary: dict) -> int:
    return int(summary["data/train/rows"] + summary["data/val/rows"])


CORPUS = [
    # TRL (docs/source/dataset_formats.md)
    ("trl/preference_conversational.jsonl", "dpo", "conversational"),
    ("trl/preference_standard.jsonl", "dpo", "plain"),
    ("trl/implicit_prompt_standard.jsonl", "dpo", "implicit_prompt"),
    ("trl/implicit_prompt_conversational.jsonl", "reward", "implicit_prompt"),
    ("trl/unpaired_preference.jsonl", "kto", "kto"),
    ("trl/prompt_completion.jsonl", "sft", "sft"),
    ("trl/language_modeling.jsonl", "sft", "text"),
    ("trl/conversational_language_modeling.jsonl", "sft", "messages"),
    ("trl/prompt_only.jsonl", "grpo", "prompt_only"),
    ("trl/tool_calling.jsonl", "sft", "messages"),
    # LLaMA-Factory (its own data/, detected without dataset_info.json)
    ("llamafactory/data/alpaca_en_demo.json", "sft", "alpaca"),
    ("llamafactory/data/dpo_en_demo.json", "dpo", "sharegpt"),
    ("llamafactory/data/kto_en_demo.json", "kto", "messages"),
    ("llamafactory/data/glaive_toolcall_en_demo.json", "sft", "sharegpt"),
    ("llamafactory/data/v1_dpo_demo.jsonl", "simpo", "llamafactory_v1"),
    ("llamafactory/data/v1_sft_demo.jsonl", "sft", "llamafactory_v1"),
    # ms-swift (docs/source_en/Customization/Custom-dataset.md)
    ("swift/sft_messages.jsonl", "sft", "messages"),
    ("swift/dpo_rejected_response.jsonl", "dpo", "messages"),
    ("swift/dpo_rejected_messages.jsonl", "orpo", "messages"),
    ("swift/kto_label.jsonl", "kto", "messages"),
    ("swift/grpo_prompts.jsonl", "grpo", "messages"),
    ("swift/agent_tool_call.jsonl", "sft", "messages"),
    ("swift/query_response.csv", "cpo", "swift"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("file", "algo", "layout"), CORPUS, ids=[f"{f}-{a}" for f, a, _ in CORPUS])
def test_a_peers_file_trains_as_it_is(tmp_path: Path, file: str, algo: str, layout: str) -> None:
    path = PEERS / file
    extra = QUICK_RL if algo == "grpo" else ()
    result = cli(tmp_path, f"algo={algo}", "data=jsonl", f"data.source.train_path={path}", *extra)
    summary = summary_of(result, tmp_path)
    assert rows_read(summary) == len(read_rows(path))
    assert summary["data/format"] == layout
    assert summary["data/ignored_columns"] == ""
    assert summary["run/diverged"] == 0.0
    # The log says what was read, where the user sees it.
    assert f"layout {layout} (detected" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_llamafactory_registry_entry_with_renamed_columns_and_tags_trains(tmp_path: Path) -> None:
    """A dataset_info.json entry as a LLaMA-Factory user has it: renamed columns and custom speaker tags."""
    rows = [
        {
            "dialog": [
                {"speaker": "customer", "text": row["messages"][0]["content"]},
                {"speaker": "agent", "text": row["messages"][1]["content"]},
            ],
            "good": row["label"],
            "note": "kept aside",
        }
        for row in json.loads((LLAMAFACTORY / "kto_en_demo.json").read_text())
    ]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "feedback.json").write_text(json.dumps(rows))
    entry = {
        "file_name": "feedback.json",
        "formatting": "sharegpt",
        "columns": {"messages": "dialog", "kto_tag": "good"},
        "tags": {
            "role_tag": "speaker",
            "content_tag": "text",
            "user_tag": "customer",
            "assistant_tag": "agent",
        },
    }
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"my_feedback": entry}))
    run_dir = tmp_path / "run"
    result = cli(
        run_dir,
        "algo=kto",
        "data=jsonl",
        f"data.source.dataset_info={tmp_path / 'data' / 'dataset_info.json'}",
        "data.source.name=my_feedback",
    )
    summary = summary_of(result, run_dir)
    assert rows_read(summary) == len(rows)
    assert summary["data/format"] == "sharegpt"
    # A column the entry does not map is named, not dropped silently.
    assert summary["data/ignored_columns"] == "note"
    assert "ignored columns (no layout reads them): note" in result.stdout + result.stderr


@pytest.mark.slow
def test_columns_and_tags_from_the_command_line(tmp_path: Path) -> None:
    rows = [
        {
            "question": f"Is {n} even?",
            "good": "Yes." if n % 2 == 0 else "No.",
            "bad": "No." if n % 2 == 0 else "Yes.",
        }
        for n in range(40)
    ]
    path = tmp_path / "pairs.csv"
    path.write_text(
        "question,good,bad\n" + "".join(f"{r['question']},{r['good']},{r['bad']}\n" for r in rows)
    )
    run_dir = tmp_path / "run"
    result = cli(
        run_dir,
        "data=jsonl",
        f"data.source.train_path={path}",
        "data.columns={prompt: question, chosen: good, rejected: bad}",
    )
    summary = summary_of(result, run_dir)
    assert rows_read(summary) == 40
    assert summary["data/format"] == "plain"
    # The README's second example: turns with their own keys and speaker names, labels in another column.
    chats = [
        {
            "dialog": [
                {"speaker": "customer", "text": f"Is {n} even?"},
                {"speaker": "agent", "text": "Yes."},
            ],
            "ok": n % 2 == 0,
        }
        for n in range(40)
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(chat) + "\n" for chat in chats))
    result = cli(
        tmp_path / "kto",
        "algo=kto",
        "data=jsonl",
        f"data.source.train_path={path}",
        "data.columns={messages: dialog, kto_tag: ok}",
        "data.tags={role_tag: speaker, content_tag: text, user_tag: customer, assistant_tag: agent}",
    )
    summary = summary_of(result, tmp_path / "kto")
    assert rows_read(summary) == 40
    assert (summary["data/format"], summary["data/ignored_columns"]) == ("messages", "")


# --- real tokenizers and chat templates ----------------------------------------------------------------

REAL = {
    # A tiny Mistral with Mistral-7B's own tokenizer and Mistral-7B-Instruct's template.
    "mistral": ("model.architecture=mistral", mistral_tokenizer, mistral_instruct_template),
    # A tiny Llama with Llama 3's own tokenizer (128k) and Llama 3's template.
    "llama3": ("model.architecture=llama", llama3_tokenizer, lambda: trl_template("llama3")),
}
OBJECTIVES = {
    "dpo": "trl/preference_conversational.jsonl",
    "kto": "trl/unpaired_preference.jsonl",
    "sft": "trl/conversational_language_modeling.jsonl",
}


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(OBJECTIVES))
@pytest.mark.parametrize("family", sorted(REAL))
def test_a_tiny_model_with_a_real_tokenizer_and_template_trains(
    tmp_path: Path, family: str, algo: str
) -> None:
    architecture, tokenizer, template = REAL[family]
    path = PEERS / OBJECTIVES[algo]
    result = python_module(
        "rlhf_lab",
        f"algo={algo}",
        "data=jsonl",
        f"data.source.train_path={path}",
        architecture,
        f"model.tokenizer={tokenizer()}",
        f"model.chat_template={template()}",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.enable_progress_bar=false",
        "checkpoint.save_top_k=0",
        "export.enabled=false",
        f"hydra.run.dir={tmp_path}",
    )
    summary = summary_of(result, tmp_path)
    assert rows_read(summary) == len(read_rows(path))
    assert summary["data/train/dropped_too_long"] == 0
    # It learned: the held-out loss after 6 steps is below the one after 3 (the first value is step 0's).
    val_loss = pd.read_csv(tmp_path / "metrics.csv")["val/loss"].dropna()
    assert len(val_loss) == 3 and val_loss.iloc[2] < val_loss.iloc[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("architecture", "template", "marker"),
    [
        # llava-hf's LLaVA-1.6-Mistral template: content as parts only.
        (("model.architecture=llava_next", "model.patch_size=8"), "llava_next", "[INST]"),
        # Qwen2-VL's template (byte-identical to Qwen2.5-VL's in TRL).
        (("model.architecture=qwen2_vl",), "qwen2_5_vl", "<|im_start|>assistant"),
    ],
    ids=["llava_next", "qwen2_vl"],
)
def test_a_vlm_template_given_as_a_file_trains_dpo(
    tmp_path: Path, architecture: tuple[str, ...], template: str, marker: str
) -> None:
    cfg = compose_config(
        [
            "model=tiny_vlm",
            "data=synthetic_vision",
            *architecture,
            f"model.chat_template={trl_template(template)}",
            "data.max_length=200",
            "data.max_prompt_length=180",
        ],
        run_dir=tmp_path,
    )
    finished = run(cfg)
    assert finished.summary["run/diverged"] == 0.0
    assert finished.summary["data/train/dropped_too_long"] == 0
    # The rows were rendered by the given template, with the images' own tokens in the prompt.
    example = finished.datamodule.datasets["train"].examples[0]
    text = finished.tokenizer.decode(example.prompt_ids + example.chosen_ids)
    assert marker in text
    images = finished.datamodule.images
    assert any(token in images.image_token_ids for token in example.prompt_ids)


@pytest.mark.slow
def test_a_reward_function_mapping_from_the_command_line(tmp_path: Path) -> None:
    """The README's form: ``algo.reward_functions=[{_target_: ..., target: 6}]`` (Hydra builds the object)."""
    result = python_module(
        "rlhf_lab",
        "algo=grpo",
        "data=synthetic_rl",
        "algo.reward_functions=[{_target_: rlhf_lab.rewards.LengthTarget, target: 6, name: six}]",
        *QUICK,
        *QUICK_RL,
        f"hydra.run.dir={tmp_path}",
    )
    summary = summary_of(result, tmp_path)
    assert "val/rewards/six/mean" in summary
    assert 0.0 <= summary["val/rewards/six/mean"] <= 1.0


REGISTRY = [
    ("alpaca_en_demo", ("algo=sft",), "alpaca"),
    ("dpo_en_demo", ("algo=dpo",), "sharegpt"),
    ("kto_en_demo", ("algo=kto",), "sharegpt"),
    ("glaive_toolcall_en_demo", ("algo=sft",), "sharegpt"),
    # Real photos (LLaMA-Factory's mllm_demo_data), found beside the registry, on a tiny Qwen2-VL.
    (
        "mllm_demo",
        (
            "algo=sft",
            "model=tiny_vlm",
            "data.batch_size=2",
            "data.max_length=512",
            "data.max_prompt_length=480",
        ),
        "sharegpt",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "overrides", "layout"), REGISTRY, ids=[entry for entry, _, _ in REGISTRY])
def test_llamafactorys_own_registry_entries_train(
    tmp_path: Path, entry: str, overrides: tuple[str, ...], layout: str
) -> None:
    """``data.source.dataset_info=<LLaMA-Factory's data/dataset_info.json> data.source.name=<entry>``."""
    info = LLAMAFACTORY / "dataset_info.json"
    result = cli(
        tmp_path, *overrides, "data=jsonl", f"data.source.dataset_info={info}", f"data.source.name={entry}"
    )
    summary = summary_of(result, tmp_path)
    file = LLAMAFACTORY / json.loads(info.read_text())[entry]["file_name"]
    assert rows_read(summary) == len(read_rows(file))
    assert (summary["data/format"], summary["data/ignored_columns"]) == (layout, "")
    assert f"layout {layout} (configured)" in result.stdout + result.stderr
