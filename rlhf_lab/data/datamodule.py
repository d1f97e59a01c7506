"""The DataModule: rows -> canonical examples -> token ids -> padded batches."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rlhf_lab.data.collate import PreferenceCollator
from rlhf_lab.data.formats import PreferenceExample, convert_rows
from rlhf_lab.data.tokenize import TokenizedExample, TokenizeSettings, tokenize_examples
from rlhf_lab.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


class TokenizedDataset(Dataset):
    """Tokenised examples; items are ``(index, example)`` so batches carry their dataset indices."""

    def __init__(self, examples: list[TokenizedExample], pairs: bool = True) -> None:
        self.examples = examples
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[int, TokenizedExample]:
        example = self.examples[index]
        if not self.pairs and example.rejected_ids is not None:
            example = dataclasses.replace(example, rejected_ids=None)
        return index, example


class EpochSampler(Sampler[int]):
    """Order of epoch ``e`` is a permutation seeded by ``seed + e``, so any epoch can be regenerated.

    Lightning calls `set_epoch`. ``resume_offset`` says how many examples of the current epoch a restored
    run has already seen; they are skipped, so a run resumed mid-epoch sees the data an uninterrupted run
    would have seen. Under data parallelism rank ``r`` of ``w`` takes every ``w``-th index of the same
    permutation (the tail that does not divide evenly is dropped), so ``w`` ranks with batch ``b`` see
    the examples one process with batch ``w * b`` sees.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        shuffle: bool,
        resume_offset: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.resume_offset = resume_offset
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        order = order[: len(self) * self.world_size][self.rank :: self.world_size]
        # Only the first epoch a process runs can be a resumed one.
        skip = self.resume_offset() if self.resume_offset is not None else 0
        self.resume_offset = None
        return iter(order[skip if skip < len(order) else 0 :].tolist())

    def __len__(self) -> int:
        return self.size // self.world_size


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for message in value:
            yield message["content"]


class PreferenceDataModule(L.LightningDataModule):
    """Loads, validates, tokenises and batches preference (or SFT) data.

    Args:
        source: Where rows come from (`SyntheticPreferences`, `LocalFiles`, `HubDataset`).
        format: Row format, or ``auto`` to detect it from the columns.
        max_length: Longest prompt + completion, in tokens.
        max_prompt_length: Longest prompt, in tokens.
        truncation_mode: ``keep_end`` or ``keep_start`` for over-long prompts.
        batch_size: Pairs per training micro-batch (the policy sees twice as many sequences).
        eval_batch_size: Pairs per held-out batch (defaults to ``batch_size``).
        pad_to_multiple_of: Round padded length up to a multiple (e.g. 8 for tensor cores).
        num_workers: DataLoader workers.
        seed: Shuffling seed.
    """

    def __init__(
        self,
        source: Any,
        format: str = "auto",
        max_length: int | None = 512,
        max_prompt_length: int | None = 256,
        truncation_mode: str = "keep_end",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        pad_to_multiple_of: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be at least 1")
        self.source = source
        self.format = format
        self.settings = TokenizeSettings(
            max_length=max_length, max_prompt_length=max_prompt_length, truncation_mode=truncation_mode
        )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.pad_to_multiple_of = pad_to_multiple_of
        self.num_workers = num_workers
        self.seed = seed
        self.pairs = True
        self.tokenizer: Any = None
        self.examples: dict[str, list[PreferenceExample]] | None = None
        self.datasets: dict[str, TokenizedDataset] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def load_examples(self) -> dict[str, list[PreferenceExample]]:
        """Read and validate every row once (errors name the file, row and field)."""
        if self.examples is None:
            examples: dict[str, list[PreferenceExample]] = {split: [] for split in SPLITS}
            for split, blocks in self.source.load().items():
                for block in blocks:
                    converted, counts = convert_rows(
                        block.rows, self.format, file=block.name, row_numbers=block.row_numbers
                    )
                    examples[split].extend(converted)
                    for key, value in counts.items():
                        self.stats.setdefault(split, {}).setdefault(key, 0)
                        self.stats[split][key] += value
            if not examples["train"]:
                raise ConfigError("the training split is empty: check data.source")
            self.examples = examples
        return self.examples

    def corpus(self) -> Iterator[str]:
        """Message contents of the training examples (trains the tiny model's tokenizer)."""
        for example in self.load_examples()["train"]:
            for value in (example.prompt, example.chosen, example.rejected):
                yield from _texts(value)

    def set_tokenizer(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.datasets = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.tokenizer is None:
            raise RuntimeError("call set_tokenizer() before setup()")
        for split, examples in self.load_examples().items():
            tokenized, stats = tokenize_examples(examples, self.tokenizer, self.settings)
            self.stats.setdefault(split, {}).update(stats)
            self.datasets[split] = TokenizedDataset(tokenized, pairs=self.pairs)
        if not self.datasets["train"]:
            raise ConfigError(
                f"no training example fits data.max_length={self.settings.max_length} "
                f"(dropped {self.stats['train'].get('dropped_too_long', 0)})"
            )
        for split in SPLITS:
            log.info("data[%s]: %s", split, self.stats.get(split, {}))

    def collator(self) -> PreferenceCollator:
        return PreferenceCollator(
            pad_token_id=self.tokenizer.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of
        )

    def _loader(
        self, split: str, shuffle: bool, batch_size: int, resumable: bool = False, sharded: bool = True
    ) -> DataLoader:
        resume_offset = (lambda: self._batches_done_this_epoch() * batch_size) if resumable else None
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer and sharded else (0, 1)
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=EpochSampler(
                len(self.datasets[split]), self.seed, shuffle, resume_offset, rank, world_size
            ),
            collate_fn=self.collator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _batches_done_this_epoch(self) -> int:
        """Batches of the current epoch a restored run has processed (0 unless resuming mid-epoch)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        # `processed`, not `completed`: it also counts a batch whose checkpoint was written in on_train_batch_end.
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, batch_size=self.batch_size, resumable=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, batch_size=self.eval_batch_size)

    def reference_loaders(self) -> dict[str, DataLoader]:
        """Unshuffled loaders over every split (precomputing reference log-probs)."""
        return {
            split: self._loader(split, shuffle=False, batch_size=self.eval_batch_size, sharded=False)
            for split, dataset in self.datasets.items()
            if len(dataset)
        }

    def fingerprint(self) -> str:
        """Hash of the tokenised data and the tokenisation settings (keys the reference cache)."""
        digest = hashlib.sha256()
        digest.update(json.dumps(dataclasses.asdict(self.settings), sort_keys=True).encode())
        digest.update(str(self.pairs).encode())
        for split in sorted(self.datasets):
            digest.update(split.encode())
            for example in self.datasets[split].examples:
                for ids in (example.prompt_ids, example.chosen_ids, example.rejected_ids or []):
                    digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
                    digest.update(b"|")
        return digest.hexdigest()[:24]
