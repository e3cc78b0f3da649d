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
