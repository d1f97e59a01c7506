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


def test_a_hub_dataset_in_a_peers_layout_with_a_mapping(local_hub_dataset: Path, tmp_path: Path) -> None:
    """Hub datasets go through the same layouts and mapping as files: here ms-swift's messages + a renamed
    rejected column."""
    rows = [
        {"conversation_turns": ultrafeedback_row(i)["messages"], "worse": "It is a tool.", "id": i}
        for i in range(20)
    ]
    directory = tmp_path / "swift_style"
    directory.mkdir()
    (directory / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = compose_config(
        [
            "data=hub",
            f"data.source.name={directory}",
            "data.source.eval_fraction=0.25",
            "data.columns={messages: conversation_turns, rejected_response: worse}",
            "data.max_length=64",
            "data.max_prompt_length=32",
        ],
        run_dir=tmp_path / "run",
        tiny=False,
    )
    _, datamodule, _ = build(cfg)
    examples = datamodule.load_examples()
    assert (len(examples["train"]), len(examples["val"])) == (15, 5)
    assert examples["train"][0].rejected == [{"role": "assistant", "content": "It is a tool."}]
    assert datamodule.data_report()["data/format"] == "messages"
    assert datamodule.data_report()["data/ignored_columns"] == "id"


# --- registry files (dataset_info.json) ---------------------------------------------------------------


def _write(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def test_a_llamafactory_entry_gives_files_format_columns_and_tags(tmp_path: Path) -> None:
    from rlhf_lab.data.formats.mapping import read_registry

    _write(tmp_path / "data" / "a.json", [])
    info = _write(
        tmp_path / "data" / "dataset_info.json",
        {
            "mine": {
                "file_name": "a.json",
                "formatting": "sharegpt",
                "ranking": True,
                "columns": {"messages": "dialog", "chosen": "good", "images": None},
                "tags": {"role_tag": "speaker"},
            }
        },
    )
    entry = read_registry(info, "mine", (".json",))
    assert entry.files == [str(tmp_path / "data" / "a.json")]
    assert entry.hub is None
    assert (entry.mapping.format, entry.mapping.ranking) == ("sharegpt", True)
    assert entry.mapping.columns == {"messages": "dialog", "chosen": "good"}  # a null column: not mapped
    assert entry.mapping.tags == {"role_tag": "speaker"}
    assert entry.image_dir == str(tmp_path / "data")  # LLaMA-Factory's media_dir: the dataset folder


def test_an_ms_swift_entry_reads_its_columns_the_other_way_round(tmp_path: Path) -> None:
    from rlhf_lab.data.formats.mapping import read_registry

    _write(tmp_path / "d.jsonl", [])
    info = _write(
        tmp_path / "info.json",
        [
            {
                "dataset_path": "d.jsonl",
                "dataset_name": "mine",
                "columns": {"question": "query", "answer": "response"},
            }
        ],
    )
    entry = read_registry(info, "mine", (".jsonl",))
    assert entry.files == [str(tmp_path / "d.jsonl")]
    assert entry.mapping.columns == {"query": "question", "response": "answer"}


@pytest.mark.parametrize(
    ("registry", "name", "message"),
    [
        ({"a": {"file_name": "a.json"}}, "b", "data.source.name='b' is not an entry of"),
        ({"a": {"file_name": "a.json", "num_samples": 10}}, "a", "key 'num_samples' is not supported"),
        ({"a": {"file_name": "missing.json"}}, "a", "data file not found"),
        (
            {"a": {"file_name": "a.json", "formatting": "chatml"}},
            "a",
            "formatting='chatml'; expected one of: alpaca",
        ),
        ([{"ms_dataset_id": "x/y", "dataset_name": "a"}], "a", "only ModelScope ids"),
    ],
)
def test_registry_problems_are_named(tmp_path: Path, registry: object, name: str, message: str) -> None:
    from rlhf_lab.data.formats.mapping import read_registry
    from rlhf_lab.errors import ConfigError

    _write(tmp_path / "a.json", [])
    info = _write(tmp_path / "dataset_info.json", registry)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_registry(info, name, (".json",))


def test_an_ms_swift_registry_entry_through_the_datamodule(tmp_path: Path) -> None:
    rows = [
        {"question": f"Is {i} even?", "answer": "Yes." if i % 2 == 0 else "No.", "bad": "Maybe."}
        for i in range(12)
    ]
    _write(tmp_path / "rows.json", rows)
    info = _write(
        tmp_path / "swift_info.json",
        [
            {
                "dataset_path": "rows.json",
                "dataset_name": "my_dpo",
                "columns": {"question": "query", "answer": "response", "bad": "rejected_response"},
            }
        ],
    )
    cfg = compose_config(
        ["data=jsonl", f"data.source.dataset_info={info}", "data.source.name=my_dpo"],
        run_dir=tmp_path / "r",
        tiny=False,
    )
    _, datamodule, _ = build(cfg)
    example = datamodule.load_examples()["train"][0]
    assert example.rejected == [{"role": "assistant", "content": "Maybe."}]
    assert datamodule.data_report() == {
        "data/format": "swift",
        "data/ignored_columns": "",
        "data/images_placed": 0.0,
    }


def test_a_registry_entry_through_the_datamodule_maps_and_checks_ranking(tmp_path: Path) -> None:
    rows = [{"q": f"Is {i} even?", "a": "Yes" if i % 2 == 0 else "No"} for i in range(10)]
    _write(tmp_path / "data" / "sft.json", rows)
    info = _write(
        tmp_path / "data" / "dataset_info.json",
        {
            "sft": {"file_name": "sft.json", "columns": {"prompt": "q", "response": "a"}},
            "ranked": {"file_name": "sft.json", "ranking": True, "columns": {"prompt": "q", "response": "a"}},
        },
    )
    cfg = compose_config(
        ["algo=sft", "data=jsonl", f"data.source.dataset_info={info}", "data.source.name=sft"],
        run_dir=tmp_path / "r",
        tiny=False,
    )
    _, datamodule, _ = build(cfg)
    example = datamodule.load_examples()["train"][0]
    assert example.prompt[0]["role"] == "user" and example.chosen[0]["role"] == "assistant"
    assert datamodule.data_report()["data/format"] == "alpaca"
    cfg = compose_config(
        ["algo=sft", "data=jsonl", f"data.source.dataset_info={info}", "data.source.name=ranked"],
        run_dir=tmp_path / "r2",
        tiny=False,
    )
    from rlhf_lab.data.formats import DataError

    with pytest.raises(DataError, match="says ranking: true, but this row is not a pair"):
        build(cfg)
