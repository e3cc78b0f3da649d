"""Serving signatures that take RAW features, with the Transform graph inside.

A client sends what ingestion or the feature store produces (`models/features.py`
names): scalars as 1-D tensors, list features (`hist_item_ids`, `item_genres`)
as 2-D string tensors right-padded with "". Every signature also exists in a
serialized-tf.Example form (`<name>_examples`, input `examples`).

A broadcast signature (`broadcast_signature`) serves the online case of one
query and N candidates: the query's features come ONCE (shape [1] / [1, L])
and the candidates' features N times. The Transform graph runs on the one
query row and its transformed features are repeated N times inside the graph,
so a request no longer carries (and the server no longer decodes and
transforms) N copies of the user's history ids.

The Transform layer needs every raw feature it was built with; a signature
that only gets the user's features fills the item-side ones with neutral
defaults (and vice versa). Transformed features of one side never depend on
the other side's raw features, so the defaults cannot leak into the output --
`tests/models/test_export.py` checks that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import tensorflow as tf
import tensorflow_transform as tft

from towerflow.models import features as F

LABEL_KEYS = (F.RATING, F.LIKED, F.TIMESTAMP)


def raw_input_specs(tft_output: tft.TFTransformOutput, keys: Sequence[str]) -> dict[str, tf.TensorSpec]:
    """The signature's input specs: [None] for scalars, [None, None] for list features."""
    raw_spec = tft_output.raw_feature_spec()
    specs = {}
    for key in keys:
        spec = raw_spec[key]
        shape = [None, None] if isinstance(spec, tf.io.VarLenFeature) else [None]
        specs[key] = tf.TensorSpec(shape, spec.dtype, name=key)
    return specs


def _default_value(dtype: tf.DType):
    return "" if dtype == tf.string else dtype.as_numpy_dtype(0)


def to_transform_inputs(
    tft_output: tft.TFTransformOutput, given: Mapping[str, tf.Tensor], batch_size: tf.Tensor
) -> dict[str, tf.Tensor | tf.SparseTensor]:
    """Raw signature inputs -> the dict the Transform layer expects (defaults for absent features)."""
    out = {}
    for key, spec in tft_output.raw_feature_spec().items():
        if key in LABEL_KEYS and key not in given:
            continue
        if isinstance(spec, tf.io.VarLenFeature):
            if key in given:
                # from_dense drops the padding ("" / 0), leaving each row's real values
                out[key] = tf.sparse.from_dense(given[key])
            else:
                out[key] = tf.SparseTensor(
                    tf.zeros([0, 2], tf.int64), tf.zeros([0], spec.dtype), tf.stack([tf.cast(batch_size, tf.int64), 0])
                )
        else:
            value = given.get(key)
            if value is None:
                value = tf.fill([batch_size], tf.constant(_default_value(spec.dtype), spec.dtype))
            out[key] = tf.reshape(tf.cast(value, spec.dtype), [-1] + list(spec.shape or []))
    return out


def _parse_examples(tft_output: tft.TFTransformOutput, keys: Sequence[str], serialized: tf.Tensor) -> dict:
    spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k in keys}
    parsed = tf.io.parse_example(serialized, spec)
    out = {}
    for key, value in parsed.items():
        if isinstance(value, tf.SparseTensor):
            out[key] = tf.sparse.to_dense(value, default_value=_default_value(value.dtype))
        else:
            out[key] = tf.reshape(value, [-1])
    return out


class ServingModule(tf.Module):
    """Holds the Transform layer and the Keras models so the SavedModel tracks their assets."""

    def __init__(self, tft_output: tft.TFTransformOutput, models: Mapping[str, tf.keras.Model]):
        super().__init__()
        self.tft_output = tft_output
        self.tft_layer = tft_output.transform_features_layer()
        self.models = dict(models)

    def transformed(self, raw: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        batch = tf.shape(next(iter(raw.values())))[0]
        return self.tft_layer(to_transform_inputs(self.tft_output, raw, batch))

    def signature_pair(
        self, name: str, keys: Sequence[str], head: Callable[[dict], Mapping[str, tf.Tensor]]
    ) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """`name` over named raw tensors and `name_examples` over serialized tf.Examples."""
        specs = raw_input_specs(self.tft_output, keys)

        @tf.function(input_signature=[specs])
        def from_tensors(raw):
            return dict(head(self.transformed(raw)))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def from_examples(examples):
            return dict(head(self.transformed(_parse_examples(self.tft_output, keys, examples))))

        return {name: from_tensors.get_concrete_function(), f"{name}_examples": from_examples.get_concrete_function()}

    def broadcast_signature(
        self,
        query_keys: Sequence[str],
        candidate_keys: Sequence[str],
        query_transformed_keys: Sequence[str],
        head: Callable[[dict], Mapping[str, tf.Tensor]],
    ) -> tf.types.experimental.ConcreteFunction:
        """`head` over one query row ([1] / [1, L] inputs) paired with each of N candidate rows.

        Equal, row for row, to the plain signature fed the query's row repeated N times: the
        transformed query features do not depend on the candidate side (the module docstring).
        """
        specs = raw_input_specs(self.tft_output, candidate_keys)
        for key, spec in raw_input_specs(self.tft_output, query_keys).items():
            specs[key] = tf.TensorSpec([1, *spec.shape[1:]], spec.dtype, name=key)

        @tf.function(input_signature=[specs])
        def broadcast(raw):
            query = self.transformed({k: raw[k] for k in query_keys})
            out = dict(self.transformed({k: raw[k] for k in candidate_keys}))
            n = tf.shape(raw[candidate_keys[0]])[0]
            for key in query_transformed_keys:
                out[key] = tf.repeat(query[key], n, axis=0)
            return dict(head(out))

        return broadcast.get_concrete_function()


def export_saved_model(
    path: str,
    tft_output: tft.TFTransformOutput,
    models: Mapping[str, tf.keras.Model],
    heads: Mapping[str, tuple[Sequence[str], Callable[[ServingModule, dict], Mapping[str, tf.Tensor]]]],
    default: str,
    broadcast: Mapping[str, tuple[str, Sequence[str], Sequence[str], Sequence[str]]] | None = None,
) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """Saves a SavedModel whose signatures are `heads` (name -> (raw keys, fn(module, transformed))).

    `broadcast`: name -> (head name, query raw keys, candidate raw keys, transformed query keys), a
    broadcast signature over that head (`ServingModule.broadcast_signature`).
    """
    module = ServingModule(tft_output, models)
    signatures = {}
    for name, (keys, head) in heads.items():
        signatures.update(module.signature_pair(name, keys, lambda xf, head=head: head(module, xf)))
    for name, (head_name, query_keys, candidate_keys, query_xf_keys) in (broadcast or {}).items():
        head = heads[head_name][1]
        signatures[name] = module.broadcast_signature(
            query_keys, candidate_keys, query_xf_keys, lambda xf, head=head: head(module, xf)
        )
    signatures["serving_default"] = signatures[default]
    tf.saved_model.save(module, path, signatures=signatures)
    return signatures
