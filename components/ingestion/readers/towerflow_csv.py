"""The towerflow format: ``interactions.csv``, ``users.csv``, ``items.csv``.

The normalized rows written as they are (UTF-8, one header line, csv-module
quoting, one record per line, genres joined with ``|``): what `write_towerflow`
and the synthetic generator produce, and what any other source can be
converted to.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from towerflow.components.ingestion.readers.parsing import (
    DatasetFormat,
    Interaction,
    Item,
    MalformedRow,
    TableSpec,
    User,
    csv_header_checker,
    genres,
    int_field,
    rating,
    split_csv,
    timestamp,
    token_id,
)

NAME = "towerflow"
TOWERFLOW_FILES = {"interactions": "interactions.csv", "users": "users.csv", "items": "items.csv"}
TOWERFLOW_COLUMNS = {
    "interactions": ("user_id", "item_id", "rating", "timestamp"),
    "users": ("user_id", "age", "gender", "occupation", "zip_code"),
    "items": ("item_id", "title", "release_year", "genres"),
}
TOWERFLOW_GENRE_SEP = "|"


def parse_interaction(line: str) -> Interaction:
    user, item, stars, ts = split_csv(line, 4)
    return Interaction(token_id(user, "user"), token_id(item, "item"), rating(stars, (1.0, 5.0)), timestamp(ts))


def parse_user(line: str) -> User:
    user, age, sex, occupation, zip_code = split_csv(line, 5)
    return User(token_id(user, "user"), int_field(age, "age", -1), sex, occupation, zip_code)


def parse_item(line: str) -> Item:
    item_id, title, year, names = split_csv(line, 4)
    return Item(
        token_id(item_id, "item"),
        title,
        int_field(year, "release year", 0),
        genres(names.split(TOWERFLOW_GENRE_SEP)),
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
            return token_id(str(value), kind)
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


FORMAT = DatasetFormat(
    name=NAME,
    interactions=TableSpec(TOWERFLOW_FILES["interactions"], "utf-8", 1, parse_interaction),
    users=TableSpec(TOWERFLOW_FILES["users"], "utf-8", 1, parse_user),
    items=TableSpec(TOWERFLOW_FILES["items"], "utf-8", 1, parse_item),
    rating_range=(1.0, 5.0),
    detect_files=tuple(TOWERFLOW_FILES.values()),
    bind=csv_header_checker(TOWERFLOW_COLUMNS),
)
