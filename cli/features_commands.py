"""`towerflow features ...` and `towerflow users delete`: load the online feature store, forget a user.

    towerflow features materialize --run-dir runs/local                      # embedded redis-server
    towerflow features materialize --run-dir runs/local --as-of test-cutoff  # the offline evaluation's state
    towerflow features materialize --run-dir runs/local --redis-url redis://cache:6379/0
    towerflow features materialize --run-dir runs/local --redis-cluster 10.0.0.1:7000,10.0.0.2:7000
    towerflow features export-events --run-dir runs/local --out data/ml-100k-plus-events
    towerflow users delete 42 --run-dir runs/local

The store is loaded from the ingestion run the run directory's ML Metadata
records (its input data and split cut-offs), so what the service serves is
what training saw. Without --redis-url/--redis-cluster the command starts a
local redis-server on <run-dir>/feature_store/ and stops it when done.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

AS_OF_NAMES = {"eval-cutoff": 0, "test-cutoff": 1}  # index into the ingestion run's split_cutoffs


@dataclass
class IngestionRun:
    """What the store needs to know about the ingestion run it is loaded from."""

    source: str  # "ingestion-<examples artifact id>"
    data_dir: str
    dataset_format: str
    cutoffs: list[float]
    history_length: int
    lines: int  # interaction lines read (for the progress bar)


def resolve_ingestion(run_dir: str) -> IngestionRun:
    """The newest Ingestion.examples artifact in <run_dir>/metadata.sqlite and the properties it recorded."""
    from towerflow.components.ingestion import readers
    from towerflow.pipeline import mlmd

    metadata_path = str(Path(run_dir) / "metadata.sqlite")
    uri = mlmd.latest_artifacts(metadata_path).get("Ingestion.examples")
    if uri is None:
        raise ValueError(f"{metadata_path} records no Ingestion output; run `towerflow run --output-dir {run_dir}`")
    [artifact] = [a for a in mlmd.open_store(metadata_path).get_artifacts_by_uri(uri)][-1:]
    props = mlmd.property_values(artifact)
    data_dir = props["input_path"]
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"the ingestion run read {data_dir}, which is no longer there")
    try:
        fmt = mlmd.execution_parameters(metadata_path, "Ingestion").get("dataset_format")
    except ValueError:
        fmt = None
    return IngestionRun(
        source=f"ingestion-{artifact.id}",
        data_dir=data_dir,
        dataset_format=fmt or readers.detect_format(data_dir),
        cutoffs=list(props.get("split_cutoffs") or []),
        history_length=int(props.get("history_length", 20)),
        lines=int((props.get("lines_read") or {}).get("interactions", 0)),
    )


def parse_as_of(value: str | None, cutoffs: list[float]) -> int | None:
    """Epoch seconds, ISO-8601 (UTC when no zone is given), or eval-cutoff / test-cutoff -> epoch seconds.

    A cut-off is a timestamp quantile and may be fractional; its ceiling keeps exactly the events
    strictly before it (timestamps are whole seconds).
    """
    if value is None:
        return None
    if value in AS_OF_NAMES:
        if len(cutoffs) != 2:
            raise ValueError(f"--as-of {value}: the ingestion run recorded no time cut-offs (not a global_time split)")
        return math.ceil(cutoffs[AS_OF_NAMES[value]])
    if value.lstrip("-").isdigit():
        seconds = int(value)
    else:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"--as-of {value!r}: give epoch seconds, an ISO-8601 time or one of {', '.join(AS_OF_NAMES)}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        seconds = math.ceil(moment.timestamp())
    if seconds < 0:
        raise ValueError(f"--as-of {value!r} is before 1970")
    return seconds


def _rows(run: IngestionRun, table: str) -> Iterator:
    """Parsed rows of one table; malformed lines are skipped as ingestion quarantines them."""
    from towerflow.components.ingestion import readers

    if readers.FORMATS[run.dataset_format].table(table) is None:
        return
    for row in readers.read_table(run.data_dir, run.dataset_format, table):
        if not isinstance(row, readers.MalformedRow):
            yield row


def input_events(run: IngestionRun, events_dir: Path | None, excluded) -> Iterator[tuple]:
    """(user, item, rating, timestamp, event id): the ingested interactions ("d<line>") then logged events."""
    from towerflow.serving.feature_store.event_log import read_events

    for n, row in enumerate(_rows(run, "interactions")):
        yield row.user_id, row.item_id, row.rating, row.timestamp, f"d{n}"
    if events_dir is not None and events_dir.is_dir():
        for event in read_events(events_dir, excluded):
            yield event["user_id"], event["item_id"], event["rating"], event["timestamp"], event["event_id"]


def profile_rows(run):
    """(users, items) of the run's ingestion input as the store's profile and item dicts, streamed."""
    from towerflow.models import features

    users = (
        {features.USER_ID: u.user_id, features.USER_AGE: u.age, features.USER_GENDER: u.gender,
         features.USER_OCCUPATION: u.occupation, features.USER_ZIP: u.zip_code}
        for u in _rows(run, "users")
    )  # fmt: skip
    items = (
        {features.ITEM_ID: i.item_id, features.ITEM_TITLE: i.title, features.ITEM_GENRES: list(i.genres),
         features.ITEM_RELEASE_YEAR: i.release_year}
        for i in _rows(run, "items")
    )  # fmt: skip
    return users, items


def _materialize(args) -> None:
    from tqdm import tqdm

    from towerflow.components.ingestion import deletions
    from towerflow.serving import feature_store
    from towerflow.serving.feature_store.materialize import MaterializeConfig, materialize
    from towerflow.serving.feature_store.privacy import DeletionLedger

    run = resolve_ingestion(args.run_dir)
    as_of = parse_as_of(args.as_of, run.cutoffs)
    config = MaterializeConfig(
        source=run.source,
        as_of=as_of,
        history_length=run.history_length,
        batch_size=args.batch_size,
        require_known_items=_has_table(run, "items"),
    )
    ledger = DeletionLedger(deletions.ledger_for_pipeline_root(str(Path(args.run_dir) / "pipeline_root")))
    excluded = ledger.excluder()
    events_dir = feature_store.events_dir(args.serving_root or Path(args.run_dir) / "serving")
    users, items = profile_rows(run)
    where = args.redis_url or args.redis_cluster or f"a local redis-server on {Path(args.run_dir) / 'feature_store'}"
    print(f"Materializing {run.source} ({run.data_dir}, {run.dataset_format}) into {where}")
    # Items and users are small next to the events; the bar follows the events.
    bar = tqdm(total=run.lines or None, desc="events", unit=" rows", file=sys.stderr, mininterval=0.5)

    def progress(stage: str, n: int) -> None:
        if stage == "events":
            bar.update(n)

    with feature_store.open_client(args.run_dir, args.redis_url, args.redis_cluster) as client:
        summary = materialize(client, config, users, items, input_events(run, events_dir, excluded), excluded, progress)
    bar.close()
    print(summary.format())


def _has_table(run: IngestionRun, table: str) -> bool:
    from towerflow.components.ingestion import readers

    return readers.FORMATS[run.dataset_format].table(table) is not None


def _export_events(args) -> None:
    """Ingested data + the event log (deleted users left out) as a towerflow-format dataset for the next run."""
    from towerflow.components.ingestion import deletions, readers
    from towerflow.serving import feature_store
    from towerflow.serving.feature_store.event_log import read_events
    from towerflow.serving.feature_store.privacy import DeletionLedger

    run = resolve_ingestion(args.run_dir)
    excluded = DeletionLedger(deletions.ledger_for_pipeline_root(str(Path(args.run_dir) / "pipeline_root"))).excluder()
    events_dir = feature_store.events_dir(args.serving_root or Path(args.run_dir) / "serving")
    logged = 0

    def interactions():
        nonlocal logged
        yield from (r for r in _rows(run, "interactions") if not excluded(r.user_id))
        for event in read_events(events_dir, excluded) if events_dir.is_dir() else ():
            logged += 1
            yield readers.Interaction(event["user_id"], event["item_id"], float(event["rating"]), event["timestamp"])

    users = (u for u in _rows(run, "users") if not excluded(u.user_id))
    paths = readers.write_towerflow(args.out, interactions(), users, _rows(run, "items"))
    print(f"Wrote {run.data_dir} plus {logged:,} logged events (deleted users left out) to {args.out}: "
          f"{', '.join(str(p) for p in paths.values())}")  # fmt: skip


def _delete_user(args) -> None:
    from towerflow.components.ingestion import deletions
    from towerflow.serving import feature_store

    config = feature_store.StoreConfig(
        events_dir=str(feature_store.events_dir(args.serving_root or Path(args.run_dir) / "serving")),
        ledger_path=deletions.ledger_for_pipeline_root(str(Path(args.run_dir) / "pipeline_root")),
    )
    with feature_store.open_store(args.run_dir, args.redis_url, args.redis_cluster, config=config) as store:
        result = store.delete_user(args.user_id)
    found = "removed from" if result["found"] else "not found in"
    versions = ", ".join(result["versions"]) or "none"
    print(
        f"User {args.user_id} {found} the feature store ({result['events_removed']:,} events, versions {versions}); "
        f"hashed id appended to {result['ledger']}: the next `towerflow run --output-dir {args.run_dir}` drops "
        "the user's rows and event-log reads skip them"
    )


def _store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="the `towerflow run --output-dir` directory")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--redis-url", default=None, help="external Redis, redis://host:port/db")
    where.add_argument("--redis-cluster", default=None, help="Redis Cluster startup nodes, host:port,host:port")
    parser.add_argument("--serving-root", default=None, help="holds events/ (default: <run-dir>/serving)")


def add_commands(subparsers) -> None:
    features = subparsers.add_parser("features", help="the online feature store").add_subparsers(
        dest="features_command"
    )
    features.required = True
    materialize = features.add_parser("materialize", help="load the store from the run's ingestion")
    _store_args(materialize)
    materialize.add_argument(
        "--as-of", default=None, help="only events strictly before: epoch seconds, ISO-8601, eval-cutoff, test-cutoff"
    )
    materialize.add_argument("--batch-size", type=int, default=20_000, help="rows per Redis pipeline")
    materialize.set_defaults(func=_materialize)
    export = features.add_parser("export-events", help="ingested data + logged events as a dataset for the next run")
    export.add_argument("--run-dir", required=True)
    export.add_argument("--serving-root", default=None)
    export.add_argument("--out", required=True, help="directory for interactions.csv, users.csv, items.csv")
    export.set_defaults(func=_export_events)

    users = subparsers.add_parser("users", help="user data").add_subparsers(dest="users_command")
    users.required = True
    delete = users.add_parser("delete", help="forget a user: store, event log reads, next training runs")
    delete.add_argument("user_id")
    _store_args(delete)
    delete.set_defaults(func=_delete_user)
