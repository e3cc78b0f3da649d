"""RecBole atomic files: ``<name>.inter``, ``<name>.user``, ``<name>.item``.

UTF-8, tab-separated, one header line of ``field:type`` columns. Fields are
located by their header name (with a few common aliases), so the spec of a
real directory is built from its header by `bind`; ``FORMAT``'s own specs
assume the column order of the ml-100k files shipped in the
``recbole==1.2.1`` wheel. The ``.user`` and ``.item`` files are optional.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from towerflow.components.ingestion.readers.parsing import (
    DatasetFormat,
    Interaction,
    Item,
    TableSpec,
    User,
    genres,
    int_field,
    rating,
    read_header,
    split_fields,
    split_title,
    timestamp,
    token_id,
)

NAME = "recbole"
RECBOLE_SUFFIXES = {"interactions": ".inter", "users": ".user", "items": ".item"}
# The headers of recbole==1.2.1 recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}.
RECBOLE_DEFAULT_HEADERS = {
    "interactions": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "users": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
    "items": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
}
# normalized field -> accepted RecBole column names (first match wins)
_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
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
_REQUIRED = {
    "interactions": ("user_id", "item_id", "rating", "timestamp"),
    "users": ("user_id",),
    "items": ("item_id",),
}
_YEAR = re.compile(r"^\d{4}$")


def _columns(header: str) -> tuple[str, ...]:
    """'user_id:token\\titem_id:token' -> ('user_id', 'item_id') (the ':type' suffix dropped)."""
    return tuple(col.split(":", 1)[0].strip() for col in header.lstrip("\ufeff").rstrip("\r\n").split("\t"))


def parser(table: str, header: str) -> Callable[[str], Any]:
    """The line parser of one table whose header line is `header`; ValueError if it lacks a required column."""
    columns = _columns(header)
    position: dict[str, int] = {}
    for name, aliases in _FIELDS[table].items():
        for alias in aliases:
            if alias in columns:
                position[name] = columns.index(alias)
                break
    missing = [name for name in _REQUIRED[table] if name not in position]
    if missing:
        raise ValueError(
            f"RecBole {RECBOLE_SUFFIXES[table]} header {header.strip()!r} lacks required column(s) {missing}"
        )
    n = len(columns)

    def fields(line: str) -> dict[str, str]:
        parts = split_fields(line, "\t", n)
        return {name: parts[i] for name, i in position.items()}

    if table == "interactions":

        def parse(line: str) -> Interaction:
            f = fields(line)
            return Interaction(
                token_id(f["user_id"], "user"),
                token_id(f["item_id"], "item"),
                rating(f["rating"], (1.0, 5.0)),
                timestamp(f["timestamp"]),
            )

    elif table == "users":

        def parse(line: str) -> User:
            f = fields(line)
            age = f.get("age", "").strip()
            return User(
                token_id(f["user_id"], "user"),
                int_field(age, "age", 0) if age else -1,
                f.get("gender", "").strip(),
                f.get("occupation", "").strip(),
                f.get("zip_code", "").strip(),
            )

    else:

        def parse(line: str) -> Item:
            f = fields(line)
            title, title_year = split_title(f.get("title", ""))
            year_text = f.get("release_year", "").strip()
            # The recbole ml-100k file has placeholders like 'unkonwn' and 'V' here: treat as unknown.
            year = int(year_text) if _YEAR.match(year_text) else title_year
            return Item(token_id(f["item_id"], "item"), title, year, genres(f.get("genres", "").split(" ")))

    return parse


def table_file(data_dir: Path, table: str) -> Path | None:
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


def _detect(data_dir: Path) -> str | None:
    if not any(data_dir.glob("*.inter")):
        return None
    table_file(data_dir, "interactions")  # raises when ambiguous
    return NAME


def _bind(data_dir: Path, table: str, spec: TableSpec) -> TableSpec | None:
    """The spec bound to the real file name and header (fields are located by name)."""
    path = table_file(data_dir, table)
    if path is None:
        if table == "interactions":
            raise FileNotFoundError(f"no RecBole .inter file in {data_dir}")
        return None  # .user / .item are optional in RecBole
    header = read_header(path, spec.encoding)
    return TableSpec(path.name, spec.encoding, spec.header_lines, parser(table, header))


def _default_spec(table: str) -> TableSpec:
    return TableSpec("ml-100k" + RECBOLE_SUFFIXES[table], "utf-8", 1, parser(table, RECBOLE_DEFAULT_HEADERS[table]))


FORMAT = DatasetFormat(
    name=NAME,
    interactions=_default_spec("interactions"),
    users=_default_spec("users"),
    items=_default_spec("items"),
    rating_range=(1.0, 5.0),
    detect_files=("<name>.inter", "<name>.user", "<name>.item"),
    detect=_detect,
    bind=_bind,
)
