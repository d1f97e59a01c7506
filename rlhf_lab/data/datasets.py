"""What batches of each kind can hold, and the datasets and sampling of tokenised examples: KTO's
mismatched partners, seeded epoch order, length grouping."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from rlhf_lab.data.formats import PreferenceExample
from rlhf_lab.data.tokenize import TokenizedExample
from rlhf_lab.errors import ConfigError, check_choice

# What an objective's batches hold: chosen + rejected rows (DPO), chosen rows only (SFT), labelled
# completions plus mismatched rows (KTO), or prompts to generate from (online RL).
BATCH_KINDS = ("pairs", "single", "unpaired", "prompts")


def unsuitable(example: PreferenceExample, kind: str, completes_prompts: bool = False) -> str | None:
    """Why ``example`` cannot go into batches of ``kind``, or None when it can (``completes_prompts``: the
    objective completes prompt-only rows itself, as distillation's teacher does)."""
    if kind == "prompts":
        return None  # every row has a prompt; online RL generates its own completions
    if example.chosen is None and kind == "single" and completes_prompts:
        return None
    if example.chosen is None:
        return (
            "this row has a prompt and no completion (prompt-only data: for online RL, or distillation, whose "
            f"teacher completes it), which this objective cannot train on (batch_kind={kind!r})"
        )
    if kind == "pairs" and not example.is_pair:
        if example.label is not None:
            return (
                "pairwise objectives (e.g. algo=dpo) need paired data (chosen and rejected); this row is "
                "unpaired (prompt/completion/label): use an unpaired objective (algo=kto)"
            )
        return (
            "pairwise objectives (e.g. algo=dpo) need paired data (chosen and rejected); this row has no "
            "rejected completion (SFT data): use algo=sft, or add rejected completions"
        )
    if kind == "single" and example.label is False:
        return (
            "SFT (algo=sft) trains on every completion, but this row is labelled undesirable "
            "(label=false): use algo=kto, or keep only the desirable rows"
        )
    if kind == "unpaired" and not example.is_pair and example.label is None:
        return (
            "unpaired objectives (algo=kto) need prompt/completion/label rows or chosen/rejected pairs; "
            "this row has neither a label nor a rejected completion (SFT data)"
        )
    return None


class TokenizedDataset(Dataset):
    """Tokenised examples; items are ``(index, example)`` so batches carry their dataset indices.

    Args:
        examples: The tokenised examples.
        kind: One of `BATCH_KINDS`; ``single`` serves pairs as their chosen completion alone; ``unpaired``
            gives every example a mismatched partner (`mismatched_partners`) whose completion it carries.
        seed: Seeds the mismatched partners.
    """

    def __init__(self, examples: list[TokenizedExample], kind: str = "pairs", seed: int = 0) -> None:
        check_choice("batch kind", kind, BATCH_KINDS)
        self.examples = examples
        self.kind = kind
        self.partners = mismatched_partners(examples, seed) if kind == "unpaired" else None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[int, TokenizedExample]:
        example = self.examples[index]
        if self.kind == "single" and example.rejected_ids is not None:
            example = dataclasses.replace(example, rejected_ids=None, margin=None)
        elif self.partners is not None:
            partner = self.examples[self.partners[index]]
            example = dataclasses.replace(example, mismatched_ids=partner.chosen_ids)
        return index, example


def mismatched_partners(examples: list[TokenizedExample], seed: int) -> list[int]:
    """For each example, another example whose completion answers a different prompt (KTO's KL rows).

    Examples are visited in a seeded random order and each takes the next one in that order as its
    partner, skipping examples with the same prompt (paired data split by `to_unpaired` puts a prompt's
    two completions next to each other). Fixed per dataset, so an example's mismatched row never depends
    on the batch, the rank or the number of processes (TRL fixes its KL rows per dataset too).

    Raises:
        ConfigError: Exactly one example (it has no other completion to pair with).
    """
    size = len(examples)
    if size == 0:
        return []
    if size == 1:
        raise ConfigError(
            "KTO needs at least 2 examples in a split to estimate its KL term from mismatched rows; found 1"
        )
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    partners = [0] * size
    # A prompt is its tokens and the images it shows (one question about two pictures is two prompts).
    prompts = [
        (tuple(example.prompt_ids), tuple(image.digest for image in example.images or []))
        for example in examples
    ]
    for position, index in enumerate(order):
        prompt = prompts[index]
        for step in range(1, size):
            candidate = order[(position + step) % size]
            if prompts[candidate] != prompt:
                break
        else:  # every example has this prompt: any other completion will do
            candidate = order[(position + 1) % size]
        partners[index] = candidate
    return partners


def length_grouped(order: torch.Tensor, lengths: list[int], group_size: int) -> torch.Tensor:
    """``order`` cut into consecutive groups of ``group_size``, each sorted by length (longest first): the
    same examples in the same groups, so batches drawn from a group hold similar lengths and little padding."""
    groups = [order[start : start + group_size] for start in range(0, len(order), group_size)]
    keyed = [group[torch.tensor([-lengths[int(i)] for i in group]).argsort(stable=True)] for group in groups]
    return torch.cat(keyed) if keyed else order


class EpochSampler(Sampler[int]):
    """Order of epoch ``e`` is a permutation seeded by ``seed + e``, so any epoch can be regenerated.

    Lightning calls `set_epoch`. ``resume_offset`` says how many examples of the current epoch a restored
    run has already seen; they are skipped, so a run resumed mid-epoch sees the data an uninterrupted run
    would have seen. Under data parallelism rank ``r`` of ``w`` takes every ``w``-th index of the same
    permutation (the tail that does not divide evenly is dropped), so ``w`` ranks with batch ``b`` see
    the examples one process with batch ``w * b`` sees.

    With ``lengths`` and ``group_size``, each run of ``group_size`` examples of the permutation is sorted by
    length (`length_grouped`; ``data.group_by_length``): the epoch holds the same examples, batches less
    padding.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        shuffle: bool,
        resume_offset: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
        lengths: list[int] | None = None,
        group_size: int = 0,
    ) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.resume_offset = resume_offset
        self.rank = rank
        self.world_size = world_size
        self.lengths = lengths
        self.group_size = group_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        if self.lengths is not None and self.group_size > 1:
            order = length_grouped(order, self.lengths, self.group_size)
        per_rank = self.size // self.world_size
        order = order[: per_rank * self.world_size][self.rank :: self.world_size]
        # Only the first epoch a process runs can be a resumed one.
        skip = self.resume_offset() if self.resume_offset is not None else 0
        self.resume_offset = None
        return iter(order[skip if skip < len(order) else 0 :].tolist())

    def __len__(self) -> int:
        return self.size // self.world_size


def datasets_digest(settings: Any, batch_kind: str, datasets: dict[str, TokenizedDataset]) -> str:
    """Hash of the tokenised data, tokenisation settings, batch kind, images and labels, and KTO's
    mismatched partners: everything a precomputed reference table depends on from the data."""
    digest = hashlib.sha256()
    # The field bound (`chars_per_token`) acts only through the token ids hashed below; leaving it out keeps
    # the tables computed before it existed.
    fields = {key: value for key, value in dataclasses.asdict(settings).items() if key != "chars_per_token"}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    digest.update(batch_kind.encode())
    for split in sorted(datasets):
        digest.update(split.encode())
        for example in datasets[split].examples:
            for ids in (
                example.prompt_ids,
                example.chosen_ids,
                example.rejected_ids or [],
                example.rejected_prompt_ids or [],
            ):
                digest.update(array("q", ids).tobytes())
                digest.update(b"|")
            # The pixels change the log-probs as much as the tokens do.
            for image in [*(example.images or []), *(example.rejected_images or [])]:
                digest.update(image.digest.encode())
            if example.label is not None:
                digest.update(b"+" if example.label else b"-")
        partners = datasets[split].partners
        if partners is not None:  # KTO's mismatched rows are part of what a reference table holds
            digest.update(array("q", partners).tobytes())
    return digest.hexdigest()[:24]
