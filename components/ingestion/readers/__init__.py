"""Readers of raw interaction logs: MovieLens, RecBole atomic files and towerflow CSV.

Every supported on-disk format is described by a `DatasetFormat`: one `TableSpec`
per table (interactions, users, items) saying which file holds it, its text
encoding, how many header lines to skip and a `parse` function that turns one
decoded line into a normalized row -- an `Interaction`, a `User` or an `Item` --
or raises `MalformedRow` with a short reason. The same specs serve the Beam
ingestion component (line by line, bad rows quarantined) and the plain-Python
helpers here (`read_table`, `load_dataset`).

The package's modules: `parsing` holds what every format shares (the rows,
the specs, the field parsers that apply the normalization rules below, the
line reader that quarantines bad lines); each format has its own module
(`ml100k`, `ml1m`, `ml20m`, `recbole`, `towerflow_csv`) defining its
`DatasetFormat`, including how a directory of it is recognised and how a
spec is bound to the files there; `registry` holds `FORMATS` and the
format-agnostic readers. A new format is a new module plus one entry in
`FORMATS`. Import the names below from the package, not from its modules.

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

from towerflow.components.ingestion.readers.ml1m import ML1M_AGE_CODES, ML1M_OCCUPATIONS
from towerflow.components.ingestion.readers.ml20m import ML20M_COLUMNS
from towerflow.components.ingestion.readers.ml100k import ML100K_GENRES
from towerflow.components.ingestion.readers.parsing import (
    TABLES,
    DatasetFormat,
    Interaction,
    Item,
    MalformedRow,
    Row,
    TableSpec,
    User,
    parse_raw_line,
)
from towerflow.components.ingestion.readers.recbole import RECBOLE_DEFAULT_HEADERS, RECBOLE_SUFFIXES
from towerflow.components.ingestion.readers.registry import (
    FORMATS,
    NormalizedDataset,
    count_lines,
    detect_format,
    load_dataset,
    read_table,
    resolve_spec,
)
from towerflow.components.ingestion.readers.towerflow_csv import (
    TOWERFLOW_COLUMNS,
    TOWERFLOW_FILES,
    TOWERFLOW_GENRE_SEP,
    write_towerflow,
)

__all__ = [
    "FORMATS",
    "ML100K_GENRES",
    "ML1M_AGE_CODES",
    "ML1M_OCCUPATIONS",
    "ML20M_COLUMNS",
    "RECBOLE_DEFAULT_HEADERS",
    "RECBOLE_SUFFIXES",
    "TABLES",
    "TOWERFLOW_COLUMNS",
    "TOWERFLOW_FILES",
    "TOWERFLOW_GENRE_SEP",
    "DatasetFormat",
    "Interaction",
    "Item",
    "MalformedRow",
    "NormalizedDataset",
    "Row",
    "TableSpec",
    "User",
    "count_lines",
    "detect_format",
    "load_dataset",
    "parse_raw_line",
    "read_table",
    "resolve_spec",
    "write_towerflow",
]
