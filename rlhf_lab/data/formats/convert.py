"""Converting a file's rows: detect (or take) the layout, rename mapped columns, read each row through its
layout, then the checks every layout shares (texts, images, margins), and report what was not read.

Row numbers in errors (``row N``) are 0-based indices of the records in a file, in file order, the same
index a `datasets`/pandas table would show; blank JSONL lines are not records and are not counted.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_lab.data.formats.example import DataError, Message, PreferenceExample
from rlhf_lab.data.formats.mapping import ColumnMapping, rename
from rlhf_lab.data.formats.registry import LAYOUTS, Parsed, detect_format, known_columns
from rlhf_lab.data.formats.speakers import speakers_from_tags
from rlhf_lab.data.formats.texts import check_texts
from rlhf_lab.data.formats.turns import take_loss_weights
from rlhf_lab.data.formats.validate import RowContext
from rlhf_lab.data.images import IMAGE_PLACEHOLDER, ImageLookup, ImageSource, count_placeholders
from rlhf_lab.errors import check_choice

logger = logging.getLogger(__name__)


@dataclass
class Conversion:
    """One file's rows, converted.

    Attributes:
        file: The file (or hub split) the rows came from.
        examples: The examples, in file order (identical pairs left out).
        rows: Records read.
        identical_dropped: Pairs dropped because chosen and rejected say and show the same.
        format: The layout the rows were read as.
        detected: True when the layout was detected, False when ``data.format`` (or a registry entry) gave it.
        unused_columns: Columns no row's layout read (passed to online-RL reward functions; otherwise ignored),
            and columns a ``data.columns`` mapping hid.
        unused_keys: Message keys nothing reads (``messages[].loss_weight``).
        images_placed: Rows whose images had no ``<image>`` placeholder and were put at the start of the first
            user turn (TRL's rule for string content).
        multi_turn: Rows with a completion whose prompt holds earlier assistant turns: those are context, only
            the completion is trained on (LLaMA-Factory and ms-swift train every assistant turn of SFT data).
    """

    file: str
    examples: list[PreferenceExample]
    rows: int
    identical_dropped: int
    format: str
    detected: bool
    unused_columns: list[str] = field(default_factory=list)
    unused_keys: list[str] = field(default_factory=list)
    images_placed: int = 0
    multi_turn: int = 0

    def counts(self) -> dict[str, int]:
        return {"rows": self.rows, "identical_dropped": self.identical_dropped}


def image_dir(file: str) -> Path | None:
    """Where a data file's relative image paths point from: the file's own directory (None: not a file)."""
    path = Path(file)
    return path.parent if path.is_file() else None


def default_lookup(file: str) -> ImageLookup:
    directory = image_dir(file)
    return ImageLookup(dirs=() if directory is None else (directory,))


def _place_images(prompt: list[Message] | str, count: int) -> list[Message] | str:
    """TRL's rule for images given without placeholders: all of them at the start of the first user turn."""
    marks = IMAGE_PLACEHOLDER * count
    if isinstance(prompt, str):
        return marks + prompt
    placed = [dict(message) for message in prompt]
    first_user = next(i for i, message in enumerate(placed) if message["role"] == "user")
    placed[first_user]["content"] = marks + placed[first_user]["content"]
    return placed


def _images(
    context: RowContext, parsed: Parsed
) -> tuple[list[ImageSource] | None, list[ImageSource] | None, bool]:
    """The row's images and rejected images, read and matched against the prompt's placeholders (which are put
    in first when the prompt has none); whether they were put in."""
    for column in ("videos", "audios"):
        if context.get(column) not in (None, [], ""):
            raise context.error(f"{column} are not supported (images and text are)", column)
    given = context.one_of("images", "image")
    if parsed.images is None and context.part_images:
        # Content parts carried images the layout did not collect (TRL's layouts): they are the prompt's, in
        # order, and checked as any image is.
        parsed.images = list(context.part_images)
    images: list[ImageSource] | None
    rejected: list[ImageSource] | None
    if parsed.images is not None:
        if given is not None:
            raise context.error(
                f"the conversation's content parts carry images and the row has {given!r} too; give them once",
                given,
            )
        images = [context.image(value, where) for where, value in parsed.images]
    else:
        images = context.image_list(given or "images")
    column = given or "images"
    if parsed.rejected_images is not None:
        rejected = [context.image(value, where) for where, value in parsed.rejected_images]
    else:
        rejected = context.image_list("rejected_images")
    if images is None and rejected is None:
        return None, None, False
    if images is None:
        raise context.error("the row has rejected_images but no images for its chosen completion", "images")
    placed = False
    expected = count_placeholders(parsed.prompt)
    if (
        expected == 0
        and parsed.images is None
        and (
            not isinstance(parsed.prompt, list) or any(message["role"] == "user" for message in parsed.prompt)
        )
    ):
        parsed.prompt = _place_images(parsed.prompt, len(images))
        expected, placed = len(images), True
    for name, found in ((column, images), ("rejected_images", rejected)):
        if found is not None and len(found) != expected:
            raise context.error(
                f"{len(found)} image(s) but {expected} {IMAGE_PLACEHOLDER} placeholder(s) in the prompt; put "
                f"one {IMAGE_PLACEHOLDER} where each image belongs",
                name,
            )
    return images, rejected, placed


def _finish(context: RowContext, parsed: Parsed, ranking: bool | None) -> tuple[PreferenceExample, bool]:
    """The checks every layout shares, then the example; whether its images were placed."""
    if parsed.rejected is not None:
        completions = {"chosen": parsed.chosen, "rejected": parsed.rejected}
    else:
        completions = {} if parsed.chosen is None else {"completion": parsed.chosen}
        if ranking:
            raise context.error(
                "the dataset_info entry says ranking: true, but this row is not a pair (no chosen/rejected)",
                None,
            )
    take_loss_weights(context, completions, parsed.prompt)
    check_texts(context, parsed.prompt, completions, parsed.origin, parsed.empty_prompt)
    images, rejected_images, placed = _images(context, parsed)
    for name, completion in completions.items():
        parts = [completion] if isinstance(completion, str) else [m["content"] for m in completion or []]
        if any(IMAGE_PLACEHOLDER in part for part in parts):
            raise context.error(
                f"a completion contains {IMAGE_PLACEHOLDER}; images may only appear in the prompt", name
            )
    if rejected_images is not None and parsed.rejected is None:
        raise context.error("rejected_images needs a rejected completion to show them to", "rejected_images")
    example = PreferenceExample(
        prompt=parsed.prompt,
        chosen=parsed.chosen,
        rejected=parsed.rejected,
        source=f"{context.file}:row {context.row_index}",
        label=parsed.label,
        # A margin belongs to a pair; SFT, KTO and prompt-only rows have nothing to put it on.
        margin=context.margin() if parsed.rejected is not None else None,
        images=images,
        rejected_images=rejected_images,
        tools=parsed.tools,
        columns={key: value for key, value in context.row.items() if key not in context.used},
    )
    return example, placed


def _identical(example: PreferenceExample) -> bool:
    """Chosen and rejected say and show the same: a pair with nothing to prefer."""
    if example.chosen != example.rejected:
        return False
    if example.rejected_images is None:
        return True
    return [image.digest for image in example.rejected_images] == [
        image.digest for image in example.images or []
    ]


def _checked_rows(
    rows: Iterable[dict], row_numbers: Sequence[int] | None, file: str
) -> tuple[list[dict], Sequence[int]]:
    """The rows as a list, each with its 0-based position in ``file``, every one checked to be an object."""
    rows = list(rows)
    if row_numbers is None:
        row_numbers = range(len(rows))
    elif len(row_numbers) != len(rows):
        raise ValueError(f"{file}: {len(row_numbers)} row numbers given for {len(rows)} rows")
    for row_number, row in zip(row_numbers, rows, strict=True):
        if not isinstance(row, dict):
            raise DataError(
                f"expected an object (column -> value), got {type(row).__name__}", file=file, row=row_number
            )
    return rows, row_numbers


def _mapped_columns(mapping: ColumnMapping, fmt: str, rows: list[dict], file: str) -> dict[str, str]:
    """Column a layout reads -> the file's column it is mapped to, each checked to be in the file."""
    columns = mapping.resolved(LAYOUTS[fmt].aliases if fmt != "auto" else {}, known_columns())
    if rows:
        present = set().union(*(row.keys() for row in rows))
        for name, column in columns.items():
            if column not in present:
                raise DataError(
                    f"{mapping.origin} maps {name!r} to column {column!r}, which the file does not have (its "
                    f"columns: {', '.join(sorted(map(str, present)))})",
                    file=file,
                )
    return columns


@dataclass
class _Tally:
    """The examples of a file's converted rows, and what is counted and collected on the way for its
    `Conversion` and its log lines.

    Attributes:
        file: The file the rows came from.
        examples: The examples kept, in file order.
        dropped: Identical pairs left out.
        placed: Rows whose images were put in front of the first user turn.
        multi_turn: Rows whose prompt holds earlier assistant turns.
        unused: Columns no row's layout read, and columns a mapping hid.
        unused_keys: Message keys nothing reads.
        first_pair: (row number, has a margin) of the first pair, to report a file that gives margins to
            some pairs only.
    """

    file: str
    examples: list[PreferenceExample] = field(default_factory=list)
    dropped: int = 0
    placed: int = 0
    multi_turn: int = 0
    unused: set[str] = field(default_factory=set)
    unused_keys: set[str] = field(default_factory=set)
    first_pair: tuple[int, bool] | None = None

    def add(
        self,
        example: PreferenceExample,
        row_number: int,
        placed: bool,
        hidden: list[str],
        unused_keys: set[str],
    ) -> None:
        """Count one converted row and keep its example unless it is an identical pair."""
        self.placed += placed
        self.multi_turn += (
            example.chosen is not None
            and isinstance(example.prompt, list)
            and any(message["role"] == "assistant" for message in example.prompt)
        )
        self.unused.update(example.columns)
        self.unused.update(hidden)
        self.unused_keys.update(unused_keys)
        if example.rejected is not None:
            self._check_margin(example, row_number)
            if _identical(example):
                self.dropped += 1
                return
        self.examples.append(example)

    def _check_margin(self, example: PreferenceExample, row_number: int) -> None:
        """Raise when the file gives a margin to some of its pairs only."""
        has_margin = example.margin is not None
        if self.first_pair is None:
            self.first_pair = (row_number, has_margin)
        elif has_margin != self.first_pair[1]:
            # A batch needs a margin for every pair or for none; fail here rather than mid-training.
            first = self.first_pair[0]
            with_, without = (row_number, first) if has_margin else (first, row_number)
            raise DataError(
                f"row {with_} has a margin but row {without} has none; give every pair a margin or none",
                file=self.file,
                row=without,
                field="margin",
            )

    def log(self, rows: int) -> None:
        """Log the identical pairs dropped, the rows whose images were placed, and the multi-turn rows."""
        if self.dropped:
            logger.warning(
                "%s: dropped %d of %d rows whose chosen and rejected are identical",
                self.file,
                self.dropped,
                rows,
            )
        if self.placed:
            logger.info(
                "%s: %d rows give images without an %s placeholder; each such row's images were put at the start "
                "of its first user turn (TRL's rule)",
                self.file,
                self.placed,
                IMAGE_PLACEHOLDER,
            )
        if self.multi_turn:
            logger.info(
                "%s: %d rows hold earlier assistant turns: each row trains on its completion (the last assistant "
                "turn), the earlier turns are its context",
                self.file,
                self.multi_turn,
            )

    def conversion(self, rows: int, fmt: str, detected: bool) -> Conversion:
        return Conversion(
            self.file,
            self.examples,
            rows,
            self.dropped,
            fmt,
            detected,
            sorted(map(str, self.unused)),
            sorted(self.unused_keys),
            self.placed,
            self.multi_turn,
        )


def convert_file(
    rows: Iterable[dict],
    fmt: str = "auto",
    *,
    file: str,
    row_numbers: Sequence[int] | None = None,
    mapping: ColumnMapping | None = None,
    lookup: ImageLookup | None = None,
) -> Conversion:
    """Detect the layout (unless given), rename mapped columns, validate and convert every row, dropping
    identical pairs.

    Args:
        rows: Records, e.g. from `rlhf_lab.data.io.read_rows`.
        fmt: ``auto`` or a registered layout (``data.format``); ``auto`` takes ``mapping.format`` when set.
        file: Source file, named in errors and in each example's ``source``.
        row_numbers: Each row's 0-based position in ``file`` when ``rows`` is a subset of it (e.g. a
            split carved out of one file); by default the position in ``rows``.
        mapping: ``data.columns`` / ``data.tags`` (and a registry entry's), None: the names as they are.
        lookup: Where relative image paths point (default: the file's own folder).

    Raises:
        ConfigError: ``fmt`` is not ``auto`` or a layout, or the mapping names a column no layout reads.
        DataError: A row is invalid, or the mapping names a column the file does not have.
    """
    mapping = mapping or ColumnMapping()
    fmt = mapping.format if fmt == "auto" else fmt  # data.format wins over a registry entry's
    check_choice("data.format", fmt, ("auto", *LAYOUTS))
    rows, row_numbers = _checked_rows(rows, row_numbers, file)
    detected = fmt == "auto"
    columns = _mapped_columns(mapping, fmt, rows, file)
    if detected:
        if not rows:
            return Conversion(file, [], 0, 0, "auto", True)
        first, _ = rename(rows[0], columns)
        fmt = detect_format(first.keys(), first, file=file)
    layout = LAYOUTS[fmt]
    # Saying the format was guessed explains a "missing column" error on an unexpected layout.
    label = f"{fmt} ({'detected' if detected else 'configured'})"
    speakers = speakers_from_tags(mapping.tags) if mapping.tags else None
    lookup = lookup or default_lookup(file)
    tally = _Tally(file)
    for row_number, row in zip(row_numbers, rows, strict=True):
        renamed, hidden = rename(row, columns)
        context = RowContext(renamed, label, file, row_number, lookup, columns, speakers)
        example, placed = _finish(context, layout.convert(context), mapping.ranking)
        tally.add(example, row_number, placed, hidden, context.unused_keys)
    tally.log(len(rows))
    return tally.conversion(len(rows), fmt, detected)


def convert_rows(
    rows: Iterable[dict], fmt: str = "auto", *, file: str, row_numbers: Sequence[int] | None = None
) -> tuple[list[PreferenceExample], dict[str, int]]:
    """`convert_file` without a mapping: the examples and ``{"rows": n, "identical_dropped": k}``."""
    conversion = convert_file(rows, fmt, file=file, row_numbers=row_numbers)
    return conversion.examples, conversion.counts()


def to_example(row: dict, fmt: str, *, file: str, row_index: int) -> PreferenceExample:
    """Validate one row of a known layout and convert it.

    Raises:
        DataError: The row does not fit the layout; the message names file, row and field.
    """
    check_choice("data.format", fmt, LAYOUTS)
    if not isinstance(row, dict):
        raise DataError(
            f"expected an object (column -> value), got {type(row).__name__}", file=file, row=row_index
        )
    context = RowContext(row, fmt, file, row_index, default_lookup(file))
    return _finish(context, LAYOUTS[fmt].convert(context), None)[0]


def to_unpaired(examples: Iterable[PreferenceExample]) -> list[PreferenceExample]:
    """Split pairs into labelled completions for unpaired objectives (KTO).

    Each pair becomes ``(prompt, chosen, label=True)`` followed by ``(prompt, rejected, label=False)``;
    rows that are already unpaired (a label and no rejected) pass through. The per-pair ``margin`` is
    dropped, since it belongs to neither completion alone.

    Raises:
        DataError: A row is neither a pair nor labelled (SFT or prompt-only rows).
    """
    unpaired = []
    for example in examples:
        if example.chosen is not None and example.rejected is not None:
            unpaired.append(
                dataclasses.replace(example, rejected=None, label=True, margin=None, rejected_images=None)
            )
            unpaired.append(
                dataclasses.replace(
                    example,
                    chosen=example.rejected,
                    rejected=None,
                    label=False,
                    margin=None,
                    images=example.rejected_images or example.images,
                    rejected_images=None,
                )
            )
        elif example.chosen is not None and example.label is not None:
            unpaired.append(example)
        else:
            what = "a prompt-only row" if example.chosen is None else "an SFT row (no rejected, no label)"
            raise DataError(
                f"{what} cannot be used by an unpaired objective (KTO), which needs chosen/rejected pairs "
                "or prompt/completion/label rows",
                file=example.source,
            )
    return unpaired
