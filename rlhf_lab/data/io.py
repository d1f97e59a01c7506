"""Reading tables of rows from JSONL, JSON, Parquet and CSV files.

Each file is read once, and checked not to have changed while it was read (its size, modification time and
inode before and after). JSONL and CSV are read a line at a time, each line bounded (`MAX_ROW_BYTES`), so one
huge line is a named error, not the whole of memory.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rlhf_lab.data.formats import DataError

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")

#: Longest line of a JSONL or CSV file, in bytes: far above any text row (images as base64 text included), far
#: below what parsing it would take from a machine's memory.
MAX_ROW_BYTES = 64 * 2**20

#: How much of an over-long line is read at a time to measure it.
_CHUNK = 2**20


def read_rows(path: str | Path, max_row_bytes: int = MAX_ROW_BYTES) -> list[dict]:
    """Read every record of a data file as a dict of column -> value.

    Supported: ``.jsonl`` (one object per line, blank lines skipped), ``.json`` (a list of objects,
    ``{"data": [...]}``, or a dict of equal-length column lists), ``.parquet`` and ``.csv`` (a header row, then
    one record per row; every cell is text, as the file holds it).

    Args:
        path: The file.
        max_row_bytes: Longest line of a JSONL or CSV file, in bytes (`MAX_ROW_BYTES`).

    Returns:
        The records in file order; row N in later errors is the 0-based index into this list.

    Raises:
        DataError: The file is missing, unreadable, of an unknown type, holds something other than rows, has a
            line longer than ``max_row_bytes``, or changed while it was read.
    """
    path = Path(path)
    file = str(path)
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(
            f"unknown file type {suffix or '(none)'!r}; expected one of: {', '.join(EXTENSIONS)}", file=file
        )
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a regular file", file=file)
    with _unchanged(path, file):
        if suffix == ".jsonl":
            rows = _read_jsonl(path, file, max_row_bytes)
        elif suffix == ".json":
            rows = _read_json(path, file)
        elif suffix == ".csv":
            rows = _read_csv(path, file, max_row_bytes)
        else:
            rows = _read_parquet(path, file)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(
                f"expected an object (column -> value), got {type(row).__name__}", file=file, row=index
            )
    return rows


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


@contextlib.contextmanager
def _unchanged(path: Path, file: str) -> Iterator[None]:
    """Raise when the file at ``path`` is another file, or was written, by the end of the block: a file
    rewritten while it is read gives some of its old rows and some of its new ones, silently."""
    try:
        before = _identity(path.stat())
    except OSError as error:
        raise DataError(f"cannot read the file: {error}", file=file) from error

    def changed() -> DataError | None:
        try:
            after = _identity(path.stat())
        except OSError:
            after = None
        if after == before:
            return None
        return DataError(
            "changed while it was read (its size, modification time or inode differ before and after); the "
            "rows read may mix two versions of it, so none is used. Rerun once it is written, or read a copy",
            file=file,
        )

    try:
        yield
    except DataError:
        # A half-written line reads as invalid JSON: the file changing is what to report.
        moved = changed()
        if moved is not None:
            raise moved from None
        raise
    moved = changed()
    if moved is not None:
        raise moved


def _read_text(path: Path, file: str) -> str:
    try:
        # utf-8-sig: a UTF-8 byte-order mark (as some editors write) is read, not rejected.
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the file: {error}", file=file) from error


def _open_binary(path: Path, file: str) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as error:
        raise DataError(f"cannot read the file: {error}", file=file) from error


def _lines(handle: IO[bytes], file: str, max_row_bytes: int) -> Iterator[tuple[int, str]]:
    """The file's lines (1-based numbers, text without the line break), each read with at most
    ``max_row_bytes`` bytes in memory: a longer line is measured in chunks and named."""
    number = 0
    while True:
        try:
            line = handle.readline(max_row_bytes + 1)
        except OSError as error:
            raise DataError(f"cannot read the file: {error}", file=file) from error
        if not line:
            return
        number += 1
        if len(line) > max_row_bytes and not line.endswith(b"\n"):
            size = len(line)
            while not line.endswith(b"\n"):
                line = handle.readline(_CHUNK)
                if not line:
                    break
                size += len(line)
            size -= line.endswith(b"\n")
            raise DataError(
                f"line {number}: the line is {size:,} bytes, over the limit of {max_row_bytes:,} bytes for one "
                "row; split it, or give its images as files (paths) rather than inline text",
                file=file,
            )
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"line {number}: cannot read the file: {error}", file=file) from None
        if number == 1:
            text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark (as some editors write) is no text
        yield number, text.removesuffix("\n")


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects keep the last of repeated keys silently; a data row must not say two things."""
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _DuplicateKey(key)
        record[key] = value
    return record


