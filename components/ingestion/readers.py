"""Readers of raw interaction logs: MovieLens, RecBole atomic files and towerflow CSV.

Every supported on-disk format is described by a `DatasetFormat`: one `TableSpec`
per table (interactions, users, items) saying which file holds it, its text
encoding, how many header lines to skip and a `parse` function that turns one
decoded line into a normalized row -- an `Interaction`, a `User` or an `Item` --
or raises `MalformedRow` with a short reason. The same specs serve the Beam
ingestion component (line by line, bad rows quarantined) and the plain-Python
helpers here (`read_table`, `load_dataset`).

Supported formats (keys of `FORMATS`):

- ``ml-100k``  GroupLens MovieLens 100K: ``u.data`` (tab), ``u.user`` and
  ``u.item`` (``|``, latin-1; the genres are 19 0/1 flags).
- ``ml-1m``    GroupLens MovieLens 1M: ``ratings.dat``, ``users.dat``,
  ``movies.dat`` (``::``, latin-1; age and occupation are codes, occupation
  codes are mapped to their names).
- ``ml-20m`` / ``ml-25m``  GroupLens CSV layout: ``ratings.csv``, ``movies.csv``
  (UTF-8, one header line, half-star ratings). There is no users table.
- ``recbole``  RecBole atomic files ``<name>.inter``, ``<name>.user``,
  ``<name>.item`` (UTF-8, tab-separated, header ``field:type``). Fields are
  located by their header name, so `resolve_spec` binds the spec to the real
  header; ``FORMATS["recbole"]`` assumes the column order of the ml-100k files
  shipped in the ``recbole==1.2.1`` wheel.
- ``towerflow`` the normalized format written by `write_towerflow` and the
  synthetic generator: ``interactions.csv``, ``users.csv``, ``items.csv``
  (UTF-8, one header line, csv-module quoting, one record per line).

Normalization rules: ids are strings (GroupLens ids must be positive integers
and are written without leading zeros); timestamps are unix seconds (integral
floats such as ``881250949.0`` are accepted); unknown age is -1, unknown
gender/occupation/zip is ""; unknown release year is 0; a trailing ``(1995)`` is
removed from titles (and used as the release year where the format has no
better source); the placeholder genres ``(no genres listed)`` and ``unknown``
mean "no genres" and give ``()``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FORMATS",
    "TABLES",
    "TOWERFLOW_COLUMNS",
    "TOWERFLOW_FILES",
    "DatasetFormat",
    "Interaction",
    "Item",
    "MalformedRow",
    "NormalizedDataset",
    "TableSpec",
    "User",
    "detect_format",
    "load_dataset",
    "parse_raw_line",
    "read_table",
    "resolve_spec",
    "write_towerflow",
]

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


@dataclass(frozen=True)
class TableSpec:
    filename: str
    encoding: str
    header_lines: int
    parse: Callable[[str], Row]  # decoded line (no newline) -> row, or raise MalformedRow


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    interactions: TableSpec
    users: TableSpec | None
    items: TableSpec | None
    rating_range: tuple[float, float]

    def table(self, table: str) -> TableSpec | None:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
        return getattr(self, table)


# ------------------------------------------------------------- field validation

_NO_GENRES = frozenset({"(no genres listed)", "unknown"})
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
_YEAR = re.compile(r"^\d{4}$")
_ML100K_DATE = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(?P<year>\d{4})$")

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

# MovieLens 1M README: "Occupation is chosen from the following choices".
ML1M_OCCUPATIONS = {
    0: "other",
    1: "academic/educator",
    2: "artist",
    3: "clerical/admin",
    4: "college/grad student",
    5: "customer service",
    6: "doctor/health care",
    7: "executive/managerial",
    8: "farmer",
    9: "homemaker",
    10: "K-12 student",
    11: "lawyer",
    12: "programmer",
    13: "retired",
    14: "sales/marketing",
    15: "scientist",
    16: "self-employed",
    17: "technician/engineer",
    18: "tradesman/craftsman",
    19: "unemployed",
    20: "writer",
}
# MovieLens 1M age buckets; the code (lower bound, 1 = "Under 18") is kept as the age.
ML1M_AGE_CODES = frozenset({1, 18, 25, 35, 45, 50, 56})
_GENDERS = frozenset({"M", "F"})


def _split(line: str, sep: str, n: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) != n:
        raise MalformedRow(f"expected {n} fields, got {len(parts)}")
    return parts


def _csv_split(line: str, n: int) -> list[str]:
    try:
        parts = next(csv.reader([line], strict=True), [])
    except csv.Error as exc:
        raise MalformedRow(f"bad CSV quoting ({exc})") from None
    if len(parts) != n:
        raise MalformedRow(f"expected {n} fields, got {len(parts)}")
    return parts


def _grouplens_id(value: str, kind: str) -> str:
    """GroupLens ids are positive decimal integers; returned without leading zeros."""
    if not (value.isascii() and value.isdigit()) or int(value) == 0:
        raise MalformedRow(f"bad {kind} id {value!r}")
    return str(int(value))


def _token_id(value: str, kind: str) -> str:
    if value == "":
        raise MalformedRow(f"empty {kind} id")
    if any(ch.isspace() for ch in value):
        raise MalformedRow(f"bad {kind} id {value!r} (contains whitespace)")
    return value


def _timestamp(value: str) -> int:
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


def _rating(value: str, rating_range: tuple[float, float]) -> float:
    try:
        rating = float(value)
    except ValueError:
        raise MalformedRow(f"non-numeric rating {value!r}") from None
    if not math.isfinite(rating):
        raise MalformedRow(f"non-numeric rating {value!r}")
    lo, hi = rating_range
    if not lo <= rating <= hi:
        raise MalformedRow(f"rating {rating!r} out of range [{float(lo)!r}, {float(hi)!r}]")
    return rating


def _int_field(value: str, what: str, minimum: int) -> int:
    text = value.strip()
    try:
        number = int(text)
    except ValueError:
        raise MalformedRow(f"bad {what} {value!r}") from None
    if number < minimum:
        raise MalformedRow(f"bad {what} {value!r}")
    return number


def _gender(value: str) -> str:
    if value not in _GENDERS:
        raise MalformedRow(f"bad gender {value!r}")
    return value


def _split_title(title: str) -> tuple[str, int]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a year -> (title, 0)."""
    title = title.strip()
    match = _TITLE_YEAR.match(title)
    if match and match.group("title"):
        return match.group("title"), int(match.group("year"))
    return title, 0


