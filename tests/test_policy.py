"""Log-prob computation: chunked, head-only-at-completions, against the naive full log-softmax
(per sequence, per token, entropies and top-k; values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from rlhf_lab.logprobs import SequenceLogps, completion_logps, naive_completion_logps, naive_token_logps


def identity_head(vocab: int) -> nn.Linear:
    head = nn.Linear(vocab, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(vocab))
    return head


def test_hand_built_batch() -> None:
    """Vocabulary of 3 and an identity head, so the hidden states are the logits.

    Sequence [0, 1, 0] with the last two tokens as completion:
      token 1 predicted from logits [0, 0, 0]      -> log(1/3)
      token 0 predicted from logits [ln 2, 0, 0]   -> probabilities [1/2, 1/4, 1/4] -> log(1/2)
    Sum: log(1/3) + log(1/2); mean logit over (tokens, vocab) = (0 + ln 2) / 6.
    """
    hidden = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [9.0, 9.0, 9.0]]])
    ids = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[False, True, True]])
    out = completion_logps(hidden, ids, mask, identity_head(3))
    assert_close(out.logps, torch.tensor([math.log(1 / 3) + math.log(1 / 2)]))
    assert_close(out.lengths, torch.tensor([2]))
    assert_close(out.mean_logits, torch.tensor([math.log(2) / 6]))


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
def test_matches_naive_values_and_gradients(chunk_size: int) -> None:
    hidden, head, ids, mask = random_case()
    fast = completion_logps(hidden, ids, mask, head, chunk_size=chunk_size)
    fast_grads = torch.autograd.grad(fast.logps.sum(), (hidden, head.weight))

    naive = naive_completion_logps(head(hidden), ids, mask)
    naive_grads = torch.autograd.grad(naive.sum(), (hidden, head.weight))

    assert_close(fast.logps, naive)
    assert_close(fast.lengths, torch.tensor([6, 2, 8, 0]))
    for got, expected in zip(fast_grads, naive_grads, strict=True):
        assert_close(got, expected)


@pytest.mark.parametrize("chunk_size", [3, 256])
def test_stored_logits_give_the_recomputed_values_and_gradients(chunk_size: int) -> None:
    """``logps_recompute=false`` keeps each chunk's logits for backward instead of recomputing them."""
    hidden, head, ids, mask = random_case()
    results = []
    for recompute in (True, False):
        stats = completion_logps(
            hidden, ids, mask, head, chunk_size=chunk_size, recompute=recompute, entropy=True
        )
        loss = stats.logps.sum() + stats.token_entropy.sum()
        results.append((stats.logps, torch.autograd.grad(loss, (hidden, head.weight))))
    assert_close(results[0][0], results[1][0])
    for got, expected in zip(results[1][1], results[0][1], strict=True):
        assert_close(got, expected)


def test_auto_keeps_logits_only_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlhf_lab.logprobs as logprobs

    hidden, head, ids, mask = random_case()
    checkpointed = []
    real = logprobs.checkpoint
    monkeypatch.setattr(logprobs, "checkpoint", lambda *a, **k: checkpointed.append(1) or real(*a, **k))
    completion_logps(hidden, ids, mask, head, recompute="auto")
    assert not checkpointed  # a few tokens x a small vocabulary: kept
    monkeypatch.setattr(logprobs, "STORED_LOGITS_BUDGET", 8)
    completion_logps(hidden, ids, mask, head, recompute="auto")
    assert checkpointed
    assert logprobs.stored_logits_bytes(100, torch.nn.Linear(4, 50)) == 100 * 50 * 8


