"""What every reader shares: the normalized rows, table and format specs, field parsers, and the quarantine.

A format module describes its files with `TableSpec`s whose `parse` turns one
decoded line into an `Interaction`, `User` or `Item`, built from the field
parsers here so every format applies the same normalization rules (see the
package docstring). A line that does not parse raises `MalformedRow`;
`parse_raw_line` (used line by line by the Beam ingestion) and `iter_rows`
(used by the plain-Python readers) turn that into a quarantined row with its
reason, line number and raw bytes instead of stopping the read.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

TABLES = ("interactions", "users", "items")


# --------------------------------------------------------------------------- rows


class MalformedRow(ValueError):  # noqa: N818 - name fixed by the ingestion API
    """A line that cannot be turned into a normalized row.

    `reason` is a short human-readable explanation. `line_number` (1-based,
    counting header lines), `raw` (the line's bytes without the newline) and
    `table` are filled in by the readers when they know them.
    """

    def __init__(
        self,
        reason: str,
        line_number: int | None = None,
        raw: bytes | None = None,
        table: str | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.line_number = line_number
        self.raw = raw
        self.table = table

    def __str__(self) -> str:
        where = []
        if self.table is not None:
            where.append(self.table)
        if self.line_number is not None:
            where.append(f"line {self.line_number}")
        return f"{' '.join(where)}: {self.reason}" if where else self.reason

    def __repr__(self) -> str:
        return (
            f"MalformedRow({self.reason!r}, line_number={self.line_number!r}, raw={self.raw!r}, table={self.table!r})"
        )


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    rating: float
    timestamp: int  # unix seconds, UTC


@dataclass(frozen=True)
class User:
    user_id: str
    age: int = -1  # -1 unknown
    gender: str = ""  # "" unknown
    occupation: str = ""  # name, "" unknown
    zip_code: str = ""  # "" unknown


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    release_year: int = 0  # 0 unknown
    genres: tuple[str, ...] = ()


Row = Interaction | User | Item


# -------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class TableSpec:
    filename: str
    encoding: str
    header_lines: int
    parse: Callable[[str], Row]  # decoded line (no newline) -> row, or raise MalformedRow


# The two hooks a format may give the registry (see DatasetFormat).
Detector = Callable[[Path], str | None]
Binder = Callable[[Path, str, TableSpec], TableSpec | None]


@dataclass(frozen=True)
class DatasetFormat:
    """One on-disk format: a spec per table (None: the format has no such table) and the rating scale.

    How the registry finds and reads a dataset of this format:
    `detect_files` are the files that identify it in a directory (all must be
    there; shown when no format matches). A format that files alone cannot
    identify gives `detect(data_dir)` instead, returning its name -- or a
    sibling's it cannot be told from by files, as ml-20m does for ml-25m --
    or None, and raising ValueError when the directory only half looks like
    it. `bind(data_dir, table, spec)` fits a spec to the files actually there
    (checks or reads the header) and returns None for an optional table that
    is absent; without it the spec is used as is.
    """

    name: str
    interactions: TableSpec
    users: TableSpec | None
    items: TableSpec | None
    rating_range: tuple[float, float]
    detect_files: tuple[str, ...] = ()
    detect: Detector | None = None
    bind: Binder | None = None

    def table(self, table: str) -> TableSpec | None:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
        return getattr(self, table)

    def detected_in(self, data_dir: Path) -> str | None:
        """The name of the format `data_dir` holds if it is this one (or a sibling), else None."""
        if self.detect is not None:
            return self.detect(data_dir)
        if self.detect_files and has_files(data_dir, self.name, self.detect_files):
            return self.name
        return None


def has_files(data_dir: Path, name: str, files: tuple[str, ...]) -> bool:
    """True when all of `files` are in data_dir, False when the first is not; ValueError for a partial set."""
    if not (data_dir / files[0]).exists():
        return False
    missing = [f for f in files if not (data_dir / f).exists()]
    if missing:
        raise ValueError(f"{data_dir} looks like {name} ({files[0]} is there) but lacks {', '.join(missing)}")
    return True


def read_header(path: Path, encoding: str) -> str:
    """The first line of a file, decoded (a UTF-8 byte-order mark dropped)."""
    with open(path, "rb") as f:
        first = f.readline()
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"
    return first.decode(encoding).rstrip("\r\n")


def csv_header_checker(columns: dict[str, tuple[str, ...]]) -> Binder:
    """A `bind` hook for CSV formats with a header line: ValueError unless the header is `columns[table]`."""

    def bind(data_dir: Path, table: str, spec: TableSpec) -> TableSpec:
        path = data_dir / spec.filename
        header = read_header(path, spec.encoding)
        try:
            got = tuple(next(csv.reader([header])))
        except (csv.Error, StopIteration):
            got = (header,)
        expected = columns[table]
        if got != expected:
            raise ValueError(f"{path}: header {','.join(got)!r} is not the expected {','.join(expected)!r}")
        return spec

    return bind


# ------------------------------------------------------------------ field parsers

_NO_GENRES = frozenset({"(no genres listed)", "unknown"})
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
_GENDERS = frozenset({"M", "F"})


def split_fields(line: str, sep: str, n: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) != n:
        raise MalformedRow(f"expected {n} fields, got {len(parts)}")
    return parts


def split_csv(line: str, n: int) -> list[str]:
    # Fast path, the same fields as the csv module's: no quote and no line break means a plain split.
    if line and '"' not in line and "\r" not in line and "\n" not in line:
        parts = line.split(",")
        if len(parts) != n:
            raise MalformedRow(f"expected {n} fields, got {len(parts)}")
        return parts
    try:
        parts = next(csv.reader([line], strict=True), [])
    except csv.Error as exc:
        raise MalformedRow(f"bad CSV quoting ({exc})") from None
    if len(parts) != n:
        raise MalformedRow(f"expected {n} fields, got {len(parts)}")
    return parts


def grouplens_id(value: str, kind: str) -> str:
    """GroupLens ids are positive decimal integers; returned without leading zeros."""
    if not (value.isascii() and value.isdigit()) or int(value) == 0:
        raise MalformedRow(f"bad {kind} id {value!r}")
    return str(int(value))


def token_id(value: str, kind: str) -> str:
    if value == "":
        raise MalformedRow(f"empty {kind} id")
    if value.split() != [value]:  # str.split() cuts at exactly the characters str.isspace() accepts
        raise MalformedRow(f"bad {kind} id {value!r} (contains whitespace)")
    return value


def timestamp(value: str) -> int:
    text = value.strip()
    if not text:
        raise MalformedRow("missing timestamp")
    try:
        ts = int(text)
    except ValueError:
        try:
            as_float = float(text)
        except ValueError:
            raise MalformedRow(f"non-integer timestamp {value!r}") from None
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise MalformedRow(f"non-integer timestamp {value!r}") from None
        ts = int(as_float)
    if ts < 0:
        raise MalformedRow(f"negative timestamp {ts}")
    return ts


def rating(value: str, rating_range: tuple[float, float]) -> float:
    try:
        number = float(value)
    except ValueError:
        raise MalformedRow(f"non-numeric rating {value!r}") from None
    if not math.isfinite(number):
        raise MalformedRow(f"non-numeric rating {value!r}")
    lo, hi = rating_range
    if not lo <= number <= hi:
        raise MalformedRow(f"rating {number!r} out of range [{float(lo)!r}, {float(hi)!r}]")
    return number


def int_field(value: str, what: str, minimum: int) -> int:
    text = value.strip()
    try:
        number = int(text)
    except ValueError:
        raise MalformedRow(f"bad {what} {value!r}") from None
    if number < minimum:
        raise MalformedRow(f"bad {what} {value!r}")
    return number


def gender(value: str) -> str:
    if value not in _GENDERS:
        raise MalformedRow(f"bad gender {value!r}")
    return value


def split_title(title: str) -> tuple[str, int]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a year -> (title, 0)."""
    title = title.strip()
    match = _TITLE_YEAR.match(title)
    if match and match.group("title"):
        return match.group("title"), int(match.group("year"))
    return title, 0


def genres(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(g for g in (n.strip() for n in names) if g and g not in _NO_GENRES)


# ---------------------------------------------------------------- lines -> rows


def parse_raw_line(spec: TableSpec, raw: bytes) -> Row:
    """Decode one raw line with spec.encoding and parse it; raises MalformedRow (with .raw set)."""
    if isinstance(raw, str):
        line = raw.rstrip("\r\n")
        raw_bytes = line.encode(spec.encoding, "replace")
    else:
        raw_bytes = bytes(raw).rstrip(b"\r\n")
        try:
            line = raw_bytes.decode(spec.encoding)
        except UnicodeDecodeError:
            raise MalformedRow(f"undecodable bytes for encoding {spec.encoding}", raw=raw_bytes) from None
    try:
        return spec.parse(line)
    except MalformedRow as exc:
        if exc.raw is None:
            exc.raw = raw_bytes
        raise


def iter_rows(path: Path, spec: TableSpec, table: str) -> Iterator[Row | MalformedRow]:
    """Every row of one file; a line that does not parse is yielded as its MalformedRow (line number, raw bytes)."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            if line_number <= spec.header_lines:
                continue
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue  # blank lines (e.g. a trailing one) carry no row
            try:
                yield parse_raw_line(spec, raw)
            except MalformedRow as exc:
                exc.line_number = line_number
                exc.raw = raw
                exc.table = table
                yield exc