def _genres(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(g for g in (n.strip() for n in names) if g and g not in _NO_GENRES)


# ------------------------------------------------------------------- ml-100k


def _ml100k_interaction(line: str) -> Interaction:
    user, item, rating, ts = _split(line, "\t", 4)
    return Interaction(
        _grouplens_id(user, "user"), _grouplens_id(item, "item"), _rating(rating, (1.0, 5.0)), _timestamp(ts)
    )


def _ml100k_user(line: str) -> User:
    user, age, gender, occupation, zip_code = _split(line, "|", 5)
    return User(
        _grouplens_id(user, "user"),
        _int_field(age, "age", 0),
        _gender(gender),
        occupation.strip(),
        zip_code.strip(),
    )


def _ml100k_item(line: str) -> Item:
    parts = _split(line, "|", 5 + len(ML100K_GENRES))
    item_id = _grouplens_id(parts[0], "item")
    title, title_year = _split_title(parts[1])
    release = parts[2].strip()
    if release:
        match = _ML100K_DATE.match(release)
        if not match:
            raise MalformedRow(f"bad release date {release!r}")
        year = int(match.group("year"))
    else:
        year = title_year
    flags = parts[5:]
    if any(f not in ("0", "1") for f in flags):
        raise MalformedRow(f"bad genre flags {'|'.join(flags)!r}")
    genres = _genres(name for name, flag in zip(ML100K_GENRES, flags) if flag == "1")
    return Item(item_id, title, year, genres)


# ---------------------------------------------------------------------- ml-1m


def _ml1m_interaction(line: str) -> Interaction:
    user, item, rating, ts = _split(line, "::", 4)
    return Interaction(
        _grouplens_id(user, "user"), _grouplens_id(item, "item"), _rating(rating, (1.0, 5.0)), _timestamp(ts)
    )


def _ml1m_user(line: str) -> User:
    user, gender, age, occupation, zip_code = _split(line, "::", 5)
    age_code = _int_field(age, "age", 0)
    if age_code not in ML1M_AGE_CODES:
        raise MalformedRow(f"bad age code {age!r}")
    try:
        occupation_name = ML1M_OCCUPATIONS[int(occupation)]
    except (ValueError, KeyError):
        raise MalformedRow(f"bad occupation code {occupation!r}") from None
    return User(_grouplens_id(user, "user"), age_code, _gender(gender), occupation_name, zip_code.strip())


def _ml1m_item(line: str) -> Item:
    item_id, title, genres = _split(line, "::", 3)
    title, year = _split_title(title)
    return Item(_grouplens_id(item_id, "item"), title, year, _genres(genres.split("|")))


# ------------------------------------------------------------- ml-20m / ml-25m


def _ml20m_interaction(line: str) -> Interaction:
    user, item, rating, ts = _csv_split(line, 4)
    return Interaction(
        _grouplens_id(user, "user"), _grouplens_id(item, "item"), _rating(rating, (0.5, 5.0)), _timestamp(ts)
    )


def _ml20m_item(line: str) -> Item:
    item_id, title, genres = _csv_split(line, 3)
    title, year = _split_title(title)
    return Item(_grouplens_id(item_id, "item"), title, year, _genres(genres.split("|")))


ML20M_COLUMNS = {"interactions": ("userId", "movieId", "rating", "timestamp"), "items": ("movieId", "title", "genres")}

# -------------------------------------------------------------------- recbole

RECBOLE_SUFFIXES = {"interactions": ".inter", "users": ".user", "items": ".item"}
# The headers of recbole==1.2.1 recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}.
RECBOLE_DEFAULT_HEADERS = {
    "interactions": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "users": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
    "items": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
}
# normalized field -> accepted RecBole column names (first match wins); None = required
_RECBOLE_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "interactions": {
        "user_id": ("user_id",),
        "item_id": ("item_id",),
        "rating": ("rating",),
        "timestamp": ("timestamp",),
    },
    "users": {
        "user_id": ("user_id",),
        "age": ("age",),
        "gender": ("gender",),
        "occupation": ("occupation",),
        "zip_code": ("zip_code", "zip"),
    },
    "items": {
        "item_id": ("item_id",),
        "title": ("movie_title", "title"),
        "release_year": ("release_year", "year"),
        "genres": ("class", "genre", "genres"),
    },
}
_RECBOLE_REQUIRED = {
    "interactions": ("user_id", "item_id", "rating", "timestamp"),
    "users": ("user_id",),
    "items": ("item_id",),
}


