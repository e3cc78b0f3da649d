"""Tiny SavedModels (built here, no pipeline run needed) and a serving root to serve them from.

`tiny` model, version k built with offset o:
  serving_default  x: float [-1]                      -> y = 0.5 x + o   (TF Serving's half_plus_two when o=2)
  score            user_id str [-1], user_age int64 [-1], hist_item_ids str [-1,-1]
                   -> score = 0.01 age + (#non-empty hist) + o, embedding = [score, #hist]  ([-1, 2])
  echo             data_bytes str [-1]                 -> out_bytes (same bytes), length int32
"""

import pytest


def build_tiny_model(path, offset: float) -> str:
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.offset = tf.Variable(offset, dtype=tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def half_plus(self, x):
            return {"y": 0.5 * x + self.offset}

        @tf.function(
            input_signature=[
                {
                    "user_id": tf.TensorSpec([None], tf.string, name="user_id"),
                    "user_age": tf.TensorSpec([None], tf.int64, name="user_age"),
                    "hist_item_ids": tf.TensorSpec([None, None], tf.string, name="hist_item_ids"),
                }
            ]
        )
        def score(self, features):
            n = tf.reduce_sum(tf.cast(tf.not_equal(features["hist_item_ids"], ""), tf.float32), axis=1)
            score = 0.01 * tf.cast(features["user_age"], tf.float32) + n + self.offset
            return {"score": score, "embedding": tf.stack([score, n], axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="data_bytes")])
        def echo(self, data_bytes):
            return {"out_bytes": data_bytes, "length": tf.strings.length(data_bytes)}

    module = Tiny()
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.half_plus.get_concrete_function(),
            "score": module.score.get_concrete_function(),
            "echo": module.echo.get_concrete_function(),
        },
    )
    return str(path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Two exported versions of the tiny model: offset 2.0 ("v1") and 3.0 ("v2")."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {1: build_tiny_model(root / "offset2", 2.0), 2: build_tiny_model(root / "offset3", 3.0)}
