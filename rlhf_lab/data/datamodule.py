"""The DataModule: rows -> canonical examples -> token ids -> padded batches."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from rlhf_lab.data.collate import PreferenceCollator, PromptCollator, UnpairedCollator
from rlhf_lab.data.datasets import BATCH_KINDS, EpochSampler, TokenizedDataset, datasets_digest, unsuitable
from rlhf_lab.data.formats import (
    LAYOUTS,
    ColumnMapping,
    Conversion,
    DataError,
    PreferenceExample,
    convert_file,
    image_dir,
    to_unpaired,
)
from rlhf_lab.data.images import ImageLookup, ImageProcessing, blank_like
from rlhf_lab.data.options import check_sizes, prefix_sharing_on
from rlhf_lab.data.report import SPLITS, data_report, log_report
from rlhf_lab.data.tokenize import TokenizeSettings, field_limit, tokenize_examples
from rlhf_lab.errors import ConfigError, check_choice
from rlhf_lab.lightning_compat import batches_processed_this_epoch

log = logging.getLogger(__name__)

# The source split the held-out loop reads: ``test`` only where the source has one (``data=suite``).
EVAL_SPLITS = ("val", "test")


#: Longest run of non-space characters the tiny model's tokenizer is trained on at once: a BPE trainer's time
#: grows with the square of one pre-token's length, and a longer "word" teaches it nothing more.
CORPUS_WORD_CHARS = 1000


def trainable_text(text: str, limit: int | None) -> str:
    """``text`` as a tokenizer is trained on it: cut to ``limit`` characters (`field_limit`), each longer run of
    non-space characters split every `CORPUS_WORD_CHARS`; texts without such runs are left as they are."""
    if limit is not None:
        text = text[:limit]
    if len(text) <= CORPUS_WORD_CHARS:
        return text
    words = text.split()
    if all(len(word) <= CORPUS_WORD_CHARS for word in words):
        return text
    step = CORPUS_WORD_CHARS
    return " ".join(word[i : i + step] for word in words for i in range(0, len(word), step))


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for message in value:
            yield message["content"]


def _blanked(example: PreferenceExample) -> PreferenceExample:
    """``example`` with each image replaced by a blank one of its size (``data.blank_images``)."""
    if not example.images:
        return example
    blank = [blank_like(image) for image in example.images]
    rejected = None if example.rejected_images is None else [blank_like(i) for i in example.rejected_images]
    return dataclasses.replace(example, images=blank, rejected_images=rejected)


class PreferenceDataModule(L.LightningDataModule):
    """Loads, validates, tokenises and batches preference (or SFT, or unpaired KTO) data.

    `batch_kind` (set by the training entry point from the objective) says what batches hold:

    - ``pairs``: chosen rows then rejected rows (`PreferenceCollator`), in both splits.
    - ``single``: chosen rows only (SFT).
    - ``unpaired``: training batches from `UnpairedCollator` (labelled completions plus mismatched rows,
      with a ``labels`` key); paired data is split with `to_unpaired` first. The held-out split stays
      paired when the data is paired, so every objective reports ``val/rewards/accuracies`` on pairs.

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
        blank_images: Replace every image with a uniform grey one of the same size (same tokens, no visual
            information): the ablation that shows whether a run uses its images.
        prefix_sharing: Read each pair's prompt once: chosen and rejected packed in one row behind it, with an
            attention mask that keeps them apart (same log-probs and gradients, less compute on prompt-heavy
            data). ``auto`` (default) or true: text pairs, where the model takes the packed rows (sdpa or eager
            text decoders; others run unshared, saying why once); false: never.
        group_by_length: Training batches of similar lengths: each run of ``group_by_length`` batches of the
            epoch's shuffled order is sorted by length (0: off). The epoch's examples stay the same.
        eval_split: The source split the held-out loop (``val/...`` metrics) reads: ``val``, or ``test``
            where the source has one (``data=suite``); evaluation reports a run once on ``test`` with it.
        columns: Name a layout reads -> your file's column (LLaMA-Factory's ``columns``:
            ``{chosen: better}``); applied before the layout is detected.
        tags: LLaMA-Factory's ``tags`` for conversation turns (``role_tag``, ``content_tag``, ``user_tag``,
            ``assistant_tag``, ``system_tag``, ``observation_tag``, ``function_tag``).
        image_dir: Where relative image paths point when the data file's own folder does not hold them
            (LLaMA-Factory's ``media_dir``).
        cache_dir: Where images given as URLs are kept once fetched (``paths.cache_dir`` in the file-based data
            configs); None: fetched by every run.
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
        blank_images: bool = False,
        prefix_sharing: bool | str = "auto",
        group_by_length: int = 0,
        eval_split: str = "val",
        columns: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        image_dir: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        check_sizes(batch_size, eval_batch_size, group_by_length)
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
        self.blank_images = blank_images
        self.prefix_sharing = prefix_sharing_on(prefix_sharing)
        self.group_by_length = group_by_length
        check_choice("data.eval_split", eval_split, EVAL_SPLITS)
        self.eval_split = eval_split
        check_choice("data.format", format, ("auto", *LAYOUTS))
        # Built now: a bad mapping fails before any file is read.
        self.mapping = ColumnMapping(
            columns=dict(columns or {}), tags=dict(tags or {}), origin="data.columns"
        )
        self.image_dir = image_dir
        self.cache_dir = cache_dir
        #: Each split's files as converted (their layouts and what was not read), after `load_examples`.
        self.conversions: dict[str, list[Conversion]] = {}
        self._reported = False
        self.images: ImageProcessing | None = None
        self._batch_kind = "pairs"
        #: The objective completes prompt-only rows itself (distillation's teacher); set with `batch_kind`.
        self.completes_prompts = False
        self.tokenizer: Any = None
        self.examples: dict[str, list[PreferenceExample]] | None = None
        self.datasets: dict[str, TokenizedDataset] = {}
        #: Each split's batch kind after `setup` (held-out pairs stay ``pairs`` under ``unpaired``).
        self.split_kinds: dict[str, str] = {}
        self.stats: dict[str, dict[str, int]] = {}
        self._row_counts: dict[str, dict[str, int]] = {}

    @property
    def batch_kind(self) -> str:
        """``pairs``, ``single`` or ``unpaired``: what the objective's batches hold."""
        return self._batch_kind

    @batch_kind.setter
    def batch_kind(self, kind: str) -> None:
        check_choice("batch_kind", kind, BATCH_KINDS)
        if kind != self._batch_kind:
            # Datasets built for another kind hold the wrong rows; `setup` rebuilds them.
            self.datasets = {}
            self.split_kinds = {}
        self._batch_kind = kind

    def load_examples(self) -> dict[str, list[PreferenceExample]]:
        """Read and validate every row once (errors name the file, row and field)."""
        if self.examples is None:
            examples: dict[str, list[PreferenceExample]] = {split: [] for split in SPLITS}
            conversions: dict[str, list[Conversion]] = {split: [] for split in SPLITS}
            train_files: list[str] = []
            for split, blocks in self._source_splits().items():
                margin_files: dict[bool, list[str]] = {True: [], False: []}
                for block in blocks:
                    if split == "train":
                        train_files.append(block.name)
                    conversion = convert_file(
                        block.rows,
                        self.format,
                        file=block.name,
                        row_numbers=block.row_numbers,
                        mapping=self.mapping.over(block.mapping),
                        lookup=self._image_lookup(block.name, block.image_dir),
                    )
                    conversions[split].append(conversion)
                    converted = conversion.examples
                    if self.blank_images:
                        converted = [_blanked(example) for example in converted]
                    examples[split].extend(converted)
                    pairs = [example for example in converted if example.is_pair]
                    if pairs:
                        margin_files[pairs[0].margin is not None].append(block.name)
                    for key, value in conversion.counts().items():
                        self._row_counts.setdefault(split, {}).setdefault(key, 0)
                        self._row_counts[split][key] += value
                if margin_files[True] and margin_files[False]:
                    # `convert_file` checks within a file; a batch may draw from several.
                    raise DataError(
                        f"the pairs have no margin but those of {margin_files[True][0]} do; give every pair "
                        "of a split a margin or none",
                        file=margin_files[False][0],
                        field="margin",
                    )
            if not examples["train"]:
                counts = self._row_counts.get("train", {})
                rows, identical = counts.get("rows", 0), counts.get("identical_dropped", 0)
                why = (
                    f"all {rows} rows were dropped as identical chosen/rejected pairs"
                    if rows and identical == rows
                    else f"{rows} rows"
                )
                raise ConfigError(
                    f"the training split is empty: {', '.join(train_files) or 'no file'} ({why}); check data.source"
                )
            self.examples = examples
            self.conversions = conversions
            self.stats = {split: dict(counts) for split, counts in self._row_counts.items()}
        return self.examples

    def _image_lookup(self, file: str, registry_dir: str | None) -> ImageLookup:
        """Relative image paths: the data file's folder, a registry's folder, then ``data.image_dir``; fetched
        URLs cached under ``cache_dir`` (None: fetched by every run)."""
        dirs = [image_dir(file), *(Path(d) for d in (registry_dir, self.image_dir) if d)]
        unique = tuple(dict.fromkeys(d for d in dirs if d is not None))
        return ImageLookup(dirs=unique, cache_dir=Path(self.cache_dir) if self.cache_dir else None)

    def data_report(self) -> dict[str, Any]:
        """What was read, for the log and ``summary.json`` (`rlhf_lab.data.report.data_report`)."""
        return data_report(self.conversions, self._batch_kind)

    def _log_report(self) -> None:
        """Say once what was read: layouts (detected or given), rows per split, what no layout read."""
        if self._reported or not self.conversions:
            return
        self._reported = True
        log_report(self.conversions, self.data_report())

    def _source_splits(self) -> dict[str, Any]:
        """The source's blocks as ``train`` and ``val``: the held-out loop reads ``eval_split``."""
        loaded = self.source.load()
        if self.eval_split not in loaded:
            name = type(self.source).__name__
            raise ConfigError(
                f"data.eval_split={self.eval_split!r}: the source ({name}) has no such split; it has "
                f"{', '.join(sorted(loaded))}"
            )
        return {"train": loaded.get("train", []), "val": loaded[self.eval_split]}

    def check_batch_kind(self) -> None:
        """Fail when the data cannot make the batches `batch_kind` asks for.

        Raises:
            ConfigError: Names the first unsuitable row, what is wrong and which objective fits the data.
        """
        for split, examples in self.load_examples().items():
            problems = [
                (example, unsuitable(example, self._batch_kind, self.completes_prompts))
                for example in examples
            ]
            problems = [(example, problem) for example, problem in problems if problem is not None]
            if problems:
                example, problem = problems[0]
                raise ConfigError(
                    f"{example.source}: {problem} ({len(problems)} of {len(examples)} {split} rows)"
                )

    def corpus(self) -> Iterator[str]:
        """Message contents of the training examples (trains the tiny model's tokenizer), each bounded as it is
        before tokenising (`trainable_text`)."""
        # The tiny model is built from this corpus, so a data/objective mismatch fails before it is.
        self.check_batch_kind()
        limit = field_limit(self.settings)
        for example in self.load_examples()["train"]:
            for value in (example.prompt, example.chosen, example.rejected):
                for text in _texts(value):
                    yield trainable_text(text, limit)

    def set_tokenizer(self, tokenizer: Any, processor: Any = None) -> None:
        """The tokenizer, and a vision-language model's processor (None for a text model)."""
        self.tokenizer = tokenizer
        self.images = None if processor is None else ImageProcessing(processor)
        self.datasets = {}

    def _split_kind(self, split: str, examples: list[PreferenceExample]) -> str:
        if self._batch_kind != "unpaired" or split == "train":
            return self._batch_kind
        # Held-out pairs stay pairs, so KTO's val/rewards/accuracies compares chosen with rejected.
        return "pairs" if all(example.is_pair for example in examples) else "unpaired"

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.tokenizer is None:
            raise RuntimeError("call set_tokenizer() before setup()")
        self.check_batch_kind()
        for split, examples in self.load_examples().items():
            kind = self._split_kind(split, examples)
            stats = dict(self._row_counts.get(split, {}))
            if kind == "unpaired":
                stats["unpaired_from_pairs"] = sum(example.is_pair for example in examples)
                examples = to_unpaired(examples)
            elif kind == "prompts":
                # The prompt alone, tokenised as generation sees it (a completion's tokens can merge into it).
                examples = [
                    dataclasses.replace(
                        example, chosen=None, rejected=None, label=None, margin=None, rejected_images=None
                    )
                    for example in examples
                ]
            tokenized, token_stats = tokenize_examples(examples, self.tokenizer, self.settings, self.images)
            self.stats[split] = {**stats, **token_stats}
            self.split_kinds[split] = kind
            self.datasets[split] = TokenizedDataset(tokenized, kind=kind, seed=self.seed)
        if not self.datasets["train"]:
            raise ConfigError(
                f"no training example fits data.max_length={self.settings.max_length} "
                f"(dropped {self.stats['train'].get('dropped_too_long', 0)})"
            )
        self._log_report()
        for split in SPLITS:
            log.info("data[%s] (%s): %s", split, self.split_kinds[split], self.stats.get(split, {}))

    def collator(self, split: str = "train") -> PreferenceCollator | UnpairedCollator | PromptCollator:
        """The collator for ``split``'s batch kind (see `split_kinds`)."""
        return self.collator_for(self.split_kinds.get(split, "pairs"))

    def readable(self, text: str) -> str:
        """Decoded text with each image's run of image tokens shown as one ``<image>``."""
        return text if self.images is None else self.images.readable(text)

    def collator_for(self, kind: str) -> PreferenceCollator | UnpairedCollator | PromptCollator:
        """A collator making batches of ``kind`` (``prompts``, ``unpaired``; else pairs or single rows)."""
        pad = self.tokenizer.pad_token_id
        if kind == "prompts":
            return PromptCollator(pad_token_id=pad, images=self.images)
        if kind == "unpaired":
            return UnpairedCollator(
                pad_token_id=pad,
                max_length=self.settings.max_length,
                pad_to_multiple_of=self.pad_to_multiple_of,
                images=self.images,
            )
        return PreferenceCollator(
            pad_token_id=pad,
            pad_to_multiple_of=self.pad_to_multiple_of,
            images=self.images,
            prefix_sharing=self.prefix_sharing,
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
                len(self.datasets[split]),
                self.seed,
                shuffle,
                resume_offset,
                rank,
                world_size,
                lengths=self._lengths(split) if shuffle and self.group_by_length else None,
                # Whole batches of every rank per group, so each rank's batches are length-homogeneous.
                group_size=self.group_by_length * batch_size * world_size,
            ),
            collate_fn=self.collator(split),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _lengths(self, split: str) -> list[int]:
        """Each example's longest row in tokens (what its batch is padded to)."""
        return [
            len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids or []))
            for e in self.datasets[split].examples
        ]

    def _batches_done_this_epoch(self) -> int:
        """Batches of the current epoch a restored run has processed (0 unless resuming mid-epoch)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        # `processed`, not `completed`: it also counts a batch whose checkpoint was written in on_train_batch_end.
        return batches_processed_this_epoch(trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, batch_size=self.batch_size, resumable=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, batch_size=self.eval_batch_size)

    def reference_loaders(self) -> dict[str, DataLoader]:
        """Unshuffled loaders over every split (precomputing reference log-probs).

        Their batches have the row layout training and validation use for each split (KTO's mismatched rows
        included: an example's partner is fixed by the dataset, not by the batch).
        """
        return {
            split: self._loader(split, shuffle=False, batch_size=self.eval_batch_size, sharded=False)
            for split, dataset in self.datasets.items()
            if len(dataset)
        }

    def fingerprint(self) -> str:
        """Hash of the tokenised data, tokenisation settings, batch kind and mismatched partners (keys the
        reference cache); computed once per set of datasets."""
        datasets = tuple(id(dataset) for dataset in self.datasets.values())
        cached = getattr(self, "_fingerprint", None)
        if cached is not None and cached[0] == datasets:
            return cached[1]
        digest = datasets_digest(self.settings, self._batch_kind, self.datasets)
        self._fingerprint = (datasets, digest)
        return self._fingerprint[1]