def _recbole_columns(header: str) -> tuple[str, ...]:
    """'user_id:token\\titem_id:token' -> ('user_id', 'item_id') (the ':type' suffix dropped)."""
    return tuple(col.split(":", 1)[0].strip() for col in header.lstrip("\ufeff").rstrip("\r\n").split("\t"))


def _recbole_parser(table: str, header: str) -> Callable[[str], Any]:
    columns = _recbole_columns(header)
    position: dict[str, int] = {}
    for name, aliases in _RECBOLE_FIELDS[table].items():
        for alias in aliases:
            if alias in columns:
                position[name] = columns.index(alias)
                break
    missing = [name for name in _RECBOLE_REQUIRED[table] if name not in position]
    if missing:
        raise ValueError(
            f"RecBole {RECBOLE_SUFFIXES[table]} header {header.strip()!r} lacks required column(s) {missing}"
        )
    n = len(columns)

    def fields(line: str) -> dict[str, str]:
        parts = _split(line, "\t", n)
        return {name: parts[i] for name, i in position.items()}

    if table == "interactions":

        def parse(line: str) -> Interaction:
            f = fields(line)
            return Interaction(
                _token_id(f["user_id"], "user"),
                _token_id(f["item_id"], "item"),
                _rating(f["rating"], (1.0, 5.0)),
                _timestamp(f["timestamp"]),
            )

    elif table == "users":

        def parse(line: str) -> User:
            f = fields(line)
            age = f.get("age", "").strip()
            return User(
                _token_id(f["user_id"], "user"),
                _int_field(age, "age", 0) if age else -1,
                f.get("gender", "").strip(),
                f.get("occupation", "").strip(),
                f.get("zip_code", "").strip(),
            )

    else:

        def parse(line: str) -> Item:
            f = fields(line)
            title, title_year = _split_title(f.get("title", ""))
            year_text = f.get("release_year", "").strip()
            # The recbole ml-100k file has placeholders like 'unkonwn' and 'V' here: treat as unknown.
            year = int(year_text) if _YEAR.match(year_text) else title_year
            return Item(_token_id(f["item_id"], "item"), title, year, _genres(f.get("genres", "").split(" ")))

    return parse


