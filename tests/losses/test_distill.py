"""Distillation losses (GKD's generalised JSD) against hand-worked numbers, TRL, and the chunked path."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.logprobs import completion_distillation
from rlhf_lab.losses import generalized_jsd, generalized_jsd_loss
from rlhf_lab.losses.distill import distillation_tokens

L2, L3, L5, L7, L11 = (math.log(n) for n in (2, 3, 5, 7, 11))

# Two tokens over V = 3, given as probabilities (logits = log p + an arbitrary shift per row, since a
# softmax ignores shifts):
#   token 0: p_T = [1/2, 1/4, 1/4],  p_S = [1/8, 3/8, 1/2]
#   token 1: p_T = [1/3, 1/3, 1/3],  p_S = [1/2, 1/4, 1/4]
P_TEACHER = torch.tensor([[1 / 2, 1 / 4, 1 / 4], [1 / 3, 1 / 3, 1 / 3]])
P_STUDENT = torch.tensor([[1 / 8, 3 / 8, 1 / 2], [1 / 2, 1 / 4, 1 / 4]])
TEACHER = P_TEACHER.log() + torch.tensor([[1.3], [-0.7]])
STUDENT = P_STUDENT.log() + torch.tensor([[-2.0], [0.4]])

# KL(p_T || p_S) = sum p_T (log p_T - log p_S)
#   token 0: 1/2 log(4) + 1/4 log(2/3) + 1/4 log(1/2) = log 2 - 1/4 log 3
#   token 1: 1/3 [log(2/3) + log(4/3) + log(4/3)] = 1/3 log(32/27) = 5/3 log 2 - log 3
FORWARD_KL = torch.tensor([L2 - L3 / 4, 5 * L2 / 3 - L3])
# KL(p_S || p_T) = sum p_S (log p_S - log p_T)
#   token 0: 1/8 log(1/4) + 3/8 log(3/2) + 1/2 log(2) = -1/8 log 2 + 3/8 log 3
#   token 1: 1/2 log(3/2) + 2 * 1/4 log(3/4) = 1/2 log(9/8) = log 3 - 3/2 log 2
REVERSE_KL = torch.tensor([3 * L3 / 8 - L2 / 8, L3 - 3 * L2 / 2])

# beta = 0.5: M = (p_T + p_S) / 2
#   token 0: M = [5/16, 5/16, 6/16]
#     KL(p_T || M) = 1/2 log(8/5) + 1/4 log(4/5) + 1/4 log(4/6)
#     KL(p_S || M) = 1/8 log(2/5) + 3/8 log(6/5) + 1/2 log(8/6)
#   token 1: M = [5/12, 7/24, 7/24]
#     KL(p_T || M) = 1/3 log(4/5) + 2/3 log(8/7)
#     KL(p_S || M) = 1/2 log(6/5) + 1/2 log(6/7)
KL_T_M_0 = (3 * L2 - L5) / 2 + (2 * L2 - L5) / 4 + (L2 - L3) / 4
KL_S_M_0 = (L2 - L5) / 8 + 3 * (L2 + L3 - L5) / 8 + (2 * L2 - L3) / 2
KL_T_M_1 = (2 * L2 - L5) / 3 + 2 * (3 * L2 - L7) / 3
KL_S_M_1 = (L2 + L3 - L5) / 2 + (L2 + L3 - L7) / 2
JSD_HALF = torch.tensor([(KL_T_M_0 + KL_S_M_0) / 2, (KL_T_M_1 + KL_S_M_1) / 2])

# beta = 0.25, token 0 only: M = 1/4 p_T + 3/4 p_S = [7/32, 11/32, 14/32]
#   KL(p_T || M) = 1/2 log(16/7) + 1/4 log(8/11) + 1/4 log(8/14)
#   KL(p_S || M) = 1/8 log(4/7) + 3/8 log(12/11) + 1/2 log(16/14)
#   JSD = 1/4 KL(p_T || M) + 3/4 KL(p_S || M)
JSD_QUARTER_0 = ((4 * L2 - L7) / 2 + (3 * L2 - L11) / 4 + (2 * L2 - L7) / 4) / 4 + 3 * (
    (2 * L2 - L7) / 8 + 3 * (2 * L2 + L3 - L11) / 8 + (3 * L2 - L7) / 2
) / 4


def _random_logits(*shape: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# --- generalized_jsd ------------------------------------------------------------------------------------


def test_beta_zero_is_forward_kl_teacher_to_student() -> None:
    assert_close(generalized_jsd(STUDENT, TEACHER, beta=0.0), FORWARD_KL)


def test_beta_one_is_reverse_kl_student_to_teacher() -> None:
    assert_close(generalized_jsd(STUDENT, TEACHER, beta=1.0), REVERSE_KL)


def test_beta_half_is_jsd_against_the_mixture() -> None:
    assert_close(generalized_jsd(STUDENT, TEACHER, beta=0.5), JSD_HALF)


def test_beta_weights_the_teacher_in_the_mixture() -> None:
    # At 0.5 the mixture is symmetric, so this pins which side beta weighs: M = beta p_T + (1 - beta) p_S.
    assert_close(generalized_jsd(STUDENT[:1], TEACHER[:1], beta=0.25), torch.tensor([JSD_QUARTER_0]))


def test_jsd_is_zero_for_equal_logits() -> None:
    logits = _random_logits(4, 5, 7, seed=0)
    for beta in (0.0, 0.3, 0.5, 1.0):
        assert_close(generalized_jsd(logits, logits.clone(), beta=beta), torch.zeros(4, 5), atol=1e-6, rtol=0)


def test_jsd_at_half_is_symmetric_and_swapping_mirrors_beta() -> None:
    s, t = _random_logits(6, 9, seed=1), _random_logits(6, 9, seed=2)
    assert_close(generalized_jsd(s, t, beta=0.5), generalized_jsd(t, s, beta=0.5))
    # Off 0.5 it is not symmetric, but swapping the two sides is the same as beta -> 1 - beta
    # (forward KL of one order is the reverse KL of the other).
    assert not torch.allclose(generalized_jsd(s, t, beta=0.2), generalized_jsd(t, s, beta=0.2))
    for beta in (0.0, 0.2, 0.7, 1.0):
        assert_close(generalized_jsd(s, t, beta=beta), generalized_jsd(t, s, beta=1 - beta))
    assert_close(generalized_jsd(STUDENT, TEACHER, beta=0.0), generalized_jsd(TEACHER, STUDENT, beta=1.0))


def test_jsd_is_non_negative_and_bounded_on_random_inputs() -> None:
    s, t = _random_logits(8, 16, 50, seed=3, scale=5.0), _random_logits(8, 16, 50, seed=4, scale=5.0)
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        jsd = generalized_jsd(s, t, beta=beta)
        assert jsd.shape == (8, 16)
        assert torch.isfinite(jsd).all()
        assert (jsd >= -1e-6).all()
        assert (jsd > 1e-3).any()  # unequal inputs give a non-trivial divergence
        if 0 < beta < 1:
            # Each KL against the mixture is at most -log(weight of its own side in M).
            bound = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
            assert (jsd <= bound + 1e-5).all()


# --- temperature ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 2.0, 3.7])
def test_temperature_divides_the_logits(beta: float, temperature: float) -> None:
    s, t = _random_logits(3, 4, 10, seed=5), _random_logits(3, 4, 10, seed=6)
    assert_close(
        generalized_jsd(s, t, beta=beta, temperature=temperature),
        generalized_jsd(s / temperature, t / temperature, beta=beta, temperature=1.0),
    )


def test_temperature_two_against_hand_numbers() -> None:
    # logits = 2 log p, so at temperature 2 the distributions are token 0's p_T, p_S above, and the forward
    # KL is log 2 - 1/4 log 3. At temperature 1 they are p^2 renormalised:
    #   p_T ∝ [1/4, 1/16, 1/16] -> [2/3, 1/6, 1/6];  p_S ∝ [1/64, 9/64, 16/64] -> [1/26, 9/26, 16/26]
    #   KL = 2/3 log(52/3) + 1/6 log(26/54) + 1/6 log(26/96)
    student, teacher = 2 * P_STUDENT[:1].log(), 2 * P_TEACHER[:1].log()
    at_two = generalized_jsd(student, teacher, beta=0.0, temperature=2.0)
    at_one = generalized_jsd(student, teacher, beta=0.0, temperature=1.0)
    L13 = math.log(13)
    expected_one = (
        2 * (2 * L2 + L13 - L3) / 3 + (L13 - 3 * L3) / 6 + (L13 - 4 * L2 - L3) / 6
    )  # log(52/3), log(13/27), log(13/48)
    assert_close(at_two, torch.tensor([L2 - L3 / 4]))
    assert_close(at_one, torch.tensor([expected_one]))
    assert at_one.item() > at_two.item() + 0.1  # a higher temperature flattens both, shrinking the KL


# --- generalized_jsd_loss -------------------------------------------------------------------------------


def test_loss_is_mean_over_unmasked_tokens_by_hand() -> None:
    # [B=1, T=3, V=3]: the two hand tokens and, in between, a masked one with arbitrary logits.
    student = torch.stack([STUDENT[0], torch.tensor([50.0, -20.0, 3.0]), STUDENT[1]])[None]
    teacher = torch.stack([TEACHER[0], torch.tensor([-40.0, 9.0, 0.0]), TEACHER[1]])[None]
    labels = torch.tensor([[5, -100, 7]])
    # beta = 0: (KL_0 + KL_1) / 2 = (log 2 - 1/4 log 3 + 5/3 log 2 - log 3) / 2
    assert_close(
        generalized_jsd_loss(student, teacher, labels, beta=0.0),
        torch.tensor((8 * L2 / 3 - 5 * L3 / 4) / 2),
    )
    assert_close(generalized_jsd_loss(student, teacher, labels, beta=0.5), JSD_HALF.mean())


def test_masked_tokens_contribute_nothing() -> None:
    student, teacher = _random_logits(3, 5, 7, seed=7), _random_logits(3, 5, 7, seed=8)
    labels = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(9))
    labels[0, :2] = labels[1, 4] = labels[2, 1:4] = -100
    mask = labels != -100
    loss = generalized_jsd_loss(student, teacher, labels, beta=0.3, temperature=0.8)
    per_token = generalized_jsd(student, teacher, beta=0.3, temperature=0.8)
    assert_close(loss, per_token[mask].mean())
    # Change the masked tokens' logits arbitrarily: the loss does not move.
    noise_s, noise_t = _random_logits(3, 5, 7, seed=10, scale=30), _random_logits(3, 5, 7, seed=11, scale=30)
    masked = ~mask[..., None]
    changed = generalized_jsd_loss(
        torch.where(masked, noise_s, student),
        torch.where(masked, noise_t, teacher),
        labels,
        beta=0.3,
        temperature=0.8,
    )
    assert_close(changed, loss, atol=0, rtol=0)
    # ... and no gradient reaches them.
    student.requires_grad_(True)
    generalized_jsd_loss(student, teacher, labels, beta=0.3, temperature=0.8).backward()
    assert (student.grad[~mask] == 0).all()
    assert (student.grad[mask].abs().sum(-1) > 0).all()


def test_loss_without_labels_divides_the_sum_by_the_batch_size() -> None:
    # [B=2, T=1]: the two hand tokens, one per sequence: (KL_0 + KL_1) / 2; then [B=1, T=2]: KL_0 + KL_1
    by_batch = generalized_jsd_loss(STUDENT[:, None], TEACHER[:, None], beta=0.0)
    by_time = generalized_jsd_loss(STUDENT[None], TEACHER[None], beta=0.0)
    assert_close(by_batch, FORWARD_KL.sum() / 2)
    assert_close(by_time, FORWARD_KL.sum())


def test_fully_masked_loss_is_zero_not_nan() -> None:
    loss = generalized_jsd_loss(STUDENT[None], TEACHER[None], torch.full((1, 2), -100))
    assert_close(loss, torch.tensor(0.0))


@pytest.mark.parametrize("with_labels", [True, False])
@pytest.mark.parametrize(
    ("beta", "temperature"), list(itertools.product((0.0, 0.3, 0.5, 1.0), (1.0, 0.7, 2.0)))
)
def test_loss_matches_trl(beta: float, temperature: float, with_labels: bool) -> None:
    gkd = pytest.importorskip("trl.experimental.gkd")
    student, teacher = _random_logits(3, 6, 13, seed=12), _random_logits(3, 6, 13, seed=13)
    labels = None
    if with_labels:
        labels = torch.randint(0, 13, (3, 6), generator=torch.Generator().manual_seed(14))
        labels[0, :3] = labels[2, 5] = -100
    ours = generalized_jsd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    theirs = gkd.GKDTrainer.generalized_jsd_loss(
        student, teacher, labels=labels, beta=beta, temperature=temperature, reduction="batchmean"
    )
    assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


# --- distillation_tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_distillation_tokens_by_hand(temperature: float) -> None:
    # targets 1 and 0: nll = -log p_S[target] = -log(3/8), -log(1/2); nll and the KLs are at temperature 1
    # whatever the divergence's temperature.
    tokens = distillation_tokens(STUDENT, TEACHER, torch.tensor([1, 0]), beta=0.5, temperature=temperature)
    assert_close(tokens.nll, torch.tensor([3 * L2 - L3, L2]))
    assert_close(tokens.forward_kl, FORWARD_KL)
    assert_close(tokens.reverse_kl, REVERSE_KL)
    assert_close(tokens.divergence, generalized_jsd(STUDENT, TEACHER, beta=0.5, temperature=temperature))
    if temperature == 1.0:
        assert_close(tokens.divergence, JSD_HALF)
    assert all(t.dtype == torch.float32 for t in vars(tokens).values())


def test_distillation_tokens_metrics_are_detached() -> None:
    student = STUDENT.clone().requires_grad_(True)
    tokens = distillation_tokens(student, TEACHER, torch.tensor([1, 0]))
    assert tokens.divergence.requires_grad and tokens.nll.requires_grad
    assert not tokens.forward_kl.requires_grad and not tokens.reverse_kl.requires_grad


def test_teacher_topk_restricts_both_distributions_to_the_teachers_top_ids() -> None:
    # V = 4, k = 2. p_T = [0.2, 0.4, 0.1, 0.3]: top ids {1, 3}, renormalised [4/7, 3/7].
    # p_S = [0.3, 0.1, 0.4, 0.2] at ids {1, 3}: [0.1, 0.2] -> [1/3, 2/3].
    #   forward KL = 4/7 log(12/7) + 3/7 log(9/14)
    #   reverse KL = 1/3 log(7/12) + 2/3 log(14/9)
    teacher = torch.tensor([[0.2, 0.4, 0.1, 0.3]]).log() + 0.5
    student = (torch.tensor([[0.3, 0.1, 0.4, 0.2]]).log() - 1.0).requires_grad_(True)
    target = torch.tensor([2])
    forward = distillation_tokens(student, teacher, target, beta=0.0, teacher_topk=2)
    reverse = distillation_tokens(student, teacher, target, beta=1.0, teacher_topk=2)
    assert_close(forward.divergence, torch.tensor([4 * (2 * L2 + L3 - L7) / 7 + 3 * (2 * L3 - L2 - L7) / 7]))
    assert_close(reverse.divergence, torch.tensor([(L7 - 2 * L2 - L3) / 3 + 2 * (L2 + L7 - 2 * L3) / 3]))
    # nll and the metrics still use the full vocabulary: -log 0.4, and the full KLs
    #   KL(p_T || p_S) = 0.2 log(2/3) + 0.4 log 4 + 0.1 log(1/4) + 0.3 log(3/2)
    #                 = 1/2 log 2 + 1/10 log 3
    assert_close(forward.nll, torch.tensor([L5 - L2]))
    assert_close(forward.forward_kl, torch.tensor([L2 / 2 + L3 / 10]))
    # The divergence sees only the teacher's top ids: no gradient reaches the student's others.
    (grad,) = torch.autograd.grad(forward.divergence.sum(), student)
    assert (grad[0, [0, 2]] == 0).all()
    assert (grad[0, [1, 3]] != 0).all()


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_teacher_topk_at_or_above_vocab_is_the_full_computation(beta: float) -> None:
    s, t = _random_logits(5, 6, seed=15), _random_logits(5, 6, seed=16)
    targets = torch.randint(0, 6, (5,), generator=torch.Generator().manual_seed(17))
    full = distillation_tokens(s, t, targets, beta=beta, temperature=1.5, teacher_topk=0)
    for k in (6, 7, 100):
        topk = distillation_tokens(s, t, targets, beta=beta, temperature=1.5, teacher_topk=k)
        for name in ("divergence", "nll", "forward_kl", "reverse_kl"):
            assert_close(getattr(topk, name), getattr(full, name), atol=0, rtol=0)
    # ... and a smaller k really does change the divergence.
    assert not torch.allclose(
        distillation_tokens(s, t, targets, beta=beta, temperature=1.5, teacher_topk=3).divergence,
        full.divergence,
    )


# --- completion_distillation (chunked) vs a naive full computation --------------------------------------

N, T, H, V = 3, 6, 8, 11


def _setup() -> tuple[
    torch.Tensor, torch.nn.Linear, torch.Tensor, torch.nn.Linear, torch.Tensor, torch.Tensor
]:
    torch.manual_seed(18)
    student_hidden = torch.randn(N, T, H, requires_grad=True)
    student_head = torch.nn.Linear(H, V, bias=False)
    teacher_hidden = torch.randn(N, T, H)
    teacher_head = torch.nn.Linear(H, V, bias=False)
    input_ids = torch.randint(0, V, (N, T))
    completion_mask = torch.zeros(N, T, dtype=torch.bool)
    completion_mask[0, [0, 3, 4, 5]] = True  # position 0 is never scored (nothing predicts it)
    completion_mask[1, 1:] = True
    completion_mask[2, [2, 4]] = True
    return student_hidden, student_head, teacher_hidden, teacher_head, input_ids, completion_mask


@pytest.mark.parametrize("teacher_topk", [0, 4])
@pytest.mark.parametrize(("beta", "temperature"), [(0.5, 1.0), (0.0, 0.7), (1.0, 2.0), (0.3, 1.3)])
def test_chunked_equals_naive_values_and_gradients(
    beta: float, temperature: float, teacher_topk: int
) -> None:
    student_hidden, student_head, teacher_hidden, teacher_head, input_ids, completion_mask = _setup()
    calls = []

    def teacher_logits_at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        calls.append(rows.numel())
        assert not torch.is_grad_enabled()
        return teacher_head(teacher_hidden[:, :-1][rows, cols])

    # Naive: full [N, T-1, V] logits, then the scored positions.
    positions = completion_mask[:, 1:].nonzero(as_tuple=True)
    assert positions[0].numel() == 3 + 5 + 2
    full_s = student_head(student_hidden)[:, :-1]
    with torch.no_grad():
        full_t = teacher_head(teacher_hidden)[:, :-1]
    s, t = full_s[positions], full_t[positions]
    targets = input_ids[:, 1:][positions]
    if teacher_topk:
        top_t, ids = t.topk(teacher_topk, dim=-1)
        divergence = generalized_jsd(s.gather(-1, ids), top_t, beta=beta, temperature=temperature)
    else:
        divergence = generalized_jsd(s, t, beta=beta, temperature=temperature)
    nll = -torch.log_softmax(s, dim=-1).gather(-1, targets[:, None])[:, 0]
    forward_kl = generalized_jsd(s.detach(), t, beta=0.0)
    reverse_kl = generalized_jsd(s.detach(), t, beta=1.0)
    params = (student_hidden, student_head.weight)
    expected_grads = torch.autograd.grad(divergence.mean() + nll.mean(), params)

    for chunk_size in (1, 2, 5, 1000):
        calls.clear()
        tokens = completion_distillation(
            student_hidden,
            teacher_logits_at,
            input_ids,
            completion_mask,
            student_head,
            chunk_size=chunk_size,
            beta=beta,
            temperature=temperature,
            teacher_topk=teacher_topk,
        )
        assert calls == [min(chunk_size, 10 - start) for start in range(0, 10, chunk_size)]
        assert_close(tokens.divergence, divergence, atol=1e-6, rtol=1e-5)
        assert_close(tokens.nll, nll, atol=1e-6, rtol=1e-5)
        assert_close(tokens.forward_kl, forward_kl, atol=1e-6, rtol=1e-5)
        assert_close(tokens.reverse_kl, reverse_kl, atol=1e-6, rtol=1e-5)
        grads = torch.autograd.grad(tokens.divergence.mean() + tokens.nll.mean(), params)
        for got, want in zip(grads, expected_grads, strict=True):
            assert_close(got, want, atol=1e-6, rtol=1e-5)
        # The student hidden state only gets gradient where a scored token is predicted from it.
        scored_from = torch.zeros(N, T, dtype=torch.bool)
        scored_from[:, :-1] = completion_mask[:, 1:]
        assert (grads[0][~scored_from] == 0).all()
        assert (grads[0][scored_from].abs().sum(-1) > 0).all()
    assert teacher_head.weight.grad is None


def test_chunked_without_grad_equals_with_grad() -> None:
    student_hidden, student_head, teacher_hidden, teacher_head, input_ids, completion_mask = _setup()

    def teacher_logits_at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return teacher_head(teacher_hidden[:, :-1][rows, cols])

    args = (student_hidden, teacher_logits_at, input_ids, completion_mask, student_head)
    with_grad = completion_distillation(*args, chunk_size=3, beta=0.4)
    with torch.no_grad():
        without = completion_distillation(*args, chunk_size=3, beta=0.4)
    assert not without.divergence.requires_grad
    for name in ("divergence", "nll", "forward_kl", "reverse_kl"):
        assert_close(getattr(without, name), getattr(with_grad, name).detach())


def test_chunked_empty_mask_returns_empty_tensors() -> None:
    student_hidden, student_head, _, _, input_ids, _ = _setup()
    mask = torch.zeros(N, T, dtype=torch.bool)
    mask[:, 0] = True  # position 0 alone is never scored

    def teacher_logits_at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher is not called when nothing is scored")

    tokens = completion_distillation(
        student_hidden, teacher_logits_at, input_ids, mask, student_head, chunk_size=4
    )
    for name in ("divergence", "nll", "forward_kl", "reverse_kl"):
        value = getattr(tokens, name)
        assert value.shape == (0,)
        assert value.dtype == torch.float32
