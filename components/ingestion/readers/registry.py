"""The format registry and the readers that go through it: detect, resolve, read, load.

`FORMATS` maps a format's name to its `DatasetFormat` (each defined in its
own module); everything here is format-agnostic and asks the format's specs
and hooks for the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from towerflow.components.ingestion.readers import ml1m, ml20m, ml100k, recbole, towerflow_csv
from towerflow.components.ingestion.readers.parsing import (
    TABLES,
    DatasetFormat,
    Item,
    MalformedRow,
    Row,
    TableSpec,
    User,
    iter_rows,
)

FORMATS: dict[str, DatasetFormat] = {
    fmt.name: fmt
    for fmt in (ml100k.FORMAT, ml1m.FORMAT, ml20m.ML20M, ml20m.ML25M, recbole.FORMAT, towerflow_csv.FORMAT)
}
# The order `detect_format` tries the formats in: the first whose files are there wins.
DETECTION_ORDER = ("towerflow", "ml-100k", "ml-1m", "ml-20m", "recbole")


def get_format(fmt: str) -> DatasetFormat:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; supported: {', '.join(FORMATS)}") from None


def detect_format(data_dir: str | Path) -> str:
    """Name of the format (a key of FORMATS) of the dataset in `data_dir`, judged by the files present."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir} is not a directory")
    for name in DETECTION_ORDER:
        found = FORMATS[name].detected_in(data_dir)
        if found is not None:
            return found
    expected = "; ".join(f"{name}: {', '.join(FORMATS[name].detect_files)}" for name in DETECTION_ORDER)
    present = sorted(p.name for p in data_dir.iterdir())[:20]
    raise ValueError(
        f"cannot tell the dataset format of {data_dir}: expected the files of one of: {expected} "
        f"(ml-25m has the ml-20m files); found {present}"
    )


def resolve_spec(data_dir: str | Path, fmt: str, table: str) -> TableSpec | None:
    """The TableSpec to read `table` of the dataset in `data_dir` with (None: the format has no such table).

    For RecBole the spec is bound to the real file name and header (fields are
    located by name). For CSV formats with a header the header is checked
    (ValueError if it is not the expected one). Otherwise FORMATS[fmt]'s spec.
    """
    dataset_format = get_format(fmt)
    spec = dataset_format.table(table)
    if spec is None or dataset_format.bind is None:
        return spec
    return dataset_format.bind(Path(data_dir), table, spec)


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
        if get_format(fmt).table(table) is not None:
            return iter(())  # an optional table (RecBole's .user / .item) that this dataset does not have
        raise ValueError(f"format {fmt} has no {table} table")
    path = data_dir / spec.filename
    if not path.exists():
        raise FileNotFoundError(f"{path} ({fmt} {table}) does not exist")
    return iter_rows(path, spec, table)


def count_lines(data_dir: str | Path, fmt: str, table: str = "interactions") -> int:
    """Lines of one table after its header: its row count without parsing (malformed and blank lines included).

    A cheap size for decisions made before ingestion runs (StatisticsGen's sampling); 0 when the table is absent.
    """
    spec = resolve_spec(data_dir, fmt, table)
    path = Path(data_dir) / spec.filename if spec is not None else None
    if path is None or not path.exists():
        return 0
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without its newline
    return max(lines - spec.header_lines, 0)


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
    dataset_format = get_format(fmt)
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
