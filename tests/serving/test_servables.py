"""A Servable runs its signatures through a graph-mode Session, as tensorflow_model_server does."""

import numpy as np
import pytest

from towerflow.serving.servables import Servable
from towerflow.serving.tensor_codec import ServingError


def test_session_outputs_equal_the_eager_signature_functions(tiny_models):
    import tensorflow as tf

    servable = Servable("tiny", 1, tiny_models[1])
    # warmed up on load: every signature's callable is made (and has run once) before the first request
    assert set(servable._callables) == {"serving_default", "score", "echo"}
    eager = tf.saved_model.load(tiny_models[1]).signatures
    inputs = {
        "user_id": np.array([b"a", b"b"], dtype=object),
        "user_age": np.array([30, 41], dtype=np.int64),
        "hist_item_ids": np.array([[b"1", b""], [b"2", b"3"]], dtype=object),
    }
    got = servable.predict("score", inputs)
    want = eager["score"](**{k: tf.constant(v) for k, v in inputs.items()})
    assert sorted(got) == ["embedding", "score"]
    for key in got:
        np.testing.assert_array_equal(got[key], want[key].numpy())
    assert servable.predict(None, {"x": np.array([1.0, 4.0], np.float32)})["y"].tolist() == [2.5, 4.0]
    echoed = servable.predict("echo", {"data_bytes": np.array([b"\x00\xff"], dtype=object)})
    assert echoed["out_bytes"].tolist() == [b"\x00\xff"] and echoed["length"].tolist() == [2]
    # the graph's init op is not a signature a client can call
    assert "__saved_model_init_op" not in servable.input_specs
    with pytest.raises(ServingError) as err:
        servable.predict("__saved_model_init_op", {})
    assert err.value.code == "INVALID_ARGUMENT"


def test_session_threads_change_where_ops_run_not_the_answers(tiny_models):
    from towerflow.serving.servables import SessionThreads

    inputs = {"x": np.arange(64, dtype=np.float32)}
    inline = Servable("tiny", 1, tiny_models[1], threads=SessionThreads(intra_op=1, inter_op=-1))
    pools = Servable("tiny", 1, tiny_models[1], threads=SessionThreads(intra_op=0, inter_op=0))
    np.testing.assert_array_equal(inline.predict(None, inputs)["y"], pools.predict(None, inputs)["y"])
    with pytest.raises(ValueError, match="intra_op"):
        SessionThreads(intra_op=-1)
