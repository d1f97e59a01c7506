"""Reading tables of rows from JSONL, JSON, Parquet and CSV files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from rlhf_lab.data.formats import DataError

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")


def read_rows(path: str | Path) -> list[dict]:
    """Read every record of a data file as a dict of column -> value.

    Supported: ``.jsonl`` (one object per line, blank lines skipped), ``.json`` (a list of objects,
    ``{"data": [...]}``, or a dict of equal-length column lists), ``.parquet`` and ``.csv`` (a header row, then
    one record per row; every cell is text, as the file holds it).

    Args:
        path: The file.

    Returns:
        The records in file order; row N in later errors is the 0-based index into this list.

    Raises:
        DataError: The file is missing, unreadable, of an unknown type, or holds something other than rows.
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
    if suffix == ".jsonl":
        rows = _read_jsonl(path, file)
    elif suffix == ".json":
        rows = _read_json(path, file)
    elif suffix == ".csv":
        rows = _read_csv(path, file)
    else:
        rows = _read_parquet(path, file)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(
                f"expected an object (column -> value), got {type(row).__name__}", file=file, row=index
            )
    return rows


def _read_text(path: Path, file: str) -> str:
    try:
        # utf-8-sig: a UTF-8 byte-order mark (as some editors write) is read, not rejected.
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the file: {error}", file=file) from error


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


def _read_jsonl(path: Path, file: str) -> list[Any]:
    rows = []
    for line_number, line in enumerate(_read_text(path, file).splitlines(), start=1):
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


def _read_csv(path: Path, file: str) -> list[Any]:
    text = _read_text(path, file)
    # newline="": quoted cells keep their own line breaks (the csv module's rule).
    reader = csv.reader(io.StringIO(text, newline=""))
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
