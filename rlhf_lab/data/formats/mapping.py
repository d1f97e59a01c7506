"""Mapping a file's own names onto the names the layouts read: ``data.columns``, ``data.tags``, and the
entries of LLaMA-Factory's and ms-swift's ``dataset_info.json`` registry files.

``data.columns`` has LLaMA-Factory's meaning: *name the layout reads -> column in your file*
(``{chosen: better, messages: dialog}``). ``data.tags`` takes LLaMA-Factory's tag names (``role_tag``,
``content_tag``, ``user_tag``, ``assistant_tag``, ``system_tag``, ``observation_tag``, ``function_tag``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_lab.data.formats.speakers import TAGS
from rlhf_lab.errors import ConfigError


@dataclass
class ColumnMapping:
    """How one file's names map to the layouts' names.

    Attributes:
        columns: Name a layout reads -> the file's column.
        tags: LLaMA-Factory's tags: the keys and speaker names of the file's conversation turns.
        format: The layout the file is in (``auto``: detected).
        ranking: True: every row must be a pair (LLaMA-Factory's ``ranking``); None: not said.
        origin: Where the mapping was given (``data.columns``, ``dataset_info.json entry 'x'``), for errors.
    """

    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    format: str = "auto"
    ranking: bool | None = None
    origin: str = "data.columns"

    def __post_init__(self) -> None:
        for key, value in (*self.columns.items(), *self.tags.items()):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{self.origin}: {key}={value!r} must name a column (a non-empty string)")
        unknown = sorted(set(self.tags) - set(TAGS))
        if unknown:
            raise ConfigError(f"{self.origin}: unknown tag {unknown[0]!r}; the tags are: {', '.join(TAGS)}")

    def over(self, base: ColumnMapping | None) -> ColumnMapping:
        """This mapping on top of ``base`` (a registry entry's): its keys win, the rest come from ``base``."""
        if base is None:
            return self
        return ColumnMapping(
            columns={**base.columns, **self.columns},
            tags={**base.tags, **self.tags},
            format=self.format if self.format != "auto" else base.format,
            ranking=self.ranking if self.ranking is not None else base.ranking,
            origin=base.origin if not (self.columns or self.tags) else f"{self.origin} over {base.origin}",
        )

    def resolved(self, aliases: Mapping[str, str], known: frozenset[str]) -> dict[str, str]:
        """``columns`` with a layout's LLaMA-Factory aliases translated, each key checked against ``known``.

        Raises:
            ConfigError: A key that no layout reads.
        """
        out: dict[str, str] = {}
        for key, column in self.columns.items():
            name = aliases.get(key, key)
            if name not in known:
                raise ConfigError(
                    f"{self.origin}: {key!r} is not a column any layout reads; map one of: {', '.join(sorted(known))}"
                )
            out[name] = column
        return out


def rename(row: dict[str, Any], columns: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """``row`` with each mapped column under the name the layout reads, and the columns that mapping hid.

    A column of the file that has a layout's name which the mapping gives to another column is not read (it
    is returned, to be reported as ignored).
    """
    if not columns:
        return row, []
    moved = set(columns.values())
    out = {name: row[column] for name, column in columns.items() if column in row}
    hidden = []
    for key, value in row.items():
        if key in moved:
            continue
        if key in out:
            hidden.append(key)
            continue
        out[key] = value
    return out, hidden


# --- registry files --------------------------------------------------------------------------------------

#: LLaMA-Factory's ``formatting`` -> the layout that reads it.
LLAMAFACTORY_FORMATS = {"alpaca": "alpaca", "sharegpt": "sharegpt", "openai": "messages"}
#: The keys of a LLaMA-Factory entry rlhf_lab reads.
LLAMAFACTORY_KEYS = ("file_name", "hf_hub_url", "formatting", "ranking", "columns", "tags", "subset", "split")
#: The keys of an ms-swift entry rlhf_lab reads (``tags`` and ``help`` are descriptions, not names).
SWIFT_KEYS = (
    "dataset_path",
    "hf_dataset_id",
    "ms_dataset_id",
    "dataset_name",
    "columns",
    "split",
    "tags",
    "help",
)


@dataclass
class RegistryEntry:
    """One dataset of a registry file.

    Attributes:
        files: Local data files (a folder's data files, in name order); empty for a hub dataset.
        hub: ``{"name", "subset", "split"}`` of a hub dataset; None for local files.
        mapping: The entry's columns, tags, format and ranking.
        image_dir: Where its relative image paths point (LLaMA-Factory's ``media_dir``: the registry's folder).
    """

    files: list[str]
    hub: dict[str, Any] | None
    mapping: ColumnMapping
    image_dir: str


def read_registry(path: str | Path, name: str | None, extensions: tuple[str, ...]) -> RegistryEntry:
    """Entry ``name`` of a LLaMA-Factory ``dataset_info.json`` (an object of entries) or an ms-swift one (a list
    of entries with ``dataset_path`` / ``hf_dataset_id``).

    Raises:
        ConfigError: The file is missing or not JSON, ``name`` is not in it (the names it has are listed), or
            the entry uses a key rlhf_lab cannot honour.
    """
    path = Path(path)
    key = "data.source.dataset_info"
    if not path.is_file():
        raise ConfigError(f"{key}={str(path)!r}: file not found")
    try:
        registry = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{key}={str(path)!r}: not a readable JSON file ({error})") from None
    if isinstance(registry, dict):
        names = sorted(registry)
        if name is None or name not in registry:
            raise ConfigError(_no_entry(path, name, names))
        return _llamafactory(path, name, registry[name], extensions)
    if isinstance(registry, list):
        for entry in registry:
            if isinstance(entry, dict) and name in _swift_names(entry):
                return _swift(path, name, entry, extensions)
        names = sorted(n for entry in registry if isinstance(entry, dict) for n in _swift_names(entry)[:1])
        raise ConfigError(_no_entry(path, name, names))
    raise ConfigError(
        f"{key}={str(path)!r}: expected LLaMA-Factory's object of entries or ms-swift's list of entries, "
        f"got {type(registry).__name__}"
    )


def _no_entry(path: Path, name: str | None, names: list[str]) -> str:
    what = "data.source.name is not set" if name is None else f"data.source.name={name!r} is not an entry"
    return f"{what} of {path}; its entries: {', '.join(names) or 'none'}"


def _unsupported(path: Path, name: str, entry: dict, keys: tuple[str, ...]) -> None:
    extra = sorted(set(entry) - set(keys))
    if extra:
        raise ConfigError(
            f"{path} entry {name!r}: key {extra[0]!r} is not supported (rlhf_lab reads: {', '.join(keys)}); "
            "remove it or prepare the data to match"
        )


def _local_files(path: Path, value: str, extensions: tuple[str, ...], origin: str) -> list[str]:
    target = Path(value)
    target = target if target.is_absolute() else path.parent / target
    if target.is_dir():
        files = sorted(str(f) for f in target.iterdir() if f.suffix.lower() in extensions)
        if not files:
            raise ConfigError(f"{origin}: the folder {target} holds no data file ({', '.join(extensions)})")
        return files
    if not target.is_file():
        raise ConfigError(f"{origin}: data file not found: {target}")
    return [str(target)]


def _llamafactory(path: Path, name: str, entry: Any, extensions: tuple[str, ...]) -> RegistryEntry:
    origin = f"{path} entry {name!r}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{origin}: expected an object, got {type(entry).__name__}")
    _unsupported(path, name, entry, LLAMAFACTORY_KEYS)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in LLAMAFACTORY_FORMATS:
        raise ConfigError(
            f"{origin}: formatting={formatting!r}; expected one of: {', '.join(LLAMAFACTORY_FORMATS)}"
        )
    columns, tags = entry.get("columns") or {}, entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise ConfigError(f"{origin}: 'columns' and 'tags' must be objects")
    mapping = ColumnMapping(
        columns={str(k): v for k, v in columns.items() if v is not None},
        tags={str(k): v for k, v in tags.items() if v is not None},
        format=LLAMAFACTORY_FORMATS[formatting],
        ranking=bool(entry.get("ranking", False)) or None,
        origin=origin,
    )
    if entry.get("hf_hub_url"):
        hub = {
            "name": entry["hf_hub_url"],
            "subset": entry.get("subset"),
            "split": entry.get("split", "train"),
        }
        return RegistryEntry([], hub, mapping, str(path.parent))
    if not entry.get("file_name"):
        raise ConfigError(f"{origin}: has neither 'file_name' nor 'hf_hub_url'")
    return RegistryEntry(
        _local_files(path, entry["file_name"], extensions, origin), None, mapping, str(path.parent)
    )


def _swift_names(entry: dict) -> list[str]:
    return [
        str(entry[k])
        for k in ("dataset_name", "dataset_path", "hf_dataset_id", "ms_dataset_id")
        if entry.get(k)
    ]


def _swift(path: Path, name: str, entry: dict, extensions: tuple[str, ...]) -> RegistryEntry:
    origin = f"{path} entry {name!r}"
    _unsupported(path, name, entry, SWIFT_KEYS)
    columns = entry.get("columns") or {}
    if not isinstance(columns, dict):
        raise ConfigError(f"{origin}: 'columns' must be an object")
    # ms-swift maps the file's column -> its standard name, the other way round from LLaMA-Factory.
    mapping = ColumnMapping(columns={str(v): str(k) for k, v in columns.items()}, origin=origin)
    splits = entry.get("split") or ["train"]
    split = splits[0] if isinstance(splits, list) else splits
    if entry.get("dataset_path"):
        return RegistryEntry(
            _local_files(path, entry["dataset_path"], extensions, origin), None, mapping, str(path.parent)
        )
    if entry.get("hf_dataset_id"):
        return RegistryEntry(
            [], {"name": entry["hf_dataset_id"], "subset": None, "split": split}, mapping, str(path.parent)
        )
    raise ConfigError(
        f"{origin}: only ModelScope ids ('ms_dataset_id'); give a 'dataset_path' or 'hf_dataset_id'"
    )
