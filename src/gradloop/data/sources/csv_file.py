"""A CSV file read into cells: the rows of ``--data FILE.csv``, with a header row or without.

    _read_table(path, header)      -> _Table: the cells by column (stripped), each data row's number
    header "yes"                   row 1 names the columns
    header "no"                    row 1 is data; columns are named by position, "0", "1", ...
    header "auto"                  told from row 1's cells (:func:`_first_row_is_data`)

What the cells mean (features, target, categories) is :mod:`gradloop.data.sources.table`'s.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradloop.errors import DataError, shortened

MISSING = frozenset({"", "na", "nan", "?"})  # compared stripped and lower-cased


@dataclass(frozen=True)
class _Table:
    """A CSV file's cells (stripped of surrounding spaces) by column, and each data row's number;
    ``headerless``: the columns are named by position, row 1 being data."""

    path: Path
    names: list[str]
    columns: dict[str, list[str]]
    rows: list[int]
    headerless: bool = False

    def subset(self, keep: list[int]) -> _Table:
        return _Table(
            self.path,
            self.names,
            {n: [c[i] for i in keep] for n, c in self.columns.items()},
            [self.rows[i] for i in keep],
            self.headerless,
        )


def _read_table(path: Path, header: str = "yes") -> _Table:
    """The table at ``path``: row 1 its header (``header="yes"``), data (``"no"``), or told from its cells
    (``"auto"``, see the module docstring)."""
    lines = _read_rows(path)
    if not lines:
        raise DataError(f"{path} is empty; write a header row naming the columns, then one row per example")
    named = header == "yes" or (header == "auto" and not _first_row_is_data(lines))
    first_number, first = lines[0]
    names = _header(first, path, first_number) if named else [str(i) for i in range(len(first))]
    body = lines[1:] if named else lines
    columns: list[list[str]] = [[] for _ in names]
    for row_number, cells in body:
        if len(cells) != len(names):
            width = f"the header has {len(names)} columns" if named else f"row {first_number} has {len(names)}"
            raise DataError(
                f"row {row_number} of {path} has {len(cells)} cells but {width}; give every row one cell "
                "per column (quote cells that hold commas)"
            )
        for column, cell in zip(columns, cells):
            column.append(cell)
    if not body:
        raise DataError(f"{path} has a header row but no data rows; add one row per example below it")
    return _Table(path, names, dict(zip(names, columns)), [n for n, _ in body], headerless=not named)


def _first_row_is_data(lines: list[tuple[int, list[str]]]) -> bool:
    """Whether row 1 is data rather than names: all numbers, or a number (or a missing cell) above every
    column whose other cells are numbers, with at least one number among them (see the module docstring)."""
    first = lines[0][1]
    numbers = [_number(c) is not None and not _missing(c) for c in first]
    if all(numbers):
        return True
    if not any(numbers):
        return False  # names, or text data: nothing tells, so row 1 names the columns as it always did
    below = [
        [cells[j] for _, cells in lines[1:] if j < len(cells) and not _missing(cells[j])] for j in range(len(first))
    ]
    numeric = [j for j, cells in enumerate(below) if cells and _numbers(cells) is not None]
    return bool(numeric) and all(numbers[j] or _missing(first[j]) for j in numeric) and any(numbers[j] for j in numeric)


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Each row with a cell that is not empty, with its number in the file, cells stripped of surrounding spaces."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc}); pass a readable CSV file") from None
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path} is UTF-16 text; save it as UTF-8 (a spreadsheet's 'CSV UTF-8')")
    if b"\0" in content:
        raise DataError(
            f"{path} is not a text table (it holds NUL bytes: a binary file?); "
            "pass comma-separated text with a header row"
        )
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{content[exc.start]:02x} on line {line}); "
            "save it as UTF-8 (a spreadsheet's 'CSV UTF-8')"
        ) from None
    lines = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # a stray quote: an error, not swallowed rows
    row_number = 0
    try:
        for row_number, cells in enumerate(reader, start=1):
            cells = [c.strip() for c in cells]
            if any(cells):
                lines.append((row_number, cells))
    except csv.Error as exc:
        raise DataError(f"row {row_number + 1} of {path} is not valid CSV ({exc}); fix the quoting there") from None
    return lines


def _header(cells: list[str], path: Path, row_number: int) -> list[str]:
    seen: dict[str, int] = {}
    for position, name in enumerate(cells, start=1):
        if not name:
            raise DataError(f"column {position} of {path}'s header (row {row_number}) has no name; name every column")
        if name in seen:
            raise DataError(
                f"{path}'s header names column {_quote(name)} twice (columns {seen[name]} and {position}); "
                "give every column its own name"
            )
        seen[name] = position
    return cells


def _missing(cell: str) -> bool:
    return cell.lower() in MISSING


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _numbers(cells: list[str]) -> np.ndarray | None:
    """The cells as float64, or None if any is not a number."""
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        return None


def _quote(text: str) -> str:
    """A file's text, shown in a one-line message: quoted, escaped, cut short."""
    return repr(shortened(text, 40))
