"""The Ingestion TFX component: runs the Beam ingestion graph and records what it made.

Outputs
  examples      standard `Examples` with splits train/eval/test (gzipped
                tf.Example TFRecords), plus custom properties that lineage shows:
                split strategy and cut-offs, rows per split, quarantined rows,
                input path and fingerprint.
  item_catalog  every item with its features (tf.Examples), for the index builder.
  quarantine    JSON lines {table, reason, line} of every row that was rejected.

A run whose bad-row fraction in any table exceeds `max_bad_fraction` fails
with a message naming the table, the fraction and the most common reasons; the
quarantine is written first so the user can see what went wrong.
"""

import functools
import json
import logging
import os
from collections.abc import Callable, Sequence

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.component.experimental.annotations import BeamComponentParameter, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts
from tfx.types.standard_artifact_utils import encode_split_names

from towerflow.components.ingestion import beam_ingest, deletions, readers
from towerflow.components.ingestion.splits import (
    DEFAULT_EVAL_FRACTION,
    DEFAULT_LEAVE_LAST_N,
    DEFAULT_TRAIN_FRACTION,
    GLOBAL_TIME,
    SPLITS,
    SplitConfig,
)
from towerflow.models.features import DEFAULT_HISTORY_LENGTH

# A run fails when more than this fraction of any table's rows is malformed.
DEFAULT_MAX_BAD_FRACTION = 0.01
# How many times the graph runs before rows that went missing stop the run (`run_checked`).
DEFAULT_ATTEMPTS = 2


class ItemCatalog(types.Artifact):
    """Every catalog item with its features, as gzipped tf.Example TFRecords."""

    TYPE_NAME = "towerflow.ItemCatalog"


class QuarantinedRows(types.Artifact):
    """Rows ingestion rejected, as JSON lines with the table and the reason."""

    TYPE_NAME = "towerflow.QuarantinedRows"


class BadRowsError(RuntimeError):
    """Too many malformed rows for the run to be trusted."""


class RowsLostError(RuntimeError):
    """Interaction rows were read but are neither in the examples, the quarantine nor dropped for deletion."""


def check_rows_kept(summary: dict) -> None:
    """Raises RowsLostError unless every interaction line read is an example, quarantined or deleted.

    The runner, not our code, has lost rows before: two 20M-row runs on the DirectRunner with two
    worker processes wrote 24.6% and 2.4% fewer examples than the rows they read, with no error.
    """
    read = summary["lines_read"].get("interactions", 0)
    examples = sum(summary["split_counts"].values())
    bad = summary["malformed_by_table"].get("interactions", 0)
    deleted = summary.get("deleted_interaction_rows", 0)
    if examples + bad + deleted != read:
        raise RowsLostError(
            f"ingestion read {read:,} interaction rows but wrote {examples:,} examples, quarantined {bad:,} and "
            f"dropped {deleted:,} of deleted users: {read - examples - bad - deleted:,} rows are unaccounted for. "
            'The run stops here rather than train on part of the data (see docs/design.md, "Rows lost at 20M").'
        )


def pipelines_like(first: beam.Pipeline) -> Callable[[int], beam.Pipeline]:
    """`run_checked`'s make_pipeline for the pipeline TFX hands the component: that one for attempt 1,
    then a new pipeline with its options (runner, workers) for each later attempt (a pipeline runs once)."""
    return lambda attempt: first if attempt == 1 else beam.Pipeline(options=first.options)


def run_checked(
    make_pipeline: Callable[[int], beam.Pipeline],
    build: Callable[[beam.Pipeline], None],
    output_uris: Sequence[str],
    summary_path: str,
    attempts: int = DEFAULT_ATTEMPTS,
) -> tuple[dict, int]:
    """Runs the ingestion graph until every row read is accounted for: (its summary, the attempt that was).

    `make_pipeline(attempt)` gives a pipeline (attempt 1, 2, ...) and `build(pipeline)` adds the graph.
    When `check_rows_kept` fails, what the attempt wrote under `output_uris` is deleted and the graph runs
    again, `attempts` times in all; the last failure raises RowsLostError. Why: Beam's DirectRunner with
    worker processes has silently lost rows in some of our 20M-row runs (docs/design.md, "Rows lost at
    20M": whole stretches of one worker's output to one user shard, never reaching the shuffle), and
    a fresh run of the same graph kept every row in others.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            for uri in output_uris:
                if tf.io.gfile.exists(uri):
                    tf.io.gfile.rmtree(uri)
                tf.io.gfile.makedirs(uri)
        with make_pipeline(attempt) as pipeline:
            build(pipeline)
        with tf.io.gfile.GFile(summary_path) as f:
            summary = json.load(f)
        try:
            check_rows_kept(summary)
            return summary, attempt
        except RowsLostError as error:
            if attempt == attempts:
                raise
            logging.warning("ingestion attempt %d of %d lost rows, running it again: %s", attempt, attempts, error)
    raise AssertionError("unreachable: the last attempt returns or raises")


def check_bad_rows(summary: dict, max_bad_fraction: float, quarantine_uri: str = "") -> None:
    """Raises BadRowsError when some table's malformed fraction exceeds the threshold."""
    for table, lines in sorted(summary["lines_read"].items()):
        bad = summary["malformed_by_table"].get(table, 0)
        if lines and bad / lines > max_bad_fraction:
            reasons = sorted(
                ((n, r) for r, n in summary["malformed_by_reason"].items() if r.startswith(f"{table}:")), reverse=True
            )
            top = "; ".join(f"{r.split(': ', 1)[1]} x{n}" for n, r in reasons[:3])
            raise BadRowsError(
                f"{bad} of {lines} rows of the {table} table are malformed ({bad / lines:.2%} > allowed "
                f"{max_bad_fraction:.2%}); most common: {top}. "
                f"Every rejected row is in {quarantine_uri or 'the quarantine output'}."
            )


