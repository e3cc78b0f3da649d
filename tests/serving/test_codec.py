"""The REST JSON codec on its own: conversions, shape and dtype checks, response shapes."""

import numpy as np
import pytest

from towerflow.serving.tensor_codec import InputSpec, ServingError, format_predict_response, parse_predict_request

SPECS = {
    "user_id": InputSpec("user_id", 7, (None,)),
    "user_age": InputSpec("user_age", 9, (None,)),
    "hist": InputSpec("hist", 7, (None, None)),
}


def test_row_and_columnar_give_the_same_arrays():
    rows, row_format = parse_predict_request(
        {
            "instances": [
                {"user_id": "a", "user_age": 3, "hist": ["x", ""]},
                {"user_id": "b", "user_age": 4, "hist": ["y", "z"]},
            ]
        },
        SPECS,
        "s",
    )
    cols, col_format = parse_predict_request(
        {"inputs": {"user_id": ["a", "b"], "user_age": [3, 4], "hist": [["x", ""], ["y", "z"]]}}, SPECS, "s"
    )
    assert row_format and not col_format
    for key in SPECS:
        assert rows[key].tolist() == cols[key].tolist()
    assert rows["user_age"].dtype == np.int64 and rows["user_id"].tolist() == [b"a", b"b"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [{"user_id": "a", "user_age": True, "hist": ["x"]}]}, "expected an integer"),
        ({"instances": [{"user_id": 1, "user_age": 1, "hist": ["x"]}]}, "expected a string"),
        ({"inputs": {"user_id": ["a"], "user_age": [1, 2], "hist": [["x"], ["y"]]}}, "different batch sizes"),
        ({"inputs": {"user_id": ["a"], "user_age": [1], "hist": ["x"]}}, "pad list features"),
        ({"inputs": {"user_id": ["a"], "user_age": [1], "hist": [["x"]], "zzz": [1]}}, "unknown inputs"),
        ({"inputs": {"user_id": ["a"], "user_age": [2**70], "hist": [["x"]]}}, "out of range"),
        ({"inputs": {"user_id": [{"b64": "@@@"}], "user_age": [1], "hist": [["x"]]}}, "invalid base64"),
        ({"instances": [1, 2]}, "each instance must be an object"),
        ({"instances": []}, "empty"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_requests_name_the_problem(body, message):
    with pytest.raises(ServingError, match=message) as err:
        parse_predict_request(body, SPECS, "s")
    assert err.value.http_status == 400


def test_instance_limit():
    body = {"inputs": {"user_id": ["a"] * 5, "user_age": [1] * 5, "hist": [["x"]] * 5}}
    with pytest.raises(ServingError, match="at most 4"):
        parse_predict_request(body, SPECS, "s", max_instances=4)


def test_response_shapes():
    one = {"y": np.array([1.5, 2.0], np.float32)}
    assert format_predict_response(one, True) == {"predictions": [1.5, 2.0]}
    assert format_predict_response(one, False) == {"outputs": [1.5, 2.0]}
    two = {"a": np.array([1, 2]), "b_bytes": np.array([b"\x00", b"x"], object)}
    assert format_predict_response(two, True) == {
        "predictions": [{"a": 1, "b_bytes": {"b64": "AA=="}}, {"a": 2, "b_bytes": {"b64": "eA=="}}]
    }
    assert format_predict_response(two, False)["outputs"]["a"] == [1, 2]


def test_dtype_table_is_tensorflows_enum_mapping():
    from towerflow.serving.tensor_codec import dtype_name, dtype_table

    # The enum values of tensorflow/core/framework/types.proto, written out here as the expected data.
    expected = {
        1: ("DT_FLOAT", np.float32),
        2: ("DT_DOUBLE", np.float64),
        3: ("DT_INT32", np.int32),
        4: ("DT_UINT8", np.uint8),
        5: ("DT_INT16", np.int16),
        6: ("DT_INT8", np.int8),
        7: ("DT_STRING", object),
        9: ("DT_INT64", np.int64),
        10: ("DT_BOOL", np.bool_),
        19: ("DT_HALF", np.float16),
        22: ("DT_UINT32", np.uint32),
        23: ("DT_UINT64", np.uint64),
    }
    table = dtype_table()
    for enum, (name, numpy_type) in expected.items():
        assert table[enum] == (name, np.dtype(numpy_type))
    # No numpy/JSON form: quantized, bfloat16, resource, variant. Named by number, like values outside types.proto.
    for enum in (11, 14, 20, 21, 999):
        assert enum not in table
    assert dtype_name(20) == "dtype 20" and dtype_name(1) == "DT_FLOAT"
    assert InputSpec("x", 19, (None,)).describe() == "DT_HALF [-1]"


def test_codec_and_rest_client_import_without_tensorflow():
    """The REST client (and the codec's errors) must work where TensorFlow is not installed."""
    import subprocess
    import sys

    code = (
        "import sys; import towerflow.serving.client, towerflow.serving.tensor_codec; "
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_uint_and_half_inputs_convert():
    specs = {"a": InputSpec("a", 22, (None,)), "h": InputSpec("h", 19, (None,))}
    arrays, _ = parse_predict_request({"inputs": {"a": [0, 2**32 - 1], "h": [0.5, 1.0]}}, specs, "s")
    assert arrays["a"].dtype == np.uint32 and arrays["a"].tolist() == [0, 2**32 - 1]
    assert arrays["h"].dtype == np.float16
    with pytest.raises(ServingError, match="out of range for DT_UINT32"):
        parse_predict_request({"inputs": {"a": [-1], "h": [0.5]}}, specs, "s")


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.float32([1.5, -2.25, 0.0]),
        np.float64([[1.0], [2.0]]),
        np.int32([7, 8]),
        np.array([b"a", b"bc", b""], dtype=object),
        np.array([[b"x", b""], [b"y", b"z"]], dtype=object),
        np.float32(3.5),  # one element: make_tensor_proto uses float_val, not tensor_content
        np.array([7], dtype=np.int64),
        np.zeros((0, 3), np.float32),
        np.array([], dtype=object),
        np.array([True, False]),
        np.float16([1, 2]),
    ],
    ids=repr,
)
def test_proto_conversions_equal_tensorflows(array):
    """array_from_proto / array_to_proto (the gRPC server's) are tf.make_ndarray / tf.make_tensor_proto."""
    tf = pytest.importorskip("tensorflow")
    from towerflow.serving.tensor_codec import array_from_proto, array_to_proto

    proto = tf.make_tensor_proto(array)
    assert array_to_proto(array) == proto
    ours, theirs = array_from_proto(proto), tf.make_ndarray(proto)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    ours[...] = theirs  # writable, like make_ndarray's
    # a string tensor holding fewer values than elements (TensorFlow repeats the last one)
    short = tf.make_tensor_proto([b"p", b"q"], shape=[4])
    np.testing.assert_array_equal(array_from_proto(short), tf.make_ndarray(short))
