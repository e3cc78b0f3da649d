"""Tests of the components/ingestion/readers package against tiny hand-written files in every format.

Most tests run every format through the same public API, so they stay here rather than in one file
per format module.
"""

from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path

import pytest

from towerflow.components.ingestion import readers
from towerflow.components.ingestion.readers import (
    FORMATS,
    TOWERFLOW_COLUMNS,
    TOWERFLOW_FILES,
    Interaction,
    Item,
    MalformedRow,
    TableSpec,
    User,
    detect_format,
    load_dataset,
    parse_raw_line,
    read_table,
    resolve_spec,
    write_towerflow,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ALL_FORMATS = ["ml-100k", "ml-1m", "ml-20m", "ml-25m", "recbole", "towerflow"]

# The logical data every fixture directory holds, in its own format.
EXPECTED_INTERACTIONS = [
    Interaction("1", "1", 5.0, 874965758),
    Interaction("1", "2", 3.0, 874965800),
    Interaction("2", "1", 4.0, 875071561),
    Interaction("2", "3", 5.0, 875072000),
    Interaction("3", "2", 1.0, 878542960),
    Interaction("3", "3", 2.0, 878543000),
]
EXPECTED_USERS = [
    User("1", 25, "M", "programmer", "55455"),
    User("2", 35, "F", "writer", "94043"),
    User("3", 18, "M", "lawyer", "10003"),
]
EXPECTED_ITEMS = [
    Item("1", "Toy Story", 1995, ("Animation", "Comedy")),
    Item("2", "American President, The", 1995, ("Comedy", "Drama", "Romance")),
    Item("3", "Misérables, Les", 1998, ("Drama", "Musical")),
]


def _rows(data_dir, fmt, table):
    rows = list(read_table(data_dir, fmt, table))
    bad = [r for r in rows if isinstance(r, MalformedRow)]
    assert not bad, bad
    return rows


# ------------------------------------------------------------------ formats


def test_formats_registry():
    assert set(FORMATS) == set(ALL_FORMATS)
    for name, fmt in FORMATS.items():
        assert fmt.name == name
        assert isinstance(fmt.interactions, TableSpec)
    assert FORMATS["ml-20m"].users is None and FORMATS["ml-25m"].users is None
    assert FORMATS["ml-20m"].rating_range == (0.5, 5.0)
    assert FORMATS["ml-100k"].rating_range == (1.0, 5.0)
    assert FORMATS["ml-100k"].items.encoding == "latin-1"
    assert FORMATS["ml-1m"].users.encoding == "latin-1"
    assert FORMATS["towerflow"].items.encoding == "utf-8"


def test_every_format_is_defined_in_its_own_module():
    from towerflow.components.ingestion.readers import ml1m, ml20m, ml100k, recbole, towerflow_csv

    assert FORMATS == {
        "ml-100k": ml100k.FORMAT,
        "ml-1m": ml1m.FORMAT,
        "ml-20m": ml20m.ML20M,
        "ml-25m": ml20m.ML25M,
        "recbole": recbole.FORMAT,
        "towerflow": towerflow_csv.FORMAT,
    }
    # Every format is found by detect_format: by its files, its own detect hook, or a sibling's (ml-25m's).
    assert all(fmt.detect_files or fmt.detect for name, fmt in FORMATS.items() if name != "ml-25m")


def test_names_other_modules_import_stay_on_the_package():
    # beam_ingest, pipeline.py, synthetic.py and the pipeline tests import these from the package.
    for name in ("TABLES", "TableSpec", "parse_raw_line", "MalformedRow", "Item", "User", "resolve_spec"):
        assert hasattr(readers, name), name
    for name in ("detect_format", "load_dataset", "ML100K_GENRES", "TOWERFLOW_COLUMNS", "TOWERFLOW_FILES"):
        assert hasattr(readers, name), name
    assert set(readers.__all__) <= set(dir(readers))
    assert len(readers.ML100K_GENRES) == 19 and readers.ML100K_GENRES[0] == "unknown"


def test_towerflow_constants():
    assert TOWERFLOW_FILES == {"interactions": "interactions.csv", "users": "users.csv", "items": "items.csv"}
    assert TOWERFLOW_COLUMNS == {
        "interactions": ("user_id", "item_id", "rating", "timestamp"),
        "users": ("user_id", "age", "gender", "occupation", "zip_code"),
        "items": ("item_id", "title", "release_year", "genres"),
    }


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_detect_format(fmt):
    assert detect_format(FIXTURES / fmt) == fmt


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_count_lines_is_the_row_count_without_parsing(fmt, tmp_path):
    assert readers.count_lines(FIXTURES / fmt, fmt) == len(EXPECTED_INTERACTIONS)
    data_dir = tmp_path / fmt
    shutil.copytree(FIXTURES / fmt, data_dir)
    spec = resolve_spec(data_dir, fmt, "interactions")
    path = data_dir / spec.filename
    path.write_bytes(path.read_bytes().rstrip(b"\r\n"))  # the last line loses its newline
    assert readers.count_lines(data_dir, fmt) == len(EXPECTED_INTERACTIONS)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[: spec.header_lines]))
    assert readers.count_lines(data_dir, fmt) == 0


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_every_format_reads_to_the_same_rows(fmt):
    data_dir = FIXTURES / fmt
    assert _rows(data_dir, fmt, "interactions") == EXPECTED_INTERACTIONS
    assert _rows(data_dir, fmt, "items") == EXPECTED_ITEMS
    if FORMATS[fmt].users is None:
        with pytest.raises(ValueError, match="no users table"):
            read_table(data_dir, fmt, "users")
    else:
        assert _rows(data_dir, fmt, "users") == EXPECTED_USERS


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_load_dataset(fmt):
    ds = load_dataset(FIXTURES / fmt)
    assert ds.format == fmt
    assert ds.malformed == []
    df = ds.interactions
    assert list(df.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert str(df["rating"].dtype) == "float64" and str(df["timestamp"].dtype) == "int64"
    assert [Interaction(*r) for r in df.itertuples(index=False)] == EXPECTED_INTERACTIONS
    assert ds.items == {i.item_id: i for i in EXPECTED_ITEMS}
    assert ds.users == ({} if FORMATS[fmt].users is None else {u.user_id: u for u in EXPECTED_USERS})


def test_latin1_title_bytes_in_ml100k_fixture():
    assert "Misérables".encode("latin-1") in (FIXTURES / "ml-100k" / "u.item").read_bytes()
    assert "Misérables".encode() in (FIXTURES / "ml-20m" / "movies.csv").read_bytes()


def test_detect_format_errors(tmp_path):
    with pytest.raises(ValueError, match="expected the files of one of") as err:
        detect_format(tmp_path)
    for name in ("u.data", "ratings.dat", "ratings.csv", "interactions.csv", ".inter"):
        assert name in str(err.value)
    (tmp_path / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(ValueError, match="lacks u.user, u.item"):
        detect_format(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        detect_format(tmp_path / "nope")


def test_unknown_format_and_table():
    with pytest.raises(ValueError, match="unknown format"):
        read_table(FIXTURES / "ml-100k", "ml-7", "interactions")
    with pytest.raises(ValueError, match="unknown table"):
        read_table(FIXTURES / "ml-100k", "ml-100k", "ratings")


# --------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "fmt,table,line,reason",
    [
        # wrong field count
        ("ml-100k", "interactions", b"1\t2\t3", "expected 4 fields, got 3"),
        ("ml-1m", "interactions", b"1::2::3::4::5", "expected 4 fields, got 5"),
        ("ml-20m", "interactions", b"1,2,3.5", "expected 4 fields, got 3"),
        ("recbole", "interactions", b"1\t2\t3", "expected 4 fields, got 3"),
        ("towerflow", "interactions", b"u1,i1,4.0,1,extra", "expected 4 fields, got 5"),
        ("ml-100k", "items", b"1|Toy Story (1995)|01-Jan-1995", "expected 24 fields, got 3"),
        # bad ids
        ("ml-100k", "interactions", b"x\t2\t3\t881250949", "bad user id 'x'"),
        ("ml-1m", "interactions", b"1::-2::3::881250949", "bad item id '-2'"),
        ("ml-20m", "interactions", b"0,2,3.5,881250949", "bad user id '0'"),
        ("ml-100k", "interactions", b"\t2\t3\t881250949", "bad user id ''"),
        ("towerflow", "interactions", b",i1,4.0,881250949", "empty user id"),
        ("towerflow", "interactions", b"u 1,i1,4.0,881250949", "bad user id 'u 1' (contains whitespace)"),
        ("recbole", "interactions", b"1\t\t4\t881250949", "empty item id"),
        # timestamps
        ("ml-100k", "interactions", b"1\t2\t3\t", "missing timestamp"),
        ("towerflow", "interactions", b"u1,i1,4.0,", "missing timestamp"),
        ("recbole", "interactions", b"1\t2\t3\t ", "missing timestamp"),
        ("ml-20m", "interactions", b"1,2,3.5,12.5", "non-integer timestamp '12.5'"),
        ("ml-1m", "interactions", b"1::2::3::soon", "non-integer timestamp 'soon'"),
        ("towerflow", "interactions", b"u1,i1,4.0,-5", "negative timestamp -5"),
        # ratings
        ("ml-100k", "interactions", b"1\t2\t7\t881250949", "rating 7.0 out of range [1.0, 5.0]"),
        ("ml-20m", "interactions", b"1,2,0.0,881250949", "rating 0.0 out of range [0.5, 5.0]"),
        ("ml-1m", "interactions", b"1::2::0.5::881250949", "rating 0.5 out of range [1.0, 5.0]"),
        ("recbole", "interactions", b"1\t2\tgood\t881250949", "non-numeric rating 'good'"),
        ("towerflow", "interactions", b"u1,i1,nan,881250949", "non-numeric rating 'nan'"),
        # undecodable bytes (utf-8 formats)
        ("ml-20m", "items", b"1,Caf\xe9 (1995),Comedy", "undecodable bytes for encoding utf-8"),
        ("towerflow", "interactions", b"u\xff,i1,4.0,1", "undecodable bytes for encoding utf-8"),
        # users / items
        ("ml-100k", "users", b"1|old|M|writer|12345", "bad age 'old'"),
        ("ml-100k", "users", b"1|30|X|writer|12345", "bad gender 'X'"),
        ("ml-1m", "users", b"1::M::33::12::55455", "bad age code '33'"),
        ("ml-1m", "users", b"1::M::25::99::55455", "bad occupation code '99'"),
        ("towerflow", "users", b"u1,-2,F,writer,", "bad age '-2'"),
        ("ml-100k", "items", b"1|T (1995)|1995-01-01||u" + b"|0" * 19, "bad release date '1995-01-01'"),
        ("ml-100k", "items", b"1|T (1995)|01-Jan-1995||u" + b"|2" * 19, "bad genre flags"),
        ("towerflow", "items", b"i1,Title,soon,Drama", "bad release year 'soon'"),
        ("ml-20m", "items", b'1,"Unterminated (1995),Drama', "bad CSV quoting"),
    ],
)
def test_malformed_rows(fmt, table, line, reason):
    spec = FORMATS[fmt].table(table)
    with pytest.raises(MalformedRow) as err:
        parse_raw_line(spec, line)
    assert err.value.reason.startswith(reason), err.value.reason
    assert err.value.raw == line
    assert isinstance(err.value, ValueError)


def test_read_table_yields_malformed_with_line_numbers_and_continues(tmp_path):
    shutil.copytree(FIXTURES / "ml-20m", tmp_path, dirs_exist_ok=True)
    good = (FIXTURES / "ml-20m" / "ratings.csv").read_bytes()
    bad_lines = [
        b"abc,1,4.0,874965758",  # line 8: bad id
        b"1,1,4.0,",  # line 9: missing timestamp
        b"1,1,9.0,874965758",  # line 10: out of range
        b"1,1,4.0,87\xff",  # line 11: undecodable
        b"1,1,4.0",  # line 12: wrong field count
    ]
    (tmp_path / "ratings.csv").write_bytes(good + b"\r\n".join(bad_lines) + b"\r\n2,2,2.5,874965999\n\n")
    rows = list(read_table(tmp_path, "ml-20m", "interactions"))
    assert rows[:6] == EXPECTED_INTERACTIONS
    assert rows[-1] == Interaction("2", "2", 2.5, 874965999)  # reading went on after the bad rows
    bad = rows[6:-1]
    assert all(isinstance(r, MalformedRow) for r in bad)
    assert [r.line_number for r in bad] == [8, 9, 10, 11, 12]
    assert [r.raw for r in bad] == bad_lines
    assert [r.table for r in bad] == ["interactions"] * 5
    assert [r.reason for r in bad] == [
        "bad user id 'abc'",
        "missing timestamp",
        "rating 9.0 out of range [0.5, 5.0]",
        "undecodable bytes for encoding utf-8",
        "expected 4 fields, got 3",
    ]
    assert str(bad[0]) == "interactions line 8: bad user id 'abc'"

    ds = load_dataset(tmp_path)
    assert len(ds.interactions) == 7
    assert [m.line_number for m in ds.malformed] == [8, 9, 10, 11, 12]


def test_malformed_row_pickles():
    err = MalformedRow("missing timestamp", line_number=3, raw=b"1,2,3,", table="interactions")
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.line_number, back.raw, back.table) == ("missing timestamp", 3, b"1,2,3,", "interactions")


def test_duplicate_ids_are_reported(tmp_path):
    shutil.copytree(FIXTURES / "towerflow", tmp_path, dirs_exist_ok=True)
    with open(tmp_path / "users.csv", "a", encoding="utf-8") as f:
        f.write("1,40,F,other,\n")
    ds = load_dataset(tmp_path)
    assert ds.users["1"] == EXPECTED_USERS[0]
    assert [m.reason for m in ds.malformed] == ["duplicate user id '1'"]


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_parsers_only_raise_malformed_row_on_garbage(fmt):
    rng = random.Random(fmt)
    alphabet = b"0123456789abc ,|:\t\"'.-()\xe9\xff\n\r"
    for table in ("interactions", "users", "items"):
        spec = FORMATS[fmt].table(table)
        if spec is None:
            continue
        for _ in range(400):
            raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            try:
                row = parse_raw_line(spec, raw)
            except MalformedRow as err:
                assert err.reason
            else:
                assert isinstance(row, (Interaction, User, Item))


# ----------------------------------------------------------------- recbole


def test_recbole_maps_columns_by_header_name(tmp_path):
    (tmp_path / "shuffled.inter").write_text(
        "timestamp:float\trating:float\titem_id:token\tuser_id:token\n881250949.0\t4.5\tm7\tu3\n", encoding="utf-8"
    )
    (tmp_path / "shuffled.item").write_text(
        "class:token_seq\titem_id:token\tmovie_title:token_seq\trelease_year:token\textra:float\n"
        "Drama Sci-Fi\tm7\tSolaris (1972)\tV\t0.3\n"
        "unknown\tm8\tunkonwn\tunkonwn\t0.1\n",
        encoding="utf-8",
    )
    assert detect_format(tmp_path) == "recbole"
    assert resolve_spec(tmp_path, "recbole", "interactions").filename == "shuffled.inter"
    assert _rows(tmp_path, "recbole", "interactions") == [Interaction("u3", "m7", 4.5, 881250949)]
    assert _rows(tmp_path, "recbole", "items") == [
        Item("m7", "Solaris", 1972, ("Drama", "Sci-Fi")),  # year from the title when the column is junk
        Item("m8", "unkonwn", 0, ()),
    ]
    # No .user file: RecBole treats it as optional.
    assert list(read_table(tmp_path, "recbole", "users")) == []
    ds = load_dataset(tmp_path)
    assert ds.users == {} and len(ds.items) == 2


def test_recbole_header_missing_required_column(tmp_path):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t2\t3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks required column"):
        read_table(tmp_path, "recbole", "interactions")


def test_csv_header_is_checked(tmp_path):
    shutil.copytree(FIXTURES / "towerflow", tmp_path, dirs_exist_ok=True)
    (tmp_path / "interactions.csv").write_text("item_id,user_id,rating,timestamp\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not the expected"):
        read_table(tmp_path, "towerflow", "interactions")


# --------------------------------------------------------------- towerflow


def test_towerflow_write_read_round_trip(tmp_path):
    interactions = EXPECTED_INTERACTIONS + [Interaction("user,7", 'item"q"', 3.5, 0)]
    users = EXPECTED_USERS + [User("user,7")]
    items = EXPECTED_ITEMS + [Item('item"q"', "Amélie, le film", 0, ()), Item("i9", "No year", 2001, ("Sci-Fi",))]
    paths = write_towerflow(tmp_path, iter(interactions), iter(users), iter(items))
    assert {k: p.name for k, p in paths.items()} == TOWERFLOW_FILES
    assert (tmp_path / "users.csv").read_text(encoding="utf-8").splitlines()[
        0
    ] == "user_id,age,gender,occupation,zip_code"
    assert detect_format(tmp_path) == "towerflow"
    assert _rows(tmp_path, "towerflow", "interactions") == interactions
    assert _rows(tmp_path, "towerflow", "users") == users
    assert _rows(tmp_path, "towerflow", "items") == items


def test_towerflow_fixture_equals_written_file(tmp_path):
    write_towerflow(tmp_path, EXPECTED_INTERACTIONS, EXPECTED_USERS, EXPECTED_ITEMS)
    for name in TOWERFLOW_FILES.values():
        assert (tmp_path / name).read_bytes() == (FIXTURES / "towerflow" / name).read_bytes()


def test_write_towerflow_rejects_unreadable_values(tmp_path):
    with pytest.raises(ValueError, match="newline"):
        write_towerflow(tmp_path, [], [], [Item("i1", "two\nlines")])
    with pytest.raises(ValueError, match="bad user id 'a b'"):
        write_towerflow(tmp_path, [Interaction("a b", "i1", 4.0, 1)])


def test_module_docstring():
    assert readers.__doc__ and "MovieLens" in readers.__doc__
