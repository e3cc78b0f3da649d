"""GroupLens MovieLens 100K: ``u.data`` (tab-separated), ``u.user`` and ``u.item`` (``|``, latin-1).

Items carry their genres as 19 0/1 flags in the order of `ML100K_GENRES`; the
release date (``01-Jan-1995``) gives the release year, the title's ``(1995)``
stands in when the date is empty.
"""

from __future__ import annotations

import re

from towerflow.components.ingestion.readers.parsing import (
    DatasetFormat,
    Interaction,
    Item,
    MalformedRow,
    TableSpec,
    User,
    gender,
    genres,
    grouplens_id,
    int_field,
    rating,
    split_fields,
    split_title,
    timestamp,
)

NAME = "ml-100k"
FILES = ("u.data", "u.user", "u.item")

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
_DATE = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(?P<year>\d{4})$")


def parse_interaction(line: str) -> Interaction:
    user, item, stars, ts = split_fields(line, "\t", 4)
    return Interaction(grouplens_id(user, "user"), grouplens_id(item, "item"), rating(stars, (1.0, 5.0)), timestamp(ts))


def parse_user(line: str) -> User:
    user, age, sex, occupation, zip_code = split_fields(line, "|", 5)
    return User(grouplens_id(user, "user"), int_field(age, "age", 0), gender(sex), occupation.strip(), zip_code.strip())


def parse_item(line: str) -> Item:
    parts = split_fields(line, "|", 5 + len(ML100K_GENRES))
    item_id = grouplens_id(parts[0], "item")
    title, title_year = split_title(parts[1])
    release = parts[2].strip()
    if release:
        match = _DATE.match(release)
        if not match:
            raise MalformedRow(f"bad release date {release!r}")
        year = int(match.group("year"))
    else:
        year = title_year
    flags = parts[5:]
    if any(f not in ("0", "1") for f in flags):
        raise MalformedRow(f"bad genre flags {'|'.join(flags)!r}")
    return Item(item_id, title, year, genres(name for name, flag in zip(ML100K_GENRES, flags) if flag == "1"))


FORMAT = DatasetFormat(
    name=NAME,
    interactions=TableSpec("u.data", "latin-1", 0, parse_interaction),
    users=TableSpec("u.user", "latin-1", 0, parse_user),
    items=TableSpec("u.item", "latin-1", 0, parse_item),
    rating_range=(1.0, 5.0),
    detect_files=FILES,
)
