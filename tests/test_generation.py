"""policy.generate: greedy tokens equal transformers' generate; sampled tokens' log-probs equal a
teacher-forced pass; seeded, EOS-stopped, truncation reported."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.data.collate import PromptCollator
from rlhf_lab.errors import ConfigError
from rlhf_lab.generation import SamplingConfig
from rlhf_lab.train import build


@pytest.fixture(scope="module")
def policy_and_prompts():
    from tests.conftest import compose_config

    objective, datamodule, tokenizer = build(compose_config(["model.gradient_checkpointing=true"]))
    objective.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():  # away from the initial weights, so completions are not all alike
        for parameter in objective.policy.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    examples = datamodule.datasets["val"].examples[:6]
    # Prompts of different lengths, so left padding matters.
    items = [(i, example) for i, example in enumerate(examples)]
    items[1][1].prompt_ids = items[1][1].prompt_ids[3:]
    prompts = PromptCollator(pad_token_id=tokenizer.pad_token_id)(items).sequences
    assert not prompts.attention_mask.all()
    return objective.policy, prompts, tokenizer


def test_greedy_tokens_equal_transformers_generate(policy_and_prompts) -> None:
    policy, prompts, tokenizer = policy_and_prompts
    ours = policy.generate(
        prompts,
        SamplingConfig(max_new_tokens=12, do_sample=False),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = policy.model.eval()
    with torch.no_grad():
        theirs = model.generate(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
    policy.model.train()
    new = theirs[:, prompts.input_ids.shape[1] :]
    assert torch.equal(ours.completion_ids[:, : new.shape[1]], new)
    assert (ours.completion_ids[:, new.shape[1] :] == tokenizer.pad_token_id).all()
    assert policy.model.training  # generation left the policy in train mode


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(max_new_tokens=10, do_sample=False),
        SamplingConfig(max_new_tokens=10, temperature=0.7),
        SamplingConfig(max_new_tokens=10, temperature=1.3, top_k=20, top_p=0.9),
    ],
    ids=["greedy", "t0.7", "t1.3-topk-topp"],
)
def test_sampled_log_probs_equal_a_teacher_forced_pass(policy_and_prompts, sampling: SamplingConfig) -> None:
    policy, prompts, tokenizer = policy_and_prompts
    generation = policy.generate(
        prompts,
        sampling,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(1),
    )
    temperature = sampling.temperature if sampling.do_sample else 1.0
    with torch.no_grad():
        forced = policy(generation.sequences(), per_token=True, temperature=temperature).token_logps
    forced = forced[:, prompts.input_ids.shape[1] :]
    mask = generation.completion_mask
    assert_close(generation.logps[mask], forced[mask], atol=1e-5, rtol=0)
    assert (generation.logps[~mask] == 0).all()


def test_generation_is_seeded_stops_at_eos_and_reports_truncation(policy_and_prompts) -> None:
    policy, prompts, tokenizer = policy_and_prompts
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def sample(seed: int):
        return policy.generate(
            prompts,
            sampling,
            eos_token_id=eos,
            pad_token_id=pad,
            generator=torch.Generator().manual_seed(seed),
        )

    first, again, other = sample(3), sample(3), sample(4)
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    for row in range(prompts.num_rows):
        ids = first.completion_ids[row][first.completion_mask[row]].tolist()
        if first.truncated[row]:
            assert len(ids) == 6 and eos not in ids
        else:  # ends at its first EOS; padding after it
            assert ids.index(eos) == len(ids) - 1
            assert (first.completion_ids[row][len(ids) :] == pad).all()
    assert first.lengths.tolist() == first.completion_mask.sum(1).tolist()

    # Greedy, with a token row 0 produces later on as "EOS": row 0 stops there, EOS included.
    greedy = SamplingConfig(max_new_tokens=6, do_sample=False)
    free = policy.generate(prompts, greedy, eos_token_id=eos, pad_token_id=pad)
    tokens = free.completion_ids[0].tolist()
    end = next(k for k in range(1, 6) if tokens[k] not in tokens[:k])  # its first occurrence
    stopped = policy.generate(prompts, greedy, eos_token_id=[eos, tokens[end]], pad_token_id=pad)
    width = stopped.completion_ids.shape[1]
    assert stopped.completion_mask[0].tolist() == [True] * (end + 1) + [False] * (width - end - 1)
    assert not stopped.truncated[0]
    assert stopped.completion_ids[0, : end + 1].tolist() == tokens[: end + 1]
    assert (stopped.completion_ids[0, end + 1 :] == pad).all() and (stopped.logps[0, end + 1 :] == 0).all()


def test_sampling_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="top_p"):
        SamplingConfig(top_p=1.5)


def test_a_lora_policy_generates_through_its_adapter() -> None:
    from tests.conftest import compose_config

    objective, datamodule, tokenizer = build(compose_config(["adapter=lora", "adapter.target_modules=all"]))
    objective.configure_model()
    items = list(enumerate(datamodule.datasets["val"].examples[:3]))
    prompts = PromptCollator(pad_token_id=tokenizer.pad_token_id)(items).sequences
    sampling = SamplingConfig(max_new_tokens=5, do_sample=False)
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    before = objective.policy.generate(prompts, sampling, **ids)
    with torch.no_grad():
        for name, parameter in objective.policy.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)
    after = objective.policy.generate(prompts, sampling, **ids)
    with objective.policy.adapters_disabled():
        base = objective.policy.generate(prompts, sampling, **ids)
    assert not torch.allclose(before.logps, after.logps)  # the adapter is in the generating model
    assert torch.equal(before.completion_ids, base.completion_ids)  # LoRA B = 0 at init: the base


@pytest.mark.parametrize("do_sample", [True, False], ids=["row-seeded", "greedy"])
def test_dropping_finished_rows_changes_no_token_and_computes_fewer_rows(
    policy_and_prompts, do_sample
) -> None:
    """With rows ending at different steps (several end tokens), dropping finished rows from the batch (the
    default, ``compact_at=0.5``) gives the tokens, log-probs, masks and truncation flags of a loop that keeps
    every row, while later decoder passes run fewer rows."""
    policy, prompts, tokenizer = policy_and_prompts
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.0, do_sample=do_sample)
    free = policy.generate(prompts, SamplingConfig(max_new_tokens=16, do_sample=False),
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    # End tokens: each row's third greedy token, so rows end early and at different steps.
    ends = sorted({int(row[2]) for row in free.completion_ids} | {tokenizer.eos_token_id})
    decoder = policy.model.get_decoder()
    sizes: list[int] = []
    hook = decoder.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]),
                                             with_kwargs=True)  # fmt: skip
    try:
        results = {}
        for compact_at in (0.0, 0.5):
            sizes.clear()
            results[compact_at] = policy.generate(
                prompts, sampling, eos_token_id=ends, pad_token_id=tokenizer.pad_token_id,
                row_seeds=list(range(10, 10 + prompts.num_rows)), compact_at=compact_at,
            )  # fmt: skip
            results[(compact_at, "sizes")] = list(sizes)
    finally:
        hook.remove()
    kept, dropped = results[0.0], results[0.5]
    assert torch.equal(kept.completion_ids, dropped.completion_ids)
    assert torch.equal(kept.completion_mask, dropped.completion_mask)
    assert torch.equal(kept.truncated, dropped.truncated)
    assert_close(kept.logps, dropped.logps, atol=1e-5, rtol=0)
    assert set(results[(0.0, "sizes")]) == {prompts.num_rows}
    assert min(results[(0.5, "sizes")]) < prompts.num_rows  # finished rows left the batch
    lengths = kept.lengths.tolist()
    assert len(set(lengths)) > 1 and min(lengths) < 16  # rows did end at different steps


def test_row_seeded_draws_invert_each_rows_cdf() -> None:
    """The two-level CDF inversion draws the token a cumulative sum over the whole vocabulary does, the same
    for a row alone as in a batch, and never a masked (-inf) or padding token, even for a target rounded up
    to the row's total."""
    from rlhf_lab.draws import first_above, invert_cdf

    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(64, 1000, generator=generator)  # not a whole number of blocks
    logits[:, 900:] = float("-inf")  # filtered out, as top-k/top-p leave them
    uniforms = torch.rand(64, generator=generator, dtype=torch.float64)
    uniforms[0] = 1 - 2**-53
    cdf = logits.softmax(-1).double().cumsum(-1)
    expected = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    tokens = invert_cdf(logits, uniforms)
    assert torch.equal(tokens, expected)
    alone = torch.cat([invert_cdf(logits[row : row + 1], uniforms[row : row + 1]) for row in range(64)])
    assert torch.equal(alone, tokens)
    cdf = torch.tensor([[0.5, 1.0, 1.0]], dtype=torch.float64)
    assert first_above(cdf, torch.tensor([[1.0]], dtype=torch.float64)).item() == 1


