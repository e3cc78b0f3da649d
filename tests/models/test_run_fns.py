"""run_fns._fit: the ranker's one-day batches and the example budget reach Model.fit."""

import os
from types import SimpleNamespace

import numpy as np
import tensorflow as tf

from towerflow.models import distribution, run_fns
from towerflow.models.input_pipeline import EXAMPLE_BUDGET_KEY
from towerflow.models.preprocessing import table_sizes_from_transform_output
from towerflow.models.ranking import DCNRankingModel, RankingConfig

SMALL = dict(user_id_dim=8, item_id_dim=8, feature_dim=4, deep_layers=(16,), batch_size=8)


def _write_transformed(rows, spec, path) -> None:
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for row in rows:
            feature = {}
            for key, parsing in spec.items():
                values = np.asarray(row[key]).reshape(-1)
                if parsing.dtype == tf.int64:
                    feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values.astype(np.int64)))
                else:
                    feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values.astype(np.float32)))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_fit_runs_the_budgeted_epochs_on_day_batches(tft_world, tmp_path):
    # A budget of twice the training examples: 2 of the 3 configured epochs (budgeted_epochs has the other cases).
    train_rows, _, tft_output = tft_world
    path = tmp_path / "train.gz"
    _write_transformed(train_rows, tft_output.transformed_feature_spec(), path)
    custom_config = {EXAMPLE_BUDGET_KEY: 2 * len(train_rows) + 1}
    fn_args = SimpleNamespace(
        transform_output=os.path.dirname(tft_output.transform_savedmodel_dir),
        train_files=[str(path)],
        eval_files=[str(path)],
        custom_config=custom_config,
        model_run_dir=None,
    )
    tf.keras.utils.set_random_seed(0)
    model = DCNRankingModel(RankingConfig(**SMALL), table_sizes_from_transform_output(tft_output))
    model.compile()
    dist = distribution.start(custom_config)
    _, history = run_fns._fit(model, fn_args, 8, 3, "ranking", 0, dist, bucket_hours=24.0)
    assert len(history.history["loss"]) == 2
    assert np.all(np.isfinite(history.history["loss"]))


def _catalog_by_row_loop(rows, keys, id_key):
    """The reference: each item's features from its first row, ordered by item id (the old Python loop)."""
    first = {}
    for row in rows:
        first.setdefault(int(np.asarray(row[id_key]).reshape(-1)[0]), row)
    return {key: np.stack([np.asarray(first[item][key]) for item in sorted(first)]) for key in keys}


def test_training_columns_read_only_the_asked_keys_and_give_the_catalog(tft_world, tmp_path):
    from towerflow.models import embeddings as E
    from towerflow.models import features as F

    train_rows, _, tft_output = tft_world
    spec = tft_output.transformed_feature_spec()
    # three files, so the read is an interleave; columns keep the first file's rows first
    for part in range(3):
        _write_transformed(train_rows[part::3], spec, tmp_path / f"train-{part}.gz")
    keys = (F.TIMESTAMP_XF, *E.CANDIDATE_ID_FEATURES, F.ITEM_LOG_FREQUENCY_XF)
    columns = run_fns.training_columns(str(tmp_path / "train-*.gz"), tft_output, keys, batch_size=5)
    assert set(columns) == set(keys)
    assert len(columns[F.TIMESTAMP_XF]) == len(train_rows)
    expected = sorted(int(np.asarray(r[F.TIMESTAMP_XF]).reshape(-1)[0]) for r in train_rows)
    assert sorted(columns[F.TIMESTAMP_XF].reshape(-1).tolist()) == expected
    catalog = run_fns._catalog_from_columns(columns)
    # rows in the order the read gave them, then the loop's rule: first row per item
    read_rows = [{key: columns[key][i] for key in keys} for i in range(len(columns[F.TIMESTAMP_XF]))]
    reference = _catalog_by_row_loop(read_rows, keys[1:], F.ITEM_ID_XF)
    assert set(catalog) == set(reference)
    for key in reference:
        np.testing.assert_array_equal(catalog[key], reference[key].reshape(catalog[key].shape))
