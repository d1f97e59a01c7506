"""NLL against hand-worked numbers."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from rlhf_lab.losses import nll_loss


def test_nll_is_mean_negative_logp_per_token() -> None:
    # -(-6)/3 = 2 and -(-1)/1 = 1
    assert_close(nll_loss(torch.tensor([-6.0, -1.0]), torch.tensor([3, 1])), torch.tensor([2.0, 1.0]))


def test_nll_of_empty_completion_does_not_divide_by_zero() -> None:
    assert_close(nll_loss(torch.tensor([0.0]), torch.tensor([0])), torch.tensor([0.0]))
