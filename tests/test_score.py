"""A trained reward model exports as a sequence classifier and scores a JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.score import legacy_arguments
from rlhf_lab.score import main as score_main
from rlhf_lab.train import run
from tests.conftest import compose_config


def test_reward_export_loads_and_scores_a_file(tmp_path: Path) -> None:
    result = run(
        compose_config(
            ["algo=reward", "optim.lr=2e-3", "trainer.max_steps=6", "trainer.limit_val_batches=1"],
            run_dir=tmp_path / "run",
        )
    )
    export = tmp_path / "run" / "export"
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(export).eval()
    assert reloaded.config.num_labels == 1

    batch = next(iter(result.datamodule.val_dataloader()))
    expected = result.objective.policy.eval().scores(batch.sequences).detach()

    rows = [
        {
            "prompt": [{"role": "user", "content": "Is a cat an animal or a tool?"}],
            "chosen": [{"role": "assistant", "content": "It is an animal."}],
            "rejected": [{"role": "assistant", "content": "It is a tool."}],
        },
        {
            "prompt": [{"role": "user", "content": "Is a hammer an animal or a tool?"}],
            "chosen": [{"role": "assistant", "content": "It is a tool."}],
            "rejected": [{"role": "assistant", "content": "It is an animal."}],
        },
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = score_main([f"model_dir={export}", f"data={data}", f"out={tmp_path / 'scores.jsonl'}"])
    scored = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert summary["scored"] == 2 and len(scored) == 2
    assert {"chosen_score", "rejected_score", "source"} <= set(scored[0])
    assert summary["accuracy"] == sum(r["chosen_score"] > r["rejected_score"] for r in scored) / 2

    # The scorer reads the exported model exactly as the trained module scores a batch.
    from rlhf_lab.score import RewardScorer

    scorer = RewardScorer(export)
    with torch.no_grad():
        exported_scores = scorer.model.scores(batch.sequences)
    assert_close(exported_scores, expected, atol=1e-5, rtol=1e-5)


def test_the_older_command_line_still_works_as_key_value_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``<model dir> <data> --out F --batch-size N`` -> ``model_dir=... data=... out=... batch_size=N``."""
    assert legacy_arguments(["model_dir=m", "data=d.jsonl"]) is None
    assert legacy_arguments(["--help"]) is None
    odd = "it's a dir, [1]"
    assert legacy_arguments([odd, "d.jsonl", "--out", "o.jsonl", "--batch-size", "4"]) == [
        "model_dir='it\\'s a dir, [1]'",
        "data='d.jsonl'",
        "out='o.jsonl'",
        "batch_size=4",
    ]
    # Either form: a missing data file fails naming it (exit 2), the older one with a note first.
    missing = tmp_path / "missing.jsonl"
    for argv in ([f"model_dir={tmp_path}", f"data={missing}"], [str(tmp_path), str(missing)]):
        with pytest.raises(SystemExit) as exited:
            score_main(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert str(missing) in err.splitlines()[-1]
        assert ("deprecated" in err) == (argv[0] == str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        score_main([f"data={missing}"])
    assert "error: model_dir is required" in capsys.readouterr().err
