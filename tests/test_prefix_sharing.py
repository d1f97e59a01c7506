"""Prefix sharing: pairs packed as [prompt | chosen | rejected] give the unshared rows' log-probs and gradients."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from rlhf_lab.data.collate import PreferenceCollator
from rlhf_lab.data.formats import convert_rows
from rlhf_lab.data.tokenize import TokenizeSettings, tokenize_examples
from rlhf_lab.models.adapters import LoraAdapter
from rlhf_lab.models.tiny import TinyModel
from rlhf_lab.policy import FrozenModel, Policy
from rlhf_lab.reference import make_reference
from rlhf_lab.train import run
from tests.conftest import compose_config

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "every",
    "dog",
    "ran",
    "far",
    "away",
    "from",
    "one",
    "small",
    "house",
]


def _words(count: int, start: int) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(count))


def _rows() -> list[dict[str, Any]]:
    """Pairs whose prompts, chosen and rejected lengths all differ (padding in every layout)."""
    return [
        {
            "prompt": [{"role": "user", "content": _words(prompt, index)}],
            "chosen": [{"role": "assistant", "content": _words(chosen, index + 3)}],
            "rejected": [{"role": "assistant", "content": _words(rejected, index + 7)}],
        }
        for index, (prompt, chosen, rejected) in enumerate([(12, 3, 9), (4, 11, 2), (8, 6, 6), (15, 1, 4)])
    ]


@pytest.fixture(scope="module", params=["llama", "mistral"])
def spec(request: pytest.FixtureRequest) -> TinyModel:
    spec = TinyModel(architecture=request.param, cache_dir=os.environ["RLHF_LAB_CACHE"], vocab_size=320)
    spec.prepare(lambda: [" ".join(WORDS)] * 20)
    return spec


def _batch(spec: TinyModel) -> Any:
    tokenizer = spec.load_tokenizer()
    examples, _ = convert_rows(_rows(), file="pairs.jsonl")
    tokenized, _ = tokenize_examples(examples, tokenizer, TokenizeSettings(None, None))
    collate = PreferenceCollator(pad_token_id=tokenizer.pad_token_id, prefix_sharing=True)
    return collate(list(enumerate(tokenized)))


def _unshared(sequences: Any) -> Any:
    return dataclasses.replace(sequences, shared=None)


def _moved(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():  # away from the initial weights, so every position matters
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


@pytest.mark.parametrize("adapter", ["full", "lora"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_equals_unshared_values_and_gradients(spec: TinyModel, adapter: str, attention: str) -> None:
    batch = _batch(spec)
    shared = batch.sequences.shared
    assert shared is not None
    # Each prompt once: the packed rows are shorter in total than the unshared ones.
    assert int((shared.segments >= 0).sum()) < int(batch.sequences.attention_mask.sum())
    spec = dataclasses.replace(spec, attn_implementation=attention)
    model = _moved(spec.load_model())
    if adapter == "lora":
        model = LoraAdapter(r=4, target_modules="all").apply(model)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.05)
    policy = Policy(model).eval()
    options = {"score_prompt": True, "per_token": True, "entropy": True}
    packed = policy(batch.sequences, **options)
    plain = policy(_unshared(batch.sequences), **options)
    for name in ("logps", "prompt_logps", "token_logps", "token_entropy", "mean_logits"):
        torch.testing.assert_close(
            getattr(packed, name), getattr(plain, name), rtol=1e-5, atol=1e-5, msg=name
        )
    assert torch.equal(packed.lengths, plain.lengths)
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = torch.linspace(0.5, 1.5, batch.sequences.num_rows)
    mine = torch.autograd.grad((policy(batch.sequences).logps * weights).sum(), trainable)
    theirs = torch.autograd.grad((policy(_unshared(batch.sequences)).logps * weights).sum(), trainable)
    for left, right in zip(mine, theirs, strict=True):
        torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5)  # fp32 sums in another order


def test_the_reference_shares_prompts_too(spec: TinyModel) -> None:
    batch = _batch(spec)
    policy = Policy(spec.load_model())
    reference = make_reference("copy", policy, FrozenModel(_moved(spec.load_model())))
    calls: list[int] = []
    backbone = reference.model.model.model
    hook = backbone.register_forward_hook(lambda _m, args, kwargs_out: calls.append(1))
    shared = reference.compute(batch.sequences)
    hook.remove()
    torch.testing.assert_close(shared, reference.compute(_unshared(batch.sequences)), rtol=1e-5, atol=1e-5)
    assert calls == [1]


def test_a_sliding_window_shorter_than_the_packed_row_falls_back(spec: TinyModel) -> None:
    """The custom mask would replace the window, so such rows run unshared (and score as unshared)."""
    from rlhf_lab.policy import shares_prompts

    batch = _batch(spec)
    model = spec.load_model()
    width = batch.sequences.shared.input_ids.shape[1]
    model.config.sliding_window = width - 1
    assert not shares_prompts(model.model, width)
    model.config.sliding_window = width
    assert shares_prompts(model.model, width)


def test_a_part_of_a_pair_batch_is_unshared(spec: TinyModel) -> None:
    batch = _batch(spec)
    assert batch.chosen().shared is None and batch.sequences.rows(slice(0, 2)).shared is None


def test_dpo_with_prefix_sharing_trains_as_without(tmp_path: Path) -> None:
    """The same run, shared and unshared: the same losses, metrics and final weights."""
    summaries, weights = [], []
    for sharing in ("false", "true"):
        result = run(compose_config([f"data.prefix_sharing={sharing}"], run_dir=tmp_path / sharing))
        summaries.append(result.summary)
        weights.append({k: v.clone() for k, v in result.objective.policy.model.state_dict().items()})
    for key in ("train/loss", "val/loss", "val/rewards/margins", "val/logps/chosen", "val/logps/rejected"):
        assert summaries[1][key] == pytest.approx(summaries[0][key], rel=1e-4, abs=1e-5), key
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-5, msg=name)