# ------------------------------------------------------------------ towerflow

TOWERFLOW_FILES = {"interactions": "interactions.csv", "users": "users.csv", "items": "items.csv"}
TOWERFLOW_COLUMNS = {
    "interactions": ("user_id", "item_id", "rating", "timestamp"),
    "users": ("user_id", "age", "gender", "occupation", "zip_code"),
    "items": ("item_id", "title", "release_year", "genres"),
}
TOWERFLOW_GENRE_SEP = "|"


def _towerflow_interaction(line: str) -> Interaction:
    user, item, rating, ts = _csv_split(line, 4)
    return Interaction(_token_id(user, "user"), _token_id(item, "item"), _rating(rating, (1.0, 5.0)), _timestamp(ts))


def _towerflow_user(line: str) -> User:
    user, age, gender, occupation, zip_code = _csv_split(line, 5)
    return User(_token_id(user, "user"), _int_field(age, "age", -1), gender, occupation, zip_code)


def _towerflow_item(line: str) -> Item:
    item_id, title, year, genres = _csv_split(line, 4)
    return Item(
        _token_id(item_id, "item"),
        title,
        _int_field(year, "release year", 0),
        _genres(genres.split(TOWERFLOW_GENRE_SEP)),
    )


def write_towerflow(
    data_dir: str | Path,
    interactions: Iterable[Interaction],
    users: Iterable[User] = (),
    items: Iterable[Item] = (),
) -> dict[str, Path]:
    """Write rows in the towerflow format (streaming); returns {table: path}.

    Values the reader would reject raise ValueError instead of producing an
    unreadable file: ids must be non-empty without whitespace, no field may
    contain a newline (the format is one record per line) and genre names may
    not contain the "|" separator.
    """
    out = Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)

    def clean(value: str, what: str) -> str:
        value = str(value)
        if "\n" in value or "\r" in value:
            raise ValueError(f"{what} {value!r} contains a newline; the towerflow format is one record per line")
        return value

    def ident(value: str, kind: str) -> str:
        try:
            return _token_id(str(value), kind)
        except MalformedRow as exc:
            raise ValueError(exc.reason) from None

    def rows(table: str, source: Iterable[Any]) -> Iterator[tuple[str, ...]]:
        for r in source:
            if table == "interactions":
                yield (ident(r.user_id, "user"), ident(r.item_id, "item"), repr(float(r.rating)), str(int(r.timestamp)))
            elif table == "users":
                yield (
                    ident(r.user_id, "user"),
                    str(int(r.age)),
                    clean(r.gender, "gender"),
                    clean(r.occupation, "occupation"),
                    clean(r.zip_code, "zip_code"),
                )
            else:
                for g in r.genres:
                    if TOWERFLOW_GENRE_SEP in g:
                        raise ValueError(f"genre {g!r} contains {TOWERFLOW_GENRE_SEP!r}")
                yield (
                    ident(r.item_id, "item"),
                    clean(r.title, "title"),
                    str(int(r.release_year)),
                    clean(TOWERFLOW_GENRE_SEP.join(r.genres), "genres"),
                )

    paths = {}
    for table, source in (("interactions", interactions), ("users", users), ("items", items)):
        path = out / TOWERFLOW_FILES[table]
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            writer.writerow(TOWERFLOW_COLUMNS[table])
            writer.writerows(rows(table, source))
        paths[table] = path
    return paths


# -------------------------------------------------------------------- formats


def _recbole_default_spec(table: str) -> TableSpec:
    return TableSpec(
        "ml-100k" + RECBOLE_SUFFIXES[table], "utf-8", 1, _recbole_parser(table, RECBOLE_DEFAULT_HEADERS[table])
    )


def _ml20m_format(name: str) -> DatasetFormat:
    return DatasetFormat(
        name=name,
        interactions=TableSpec("ratings.csv", "utf-8", 1, _ml20m_interaction),
        users=None,
        items=TableSpec("movies.csv", "utf-8", 1, _ml20m_item),
        rating_range=(0.5, 5.0),
    )