@pytest.mark.parametrize("do_sample", [True, False], ids=["row-seeded", "greedy"])
def test_a_static_kv_cache_gives_the_same_tokens_and_log_probs(policy_and_prompts, do_sample) -> None:
    """transformers' ``StaticCache``, written in place (``static_cache=True``), against the default cache:
    rows ending at different steps (several end tokens), finished rows dropped from both."""
    policy, prompts, tokenizer = policy_and_prompts
    free = policy.generate(prompts, SamplingConfig(max_new_tokens=16, do_sample=False),
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    ends = sorted({int(row[3]) for row in free.completion_ids} | {tokenizer.eos_token_id})
    sampling = SamplingConfig(max_new_tokens=16, temperature=0.8, do_sample=do_sample)
    ids = dict(
        eos_token_id=ends, pad_token_id=tokenizer.pad_token_id, row_seeds=list(range(prompts.num_rows))
    )
    default, static = (
        policy.generate(prompts, sampling, **ids, static_cache=static) for static in (False, True)
    )
    assert torch.equal(default.completion_ids, static.completion_ids)
    assert torch.equal(default.completion_mask, static.completion_mask)
    assert torch.equal(default.truncated, static.truncated)
    assert_close(default.logps, static.logps, atol=1e-5, rtol=0)
    assert len(set(default.lengths.tolist())) > 1  # rows ended at different steps: the batch was compacted


@pytest.mark.slow
def test_a_compiled_decoding_step_gives_the_same_tokens_and_log_probs() -> None:
    """``compile=True`` (the one-token pass through ``torch.compile``, over a static cache; CUDA graphs only
    on a GPU) samples what the eager loop does. Compiling takes about 20 s on CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_lab.data.batches import Sequences
    from rlhf_lab.generation import generate

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    tokens = torch.randint(3, 1000, (4, 8))
    attention = torch.ones_like(tokens)
    attention[1, :3] = 0
    prompts = Sequences(tokens, attention, torch.zeros_like(tokens, dtype=torch.bool))
    sampling = SamplingConfig(max_new_tokens=12)
    ids = dict(eos_token_id=list(range(3, 60)), pad_token_id=0, row_seeds=[0, 1, 2, 3])
    eager, compiled = (generate(model, prompts, sampling, **ids, compile=flag) for flag in (False, True))
    assert torch.equal(eager.completion_ids, compiled.completion_ids)
    assert torch.equal(eager.completion_mask, compiled.completion_mask)
    assert_close(eager.logps, compiled.logps, atol=1e-5, rtol=0)