@component(use_beam=True)
def Ingestion(  # noqa: N802 - TFX names components like classes
    examples: OutputArtifact[standard_artifacts.Examples],
    item_catalog: OutputArtifact[ItemCatalog],
    quarantine: OutputArtifact[QuarantinedRows],
    data_dir: Parameter[str],
    dataset_format: Parameter[str],
    input_fingerprint: Parameter[str] = "",
    code_fingerprint: Parameter[str] = "",
    split_strategy: Parameter[str] = GLOBAL_TIME,
    train_fraction: Parameter[float] = DEFAULT_TRAIN_FRACTION,
    eval_fraction: Parameter[float] = DEFAULT_EVAL_FRACTION,
    leave_last_n: Parameter[int] = DEFAULT_LEAVE_LAST_N,
    history_length: Parameter[int] = DEFAULT_HISTORY_LENGTH,
    max_bad_fraction: Parameter[float] = DEFAULT_MAX_BAD_FRACTION,
    deletion_ledger: Parameter[str] = "",
    deletion_ledger_fingerprint: Parameter[str] = "",
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
):
    """Parses, validates, joins, adds point-in-time features and splits by time.

    `train_fraction`/`eval_fraction` are the global_time quantiles (train <
    q(train_fraction) <= eval < q(eval_fraction) <= test); `input_fingerprint`
    is a content hash of `data_dir` so changed data is never served from cache;
    `code_fingerprint` does the same for changed ingestion code.
    `deletion_ledger` names the users whose rows are dropped (deletions.py);
    its fingerprint makes a new delete re-run this step.
    """
    split = SplitConfig(split_strategy, (train_fraction, eval_fraction), leave_last_n)
    summary_path = os.path.join(examples.uri, beam_ingest.SUMMARY_FILE)
    build = functools.partial(
        beam_ingest.build_ingestion,
        data_dir=data_dir,
        fmt_name=dataset_format,
        split=split,
        history_length=history_length,
        examples_uri=examples.uri,
        catalog_uri=item_catalog.uri,
        quarantine_uri=quarantine.uri,
        summary_path=summary_path,
        deleted_users=deletions.load(deletion_ledger),
        shards=beam_ingest.user_shards(readers.count_lines(data_dir, dataset_format)),
    )
    summary, attempt = run_checked(
        pipelines_like(beam_pipeline),
        build,
        [examples.uri, item_catalog.uri, quarantine.uri],
        summary_path,
    )

    examples.split_names = encode_split_names(list(SPLITS))
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples.span = 0
    properties = {
        "split_strategy": split_strategy,
        "split_cutoffs": summary["cutoffs"] or [],
        "split_fractions": [train_fraction, eval_fraction],
        "leave_last_n": leave_last_n,
        "split_counts": summary["split_counts"],
        "lines_read": summary["lines_read"],
        "malformed_by_table": summary["malformed_by_table"],
        "malformed_by_reason": summary["malformed_by_reason"],
        "num_users": summary["num_users"],
        "num_items": summary["num_items"],
        "input_path": data_dir,
        "input_fingerprint": input_fingerprint,
        "history_length": history_length,
        "deleted_users_excluded": summary.get("deleted_users_excluded", 0),
        "deleted_interaction_rows": summary.get("deleted_interaction_rows", 0),
        "ingestion_attempts": attempt,
    }
    for key, value in properties.items():
        examples.set_json_value_custom_property(key, value)
    item_catalog.set_int_custom_property("num_items", summary["num_items"])
    quarantine.set_int_custom_property("num_rows", sum(summary["malformed_by_table"].values()))
    quarantine.set_json_value_custom_property("by_reason", summary["malformed_by_reason"])
    check_bad_rows(summary, max_bad_fraction, quarantine.uri)
