"""A trained reward model exports as a sequence classifier and scores a JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.testing import assert_close

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
    summary = score_main([str(export), str(data), "--out", str(tmp_path / "scores.jsonl")])
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