def test_masked_positions_never_contribute() -> None:
    torch.manual_seed(1)
    hidden = torch.randn(2, 6, 8)
    head = nn.Linear(8, 20, bias=False)
    ids = torch.randint(0, 20, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    before = completion_logps(hidden, ids, mask, head).logps

    # Change every prompt/padding token of row 0 and the hidden states that predict nothing scored.
    changed_ids, changed_hidden = ids.clone(), hidden.clone()
    changed_ids[0, [0, 4, 5]] = (ids[0, [0, 4, 5]] + 7) % 20
    changed_hidden[0, [3, 4, 5]] = torch.randn(3, 8)
    after = completion_logps(changed_hidden, changed_ids, mask, head).logps
    assert_close(after, before)


def test_hidden_gradient_is_zero_outside_completion_predictors() -> None:
    hidden = torch.randn(1, 5, 4, requires_grad=True)
    mask = torch.tensor([[False, False, True, True, False]])
    out = completion_logps(hidden, torch.randint(0, 6, (1, 5)), mask, nn.Linear(4, 6))
    (grad,) = torch.autograd.grad(out.logps.sum(), hidden)
    # Positions 1 and 2 predict the completion tokens 2 and 3; nothing else gets gradient.
    assert grad[0, [0, 3, 4]].abs().sum() == 0
    assert grad[0, [1, 2]].abs().sum() > 0


def test_rows_select_the_chosen_and_rejected_blocks() -> None:
    stats = SequenceLogps(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1, 2, 3, 4]), torch.zeros(4))
    stats.token_logps = torch.arange(8.0).view(4, 2)
    chosen, rejected = stats.rows(slice(None, 2)), stats.rows(slice(2, None))
    assert_close(chosen.logps, torch.tensor([1.0, 2.0]))
    assert_close(rejected.lengths, torch.tensor([3, 4]))
    assert_close(rejected.token_logps, torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    assert rejected.prompt_logps is None


def random_case(seed: int = 0) -> tuple[torch.Tensor, nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    batch, seq, width, vocab = 4, 9, 16, 50
    hidden = torch.randn(batch, seq, width, requires_grad=True)
    head = nn.Linear(width, vocab, bias=False)
    ids = torch.randint(0, vocab, (batch, seq))
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask[0, 3:] = True
    mask[1, 5:7] = True
    mask[2, 1:] = True  # row 3 has no completion at all
    return hidden, head, ids, mask


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_per_token_logps_match_naive_values_and_gradients(chunk_size: int, temperature: float) -> None:
    hidden, head, ids, mask = random_case()
    fast = completion_logps(
        hidden, ids, mask, head, chunk_size=chunk_size, per_token=True, temperature=temperature
    )
    assert fast.token_logps is not None and fast.token_logps.shape == ids.shape
    weights = torch.randn(ids.shape)  # a per-token loss, as online RL computes
    fast_grads = torch.autograd.grad((fast.token_logps * weights).sum(), (hidden, head.weight))

    naive = naive_token_logps(head(hidden) / temperature, ids, mask)
    naive_grads = torch.autograd.grad((naive * weights).sum(), (hidden, head.weight))
    assert_close(fast.token_logps, naive)
    assert (fast.token_logps[~mask] == 0).all()
    assert_close(fast.token_logps.sum(1), fast.logps)
    for got, expected in zip(fast_grads, naive_grads, strict=True):
        assert_close(got, expected)


@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_entropy_and_top_k_match_the_full_distribution(chunk_size: int) -> None:
    hidden, head, ids, mask = random_case(1)
    fast = completion_logps(hidden, ids, mask, head, chunk_size=chunk_size, entropy=True, top_k=4)
    log_probs = torch.log_softmax(head(hidden)[:, :-1].float(), dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    top_values, top_ids = log_probs.topk(4, dim=-1)
    scored = mask[:, 1:]
    assert_close(fast.token_entropy[:, 1:][scored], entropy[scored])
    assert_close(fast.top_k_logps[:, 1:][scored], top_values[scored])
    assert torch.equal(fast.top_k_ids[:, 1:][scored], top_ids[scored])
    assert (fast.token_entropy[~mask] == 0).all() and (fast.top_k_ids[~mask] == 0).all()
    # Entropy is differentiable too (an entropy bonus trains through it).
    (grad,) = torch.autograd.grad(fast.token_entropy.sum(), hidden)
    (expected,) = torch.autograd.grad((entropy * scored).sum(), hidden)
    assert_close(grad, expected)


def test_mean_logits_take_the_vocabulary_size_from_the_logits() -> None:
    """A ZeRO-3 partitioned head has ``weight.shape == [0]`` outside its forward: the vocabulary size must
    come from the logits, not the parameter."""

    class PartitionedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = identity_head(3)
            self.weight = nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves outside the forward

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return self.inner(hidden)

    hidden = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [9.0, 9.0, 9.0]]])
    out = completion_logps(
        hidden, torch.tensor([[0, 1, 0]]), torch.tensor([[False, True, True]]), PartitionedHead()
    )
    assert_close(out.mean_logits, torch.tensor([math.log(2) / 6]))