def _parse(text: str, file: str, where: str, row: int | None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as error:
        raise DataError(f"{where}duplicate key {error.key!r} in one object (JSON would keep only the last)",
                        file=file, row=row, field=error.key) from None  # fmt: skip
    except json.JSONDecodeError as error:
        raise DataError(f"{where}invalid JSON: {error}", file=file, row=row) from None
    except RecursionError:
        raise DataError(f"{where}JSON nested too deeply to be a data row", file=file, row=row) from None


def _read_jsonl(path: Path, file: str, max_row_bytes: int) -> list[Any]:
    rows = []
    with _open_binary(path, file) as handle:
        # JSON Lines are split at "\n" only: a JSON string may hold U+2028 or U+0085 as they are.
        for line_number, line in _lines(handle, file, max_row_bytes):
            if not line.strip():
                continue
            # Line numbers are 1-based, as editors show them; row numbers elsewhere are 0-based record indices.
            rows.append(_parse(line, file, f"line {line_number}: ", None))
    return rows


def _read_json(path: Path, file: str) -> list[Any]:
    data = _parse(_read_text(path, file), file, "", None)
    if isinstance(data, dict) and set(data) == {"data"}:
        data = data["data"]
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data and all(isinstance(column, list) for column in data.values()):
        lengths = {name: len(column) for name, column in data.items()}
        if len(set(lengths.values())) != 1:
            detail = ", ".join(f"{name}: {length}" for name, length in lengths.items())
            raise DataError(f"column lists have different lengths ({detail})", file=file)
        names = list(data)
        return [dict(zip(names, values, strict=True)) for values in zip(*data.values(), strict=True)]
    raise DataError(
        'expected a list of objects, {"data": [...]}, or an object of equal-length column lists; '
        f"got {type(data).__name__}",
        file=file,
    )


def _read_csv(path: Path, file: str, max_row_bytes: int) -> list[Any]:
    with _open_binary(path, file) as handle:
        # Lines keep their breaks: the csv module joins a quoted cell's lines itself.
        return _csv_rows(_csv_lines(_lines(handle, file, max_row_bytes)), file)


def _csv_lines(lines: Iterator[tuple[int, str]]) -> Iterator[str]:
    """Lines with their breaks, split as universal newlines split them (``\\r\\n``, ``\\n``, a lone ``\\r``)."""
    for _, line in lines:
        yield from re.findall(r"[^\r\n]*(?:\r\n|\r|\n)", line + "\n")


def _csv_rows(lines: Iterator[str], file: str) -> list[Any]:
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
        if header is None:
            return []
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise DataError(f"line 1: the header names column {duplicates[0]!r} twice", file=file)
        rows: list[dict[str, str]] = []
        for cells in reader:
            if not cells:
                continue  # a blank line is not a record
            if len(cells) != len(header):
                raise DataError(
                    f"line {reader.line_num}: {len(cells)} cells but the header has {len(header)} columns "
                    f"({', '.join(header)})",
                    file=file,
                    row=len(rows),
                )
            rows.append(dict(zip(header, cells, strict=True)))
    except csv.Error as error:
        raise DataError(f"line {reader.line_num}: invalid CSV ({error})", file=file) from None
    return rows


def _read_parquet(path: Path, file: str) -> list[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"cannot read the Parquet file: {error}", file=file) from error
    # `to_pylist` gives plain lists and dicts for nested columns, where pandas would give numpy arrays.
    return table.to_pylist()
