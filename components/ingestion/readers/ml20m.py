"""GroupLens MovieLens 20M and 25M (the CSV layout): ``ratings.csv`` and ``movies.csv``.

UTF-8, one header line, half-star ratings (0.5 to 5.0), no users table. The two
releases have the same files; a directory is taken for ml-25m when its name
or its README.txt says so.
"""

from __future__ import annotations

from pathlib import Path

from towerflow.components.ingestion.readers.parsing import (
    DatasetFormat,
    Interaction,
    Item,
    TableSpec,
    csv_header_checker,
    genres,
    grouplens_id,
    has_files,
    rating,
    split_csv,
    split_title,
    timestamp,
)

FILES = ("ratings.csv", "movies.csv")
ML20M_COLUMNS = {"interactions": ("userId", "movieId", "rating", "timestamp"), "items": ("movieId", "title", "genres")}
RATING_RANGE = (0.5, 5.0)


def parse_interaction(line: str) -> Interaction:
    user, item, stars, ts = split_csv(line, 4)
    return Interaction(
        grouplens_id(user, "user"), grouplens_id(item, "item"), rating(stars, RATING_RANGE), timestamp(ts)
    )


def parse_item(line: str) -> Item:
    item_id, title, names = split_csv(line, 3)
    title, year = split_title(title)
    return Item(grouplens_id(item_id, "item"), title, year, genres(names.split("|")))


def _is_ml25m(data_dir: Path) -> bool:
    if "25m" in data_dir.resolve().name.lower():
        return True
    readme = data_dir / "README.txt"
    if readme.exists():
        head = readme.read_bytes()[:4096].decode("utf-8", "replace")
        return "ml-25m" in head or "25M" in head
    return False


def _detect(data_dir: Path) -> str | None:
    if not has_files(data_dir, "ml-20m", FILES):
        return None
    return "ml-25m" if _is_ml25m(data_dir) else "ml-20m"


def _format(name: str, detect) -> DatasetFormat:
    return DatasetFormat(
        name=name,
        interactions=TableSpec("ratings.csv", "utf-8", 1, parse_interaction),
        users=None,
        items=TableSpec("movies.csv", "utf-8", 1, parse_item),
        rating_range=RATING_RANGE,
        detect_files=FILES if detect else (),
        detect=detect,
        bind=csv_header_checker(ML20M_COLUMNS),
    )


ML20M = _format("ml-20m", _detect)
ML25M = _format("ml-25m", None)  # detected by ML20M's detect, which tells the two apart
