"""Where rows come from: local files or the Hugging Face hub (the synthetic task lives in synthetic.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from rlhf_lab.data.formats.mapping import ColumnMapping, read_registry
from rlhf_lab.data.io import EXTENSIONS, read_rows
from rlhf_lab.errors import ConfigError, check_range


@dataclass
class RowBlock:
    """Rows from one file or split.

    Attributes:
        name: The file (or hub split), named in errors.
        rows: The records.
        row_numbers: Their positions in the file (for error messages); None: ``0..len(rows)-1``.
        mapping: How the file's names map to the layouts' (a registry entry's columns, tags and format); None:
            as they are (``data.columns`` and ``data.tags`` still apply).
        image_dir: Where relative image paths point besides the file's own folder (a registry's folder).
    """

    name: str
    rows: list[dict[str, Any]]
    row_numbers: list[int] | None = None
    mapping: ColumnMapping | None = None
    image_dir: str | None = None


Splits = dict[str, list[RowBlock]]


def _split_off(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    num_eval = max(1, round(fraction * len(rows))) if rows else 0
    return sorted(order[num_eval:]), sorted(order[:num_eval])


@dataclass
class LocalFiles:
    """JSON, JSONL, Parquet or CSV files on disk, or an entry of a LLaMA-Factory / ms-swift registry file.

    Attributes:
        train_path: One path or a list of paths.
        eval_path: Held-out path(s); when empty, ``eval_fraction`` of the training rows is held out.
        eval_fraction: Share of training rows held out when no ``eval_path`` is given.
        seed: Seed of the held-out split.
        dataset_info: A ``dataset_info.json`` (LLaMA-Factory's object of entries, or ms-swift's list): its
            entry ``name`` gives the files (``file_name`` / ``dataset_path``, relative to the registry's
            folder, or a hub dataset: ``hf_hub_url`` / ``hf_dataset_id``), the layout (``formatting``,
            ``ranking``) and the names (``columns``, ``tags``), instead of ``train_path``.
        name: The entry of ``dataset_info`` to read.
    """

    train_path: Any = None
    eval_path: Any = None
    eval_fraction: float = 0.05
    seed: int = 0
    dataset_info: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        check_range(
            "data.source.eval_fraction",
            self.eval_fraction,
            0.0,
            1.0,
            low_inclusive=False,
            high_inclusive=False,
        )

    @staticmethod
    def _paths(value: Any) -> list[str]:
        if value in (None, "", []):
            return []
        return [str(value)] if isinstance(value, str) else [str(v) for v in value]

    def load(self) -> Splits:
        train_paths = self._paths(self.train_path)
        mapping, image_dir = None, None
        if self.dataset_info:
            if train_paths:
                raise ConfigError(
                    "data.source.train_path and data.source.dataset_info are both set; the registry entry names "
                    "its files, so give one"
                )
            entry = read_registry(self.dataset_info, self.name, EXTENSIONS)
            if entry.hub is not None:
                if self._paths(self.eval_path):
                    raise ConfigError(
                        f"data.source.eval_path is set, but entry {self.name!r} is a hub dataset; its held-out "
                        "rows are data.source.eval_fraction of it"
                    )
                hub = HubDataset(
                    name=entry.hub["name"],
                    subset=entry.hub["subset"],
                    train_split=entry.hub["split"],
                    eval_fraction=self.eval_fraction,
                    seed=self.seed,
                )
                hub_splits = hub.load()
                for block in (*hub_splits["train"], *hub_splits["val"]):
                    block.mapping, block.image_dir = entry.mapping, entry.image_dir
                return hub_splits
            train_paths, mapping, image_dir = entry.files, entry.mapping, entry.image_dir
        if not train_paths:
            raise ConfigError(
                "data.source.train_path is required (a file path or a list of paths), or "
                "data.source.dataset_info=<dataset_info.json> with data.source.name=<entry>"
            )
        splits: Splits = {"train": [], "val": []}
        eval_paths = self._paths(self.eval_path)
        for path in train_paths:
            rows = read_rows(path)
            if eval_paths:
                splits["train"].append(RowBlock(path, rows, None, mapping, image_dir))
            else:
                train_idx, eval_idx = _split_off(rows, self.eval_fraction, self.seed)
                splits["train"].append(
                    RowBlock(path, [rows[i] for i in train_idx], train_idx, mapping, image_dir)
                )
                splits["val"].append(
                    RowBlock(path, [rows[i] for i in eval_idx], eval_idx, mapping, image_dir)
                )
        for path in eval_paths:
            splits["val"].append(RowBlock(path, read_rows(path), None, mapping, image_dir))
        return splits


def _undecoded_images(dataset: Any) -> Any:
    """``dataset`` with its Image features left encoded: rows then hold ``{bytes, path}`` as stored (RLHF-V's
    Parquet), instead of images decoded to PIL and re-encoded to be checked and hashed."""
    import copy

    import datasets

    found = False

    def undecode(feature: Any) -> Any:
        nonlocal found
        if isinstance(feature, datasets.Image):
            found = True
            return datasets.Image(decode=False)
        if isinstance(feature, dict):
            return {key: undecode(value) for key, value in feature.items()}
        if hasattr(feature, "feature"):  # Sequence / List of a feature
            copied = copy.copy(feature)
            copied.feature = undecode(feature.feature)
            return copied
        if isinstance(feature, list):
            return [undecode(item) for item in feature]
        return feature

    features = datasets.Features({name: undecode(feature) for name, feature in dataset.features.items()})
    return dataset.cast(features) if found else dataset


@dataclass
class HubDataset:
    """A dataset loaded with ``datasets.load_dataset`` (e.g. ``HuggingFaceH4/ultrafeedback_binarized``).

    Attributes:
        name: Dataset id on the hub, or a local dataset directory.
        subset: Configuration name.
        train_split: Split used for training.
        eval_split: Held-out split; when empty, ``eval_fraction`` of the training split is held out.
        eval_fraction: Share of training rows held out when no ``eval_split`` is given.
        max_train_rows: Cap on training rows (``None`` = all).
        max_eval_rows: Cap on held-out rows.
        revision: Dataset revision.
        seed: Seed of the held-out split.
    """

    name: str = "???"
    subset: str | None = None
    train_split: str = "train"
    eval_split: str | None = None
    eval_fraction: float = 0.05
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    revision: str | None = None
    seed: int = 0
    columns: list[str] = field(default_factory=list)

    def _rows(self, split: str, limit: int | None) -> list[dict[str, Any]]:
        import datasets

        dataset = datasets.load_dataset(self.name, self.subset, split=split, revision=self.revision)
        if self.columns:
            dataset = dataset.select_columns(self.columns)
        dataset = _undecoded_images(dataset)
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        return [dict(row) for row in dataset]

    def load(self) -> Splits:
        label = f"{self.name}" + (f"/{self.subset}" if self.subset else "")
        train_rows = self._rows(self.train_split, self.max_train_rows)
        if self.eval_split:
            eval_rows = self._rows(self.eval_split, self.max_eval_rows)
            return {
                "train": [RowBlock(f"{label}[{self.train_split}]", train_rows)],
                "val": [RowBlock(f"{label}[{self.eval_split}]", eval_rows)],
            }
        train_idx, eval_idx = _split_off(train_rows, self.eval_fraction, self.seed)
        name = f"{label}[{self.train_split}]"
        return {
            "train": [RowBlock(name, [train_rows[i] for i in train_idx], train_idx)],
            "val": [RowBlock(name, [train_rows[i] for i in eval_idx], eval_idx)],
        }
