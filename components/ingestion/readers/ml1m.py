"""GroupLens MovieLens 1M: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``-separated, latin-1).

Ages are bucket codes (the lower bound, 1 = "Under 18") and are kept as the
age; occupation codes are mapped to the names the dataset's README gives.
"""

from __future__ import annotations

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

NAME = "ml-1m"
FILES = ("ratings.dat", "users.dat", "movies.dat")

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


def parse_interaction(line: str) -> Interaction:
    user, item, stars, ts = split_fields(line, "::", 4)
    return Interaction(grouplens_id(user, "user"), grouplens_id(item, "item"), rating(stars, (1.0, 5.0)), timestamp(ts))


def parse_user(line: str) -> User:
    user, sex, age, occupation, zip_code = split_fields(line, "::", 5)
    age_code = int_field(age, "age", 0)
    if age_code not in ML1M_AGE_CODES:
        raise MalformedRow(f"bad age code {age!r}")
    try:
        occupation_name = ML1M_OCCUPATIONS[int(occupation)]
    except (ValueError, KeyError):
        raise MalformedRow(f"bad occupation code {occupation!r}") from None
    return User(grouplens_id(user, "user"), age_code, gender(sex), occupation_name, zip_code.strip())


def parse_item(line: str) -> Item:
    item_id, title, names = split_fields(line, "::", 3)
    title, year = split_title(title)
    return Item(grouplens_id(item_id, "item"), title, year, genres(names.split("|")))


FORMAT = DatasetFormat(
    name=NAME,
    interactions=TableSpec("ratings.dat", "latin-1", 0, parse_interaction),
    users=TableSpec("users.dat", "latin-1", 0, parse_user),
    items=TableSpec("movies.dat", "latin-1", 0, parse_item),
    rating_range=(1.0, 5.0),
    detect_files=FILES,
)
