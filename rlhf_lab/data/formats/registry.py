"""The registry of row layouts: each layout registers how it is detected and how a row converts.

Adding a layout is one module that calls `register` (imported by ``rlhf_lab/data/formats/__init__.py``) and
its tests. Detection tries the layouts in ``priority`` order (lowest first) and takes the first whose
``detect`` claims the file's columns and first row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlhf_lab.data.formats.example import DataError, Message
from rlhf_lab.data.formats.validate import RowContext


@dataclass
class Parsed:
    """What a layout's converter reads from a row, before the checks every layout shares.

    Attributes:
        prompt: Messages ending with a user (or tool-output) turn, or a string.
        chosen: The completion (messages or a string); None for a prompt-only row.
        rejected: The rejected completion of a pair; None otherwise.
        label: An unpaired (KTO) row's label; None otherwise.
        tools: The tools the conversation may call (`RowContext.tools`).
        images: Images the layout found in content parts, as ``(field, value)`` in placeholder order; None:
            the row's ``images`` column (or TRL's ``image``).
        rejected_images: Likewise for the rejected completion's own images (``(field, value)``); None: the
            ``rejected_images`` column.
        empty_prompt: The layout has no prompt (language modeling: every token is a completion token).
        origin: Where each part stands in the file, for errors: ``{"chosen": ("messages", 3)}`` says the
            chosen completion's first message is ``messages[3]``; a part not named is its own column.
    """

    prompt: list[Message] | str
    chosen: list[Message] | str | None = None
    rejected: list[Message] | str | None = None
    label: bool | None = None
    tools: list[dict[str, Any]] | None = None
    images: list[tuple[str, Any]] | None = None
    rejected_images: list[tuple[str, Any]] | None = None
    empty_prompt: bool = False
    origin: dict[str, tuple[str, int | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """One row layout.

    Attributes:
        name: What ``data.format`` calls it, and what the log and ``summary.json`` report.
        signature: The columns that identify it (``prompt + chosen + rejected, strings``), for messages.
        peers: Whose layout it is and what they call it (``TRL: preference, explicit prompt``).
        columns: Every column it reads (what ``data.columns`` may name).
        detect: Whether a file with these columns (and this first row) is in this layout.
        convert: Reads one row.
        priority: Detection order, lowest first.
        aliases: LLaMA-Factory's ``dataset_info.json`` column names for this layout -> the names it reads
            (alpaca's ``prompt``/``query``/``response`` are ``instruction``/``input``/``output``).
    """

    name: str
    signature: str
    peers: str
    columns: tuple[str, ...]
    detect: Callable[[frozenset[str], Mapping[str, Any]], bool]
    convert: Callable[[RowContext], Parsed]
    priority: int
    aliases: Mapping[str, str] = field(default_factory=dict)


LAYOUTS: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    """Add ``layout`` to the registry (its name must be new)."""
    if layout.name in LAYOUTS:
        raise ValueError(f"a layout named {layout.name!r} is registered twice")
    LAYOUTS[layout.name] = layout
    return layout


def layouts() -> list[Layout]:
    """The registered layouts in detection order."""
    return sorted(LAYOUTS.values(), key=lambda layout: layout.priority)


def known_columns() -> frozenset[str]:
    """Every column some layout reads (what ``data.columns`` may name), images and margins included."""
    return frozenset(column for layout in LAYOUTS.values() for column in layout.columns) | COMMON_COLUMNS


#: Columns every layout reads the same way.
COMMON_COLUMNS = frozenset({"images", "image", "rejected_images", "margin", "videos", "audios"})


def detect_format(columns: Iterable[str], first_row: Mapping[str, Any], *, file: str = "<data>") -> str:
    """The first layout (by priority) that claims ``columns`` and the first row's value types.

    Raises:
        DataError: No layout fits; the message lists each layout's columns.
    """
    names = frozenset(columns)
    for layout in layouts():
        if layout.detect(names, first_row):
            return layout.name
    expected = "; ".join(f"{layout.signature} ({layout.name})" for layout in layouts())
    raise DataError(
        f"cannot detect the data format from columns [{', '.join(sorted(names))}]; the layouts read: {expected}. "
        "Set data.format to choose one, or data.columns to map your column names",
        file=file,
    )