FORMATS: dict[str, DatasetFormat] = {
    "ml-100k": DatasetFormat(
        name="ml-100k",
        interactions=TableSpec("u.data", "latin-1", 0, _ml100k_interaction),
        users=TableSpec("u.user", "latin-1", 0, _ml100k_user),
        items=TableSpec("u.item", "latin-1", 0, _ml100k_item),
        rating_range=(1.0, 5.0),
    ),
    "ml-1m": DatasetFormat(
        name="ml-1m",
        interactions=TableSpec("ratings.dat", "latin-1", 0, _ml1m_interaction),
        users=TableSpec("users.dat", "latin-1", 0, _ml1m_user),
        items=TableSpec("movies.dat", "latin-1", 0, _ml1m_item),
        rating_range=(1.0, 5.0),
    ),
    "ml-20m": _ml20m_format("ml-20m"),
    "ml-25m": _ml20m_format("ml-25m"),
    "recbole": DatasetFormat(
        name="recbole",
        interactions=_recbole_default_spec("interactions"),
        users=_recbole_default_spec("users"),
        items=_recbole_default_spec("items"),
        rating_range=(1.0, 5.0),
    ),
    "towerflow": DatasetFormat(
        name="towerflow",
        interactions=TableSpec(TOWERFLOW_FILES["interactions"], "utf-8", 1, _towerflow_interaction),
        users=TableSpec(TOWERFLOW_FILES["users"], "utf-8", 1, _towerflow_user),
        items=TableSpec(TOWERFLOW_FILES["items"], "utf-8", 1, _towerflow_item),
        rating_range=(1.0, 5.0),
    ),
}

# Header columns checked by resolve_spec for the CSV formats.
_CSV_HEADERS = {
    "ml-20m": ML20M_COLUMNS,
    "ml-25m": ML20M_COLUMNS,
    "towerflow": TOWERFLOW_COLUMNS,
}


def _format(fmt: str) -> DatasetFormat:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}") from None


def _read_header(path: Path, encoding: str) -> str:
    with open(path, "rb") as f:
        first = f.readline()
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"
    return first.decode(encoding).rstrip("\r\n")


def _recbole_file(data_dir: Path, table: str) -> Path | None:
    """The `<name>.inter/.user/.item` file of a RecBole directory (same stem as the .inter file)."""
    inters = sorted(data_dir.glob("*.inter"))
    suffix = RECBOLE_SUFFIXES[table]
    if len(inters) > 1:
        raise ValueError(f"{data_dir} holds several RecBole datasets: {[p.name for p in inters]}")
    if inters:
        candidate = inters[0].with_suffix(suffix)
        return candidate if candidate.exists() else None
    found = sorted(data_dir.glob("*" + suffix))
    return found[0] if len(found) == 1 else None


def resolve_spec(data_dir: str | Path, fmt: str, table: str) -> TableSpec | None:
    """The TableSpec to read `table` of the dataset in `data_dir` with (None: the format has no such table).

    For RecBole the spec is bound to the real file name and header (fields are
    located by name). For CSV formats with a header the header is checked
    (ValueError if it is not the expected one). Otherwise FORMATS[fmt]'s spec.
    """
    data_dir = Path(data_dir)
    spec = _format(fmt).table(table)
    if spec is None:
        return None
    if fmt == "recbole":
        path = _recbole_file(data_dir, table)
        if path is None:
            if table == "interactions":
                raise FileNotFoundError(f"no RecBole .inter file in {data_dir}")
            return None  # .user / .item are optional in RecBole
        header = _read_header(path, spec.encoding)
        return TableSpec(path.name, spec.encoding, spec.header_lines, _recbole_parser(table, header))
    if fmt in _CSV_HEADERS:
        path = data_dir / spec.filename
        header = _read_header(path, spec.encoding)
        try:
            got = tuple(next(csv.reader([header])))
        except (csv.Error, StopIteration):
            got = (header,)
        expected = _CSV_HEADERS[fmt][table]
        if got != expected:
            raise ValueError(f"{path}: header {','.join(got)!r} is not the expected {','.join(expected)!r}")
    return spec


# ------------------------------------------------------------------ detection

_DETECT_FILES = {
    "towerflow": tuple(TOWERFLOW_FILES.values()),
    "ml-100k": ("u.data", "u.user", "u.item"),
    "ml-1m": ("ratings.dat", "users.dat", "movies.dat"),
    "ml-20m": ("ratings.csv", "movies.csv"),
    "recbole": ("<name>.inter", "<name>.user", "<name>.item"),
}


def _is_ml25m(data_dir: Path) -> bool:
    if "25m" in data_dir.resolve().name.lower():
        return True
    readme = data_dir / "README.txt"
    if readme.exists():
        head = readme.read_bytes()[:4096].decode("utf-8", "replace")
        return "ml-25m" in head or "25M" in head
    return False


