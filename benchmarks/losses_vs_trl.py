"""Formulas checked against the peer: rlhf_lab's pure losses against TRL's own loss methods, same inputs.

    python benchmarks/losses_vs_trl.py          (needs the bench extra: pip install -e ".[bench]")

TRL 1.16 keeps CPO's and ORPO's losses as trainer methods (``CPOTrainer.cpo_loss``,
``ORPOTrainer.odds_ratio_loss``) that read their settings from ``self``; they are called here on a stand-in
``self`` with those settings. TRL's trainers pass them per-token *mean* log-probs for CPO's ``ipo`` and
``simpo`` loss types and for ORPO; rlhf_lab's losses take summed log-probs and the lengths and normalise
themselves, so each is given what its own trainer would give it. Prints the largest absolute difference of
the per-example losses and rewards over random batches (TRL's DPO and KTO losses are inline in their
trainers' ``_compute_loss`` and not callable alone; their formulas are pinned by hand-worked tests).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def trl_self(**settings: float | str) -> SimpleNamespace:
    return SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), alpha=0.0, **settings)


def main() -> None:
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    from rlhf_lab.losses import cpo_loss, orpo_loss, simpo_loss

    torch.manual_seed(0)
    size = 4096
    chosen, rejected = (
        -torch.rand(size, dtype=torch.float64) * 60,
        -torch.rand(size, dtype=torch.float64) * 60,
    )
    chosen_lengths, rejected_lengths = torch.randint(1, 80, (size,)), torch.randint(1, 80, (size,))
    chosen_mean, rejected_mean = chosen / chosen_lengths, rejected / rejected_lengths
    rows = []

    def compare(name: str, ours, theirs) -> None:
        differences = [float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True)]
        rows.append((name, *differences))

    for loss_type, smoothing in (("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("ipo", 0.0)):
        mean = loss_type == "ipo"
        theirs = CPOTrainer.cpo_loss(
            trl_self(beta=0.3, loss_type=loss_type, label_smoothing=smoothing, simpo_gamma=0.5),
            chosen_mean if mean else chosen,
            rejected_mean if mean else rejected,
        )
        ours = cpo_loss(
            chosen, rejected, chosen_lengths, rejected_lengths, beta=0.3, cpo_alpha=0.0, loss_type=loss_type,
            label_smoothing=smoothing,
        )  # fmt: skip
        compare(f"cpo {loss_type} eps={smoothing}", (ours.losses, ours.chosen_rewards), theirs[:2])

    theirs = CPOTrainer.cpo_loss(
        trl_self(beta=2.0, loss_type="simpo", label_smoothing=0.1, simpo_gamma=0.5),
        chosen_mean,
        rejected_mean,
    )
    ours = simpo_loss(
        chosen, rejected, chosen_lengths, rejected_lengths, beta=2.0, gamma=0.5, label_smoothing=0.1
    )
    compare("simpo (trl cpo loss_type=simpo)", (ours.losses, ours.chosen_rewards), theirs[:2])

    # ORPO: TRL returns lambda * log sigma(log_odds) (the trainer subtracts it from the NLL), in float32.
    short = torch.clamp(chosen_mean, max=-1e-3).float(), torch.clamp(rejected_mean, max=-1e-3).float()
    theirs = ORPOTrainer.odds_ratio_loss(trl_self(beta=0.25), *short)
    nll = torch.rand(size)
    ours = orpo_loss(short[0], short[1], torch.ones(size), torch.ones(size), nll, lambda_=0.25)
    compare("orpo odds-ratio term", (nll - ours.losses, ours.chosen_rewards), (theirs[0], theirs[1]))
    compare("orpo log_odds_chosen", (ours.metrics["log_odds_chosen"],), (theirs[4],))

    print(f"{size} random pairs (float64; ORPO float32, as TRL casts); largest |rlhf_lab - trl|")
    print(f"{'loss':<34} {'losses':>10} {'rewards':>10}")
    for name, *differences in rows:
        print(f"{name:<34} " + " ".join(f"{d:>10.2e}" for d in differences))


if __name__ == "__main__":
    main()