def detect_format(data_dir: str | Path) -> str:
    """Name of the format (a key of FORMATS) of the dataset in `data_dir`, judged by the files present."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir} is not a directory")
    for fmt, files in _DETECT_FILES.items():
        if fmt == "recbole":
            if any(data_dir.glob("*.inter")):
                _recbole_file(data_dir, "interactions")  # raises when ambiguous
                return "recbole"
            continue
        if not (data_dir / files[0]).exists():
            continue
        missing = [f for f in files if not (data_dir / f).exists()]
        if missing:
            raise ValueError(f"{data_dir} looks like {fmt} ({files[0]} is there) but lacks {', '.join(missing)}")
        if fmt == "ml-20m" and _is_ml25m(data_dir):
            return "ml-25m"
        return fmt
    expected = "; ".join(f"{fmt}: {', '.join(files)}" for fmt, files in _DETECT_FILES.items())
    present = sorted(p.name for p in data_dir.iterdir())[:20]
    raise ValueError(
        f"cannot tell the dataset format of {data_dir}: expected the files of one of: {expected} "
        f"(ml-25m has the ml-20m files); found {present}"
    )


# -------------------------------------------------------------------- reading


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


def _iter_rows(path: Path, spec: TableSpec, table: str) -> Iterator[Row | MalformedRow]:
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


def read_table(data_dir: str | Path, fmt: str, table: str) -> Iterator[Row | MalformedRow]:
    """Stream the rows of one table; malformed lines are yielded as MalformedRow objects, not raised.

    Raises ValueError for an unknown format/table or a table the format lacks,
    FileNotFoundError when the table's file is missing.
    """
    data_dir = Path(data_dir)
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
    spec = resolve_spec(data_dir, fmt, table)
    if spec is None:
        if fmt == "recbole":
            return iter(())
        raise ValueError(f"format {fmt} has no {table} table")
    path = data_dir / spec.filename
    if not path.exists():
        raise FileNotFoundError(f"{path} ({fmt} {table}) does not exist")
    return _iter_rows(path, spec, table)


@dataclass
class NormalizedDataset:
    """A whole (small) dataset in memory, normalized."""

    format: str
    path: Path
    interactions: Any  # pandas.DataFrame: user_id (str), item_id (str), rating (float64), timestamp (int64)
    users: dict[str, User] = field(default_factory=dict)
    items: dict[str, Item] = field(default_factory=dict)
    malformed: list[MalformedRow] = field(default_factory=list)


def load_dataset(data_dir: str | Path, fmt: str | None = None) -> NormalizedDataset:
    """Read a whole dataset (small-data convenience; ingestion at scale uses the Beam component).

    Malformed rows and duplicate user/item ids are collected in `.malformed`.
    """
    import numpy as np
    import pandas as pd

    data_dir = Path(data_dir)
    fmt = fmt or detect_format(data_dir)
    dataset_format = _format(fmt)
    malformed: list[MalformedRow] = []

    columns: dict[str, list] = {"user_id": [], "item_id": [], "rating": [], "timestamp": []}
    for row in read_table(data_dir, fmt, "interactions"):
        if isinstance(row, MalformedRow):
            malformed.append(row)
            continue
        columns["user_id"].append(row.user_id)
        columns["item_id"].append(row.item_id)
        columns["rating"].append(row.rating)
        columns["timestamp"].append(row.timestamp)
    interactions = pd.DataFrame(
        {
            "user_id": pd.Series(columns["user_id"], dtype=object),
            "item_id": pd.Series(columns["item_id"], dtype=object),
            "rating": np.asarray(columns["rating"], dtype=np.float64),
            "timestamp": np.asarray(columns["timestamp"], dtype=np.int64),
        }
    )

    def keyed(table: str, key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if dataset_format.table(table) is None:
            return out
        for row in read_table(data_dir, fmt, table):
            if isinstance(row, MalformedRow):
                malformed.append(row)
            elif getattr(row, key) in out:
                kind = key.split("_")[0]
                malformed.append(MalformedRow(f"duplicate {kind} id {getattr(row, key)!r}", table=table))
            else:
                out[getattr(row, key)] = row
        return out

    users = keyed("users", "user_id")
    items = keyed("items", "item_id")
    return NormalizedDataset(fmt, data_dir, interactions, users, items, malformed)
