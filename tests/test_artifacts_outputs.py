"""A learn program's outputs are untrusted: crafted deltas.safetensors and metrics.json files,
each hostile in one way, are refused with a BadOutput naming what is wrong; good ones read back
exactly. Also the safe reader and writer of a version's tensors."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import safetensors.numpy

from server.artifacts import outputs, tensors
from server.artifacts.outputs import BadOutput

BASE = {"dense.weight": (4, 3), "dense.bias": (3,)}


def good_deltas(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in BASE.items()}


def raw_file(header: dict, data: bytes, *, declared_length: int | None = None) -> bytes:
    """A safetensors file assembled by hand, so the header can say anything."""
    encoded = json.dumps(header).encode()
    length = len(encoded) if declared_length is None else declared_length
    return struct.pack("<Q", length) + encoded + data


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def write(tmp_path, data: bytes, name: str = "deltas.safetensors"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(tmp_path, data: bytes, match: str, tensor: str | None = None) -> BadOutput:
    with pytest.raises(BadOutput, match=match) as caught:
        outputs.read_deltas(write(tmp_path, data), BASE)
    assert caught.value.status == 400 and caught.value.code == "bad_output"
    assert caught.value.tensor == tensor
    return caught.value


def test_good_deltas_read_back_exactly_in_the_base_order(tmp_path):
    deltas = good_deltas()
    path = write(tmp_path, safetensors.numpy.save(deltas))
    read = outputs.read_deltas(path, BASE)
    assert list(read) == list(BASE)
    for name in BASE:
        np.testing.assert_array_equal(read[name], deltas[name])


def test_missing_file_is_bad_output(tmp_path):
    with pytest.raises(BadOutput, match="deltas.safetensors is missing"):
        outputs.read_deltas(tmp_path / "deltas.safetensors", BASE)


def test_missing_tensor_is_named(tmp_path):
    deltas = good_deltas()
    del deltas["dense.bias"]
    refused(tmp_path, safetensors.numpy.save(deltas), r'"dense.bias" is missing', "dense.bias")


def test_extra_tensor_is_named(tmp_path):
    deltas = {**good_deltas(), "smuggled": np.zeros(2, np.float32)}
    refused(tmp_path, safetensors.numpy.save(deltas), r'"smuggled" is not one of the model', "smuggled")


def test_a_flood_of_tensors_is_refused_by_count(tmp_path):
    flood = {**good_deltas(), **{f"t{i}": np.zeros(1, np.float32) for i in range(40)}}
    refused(tmp_path, safetensors.numpy.save(flood), "42 tensors; at most 18")


def test_misnamed_tensor_is_named(tmp_path):
    deltas = good_deltas()
    deltas["dense.Bias"] = deltas.pop("dense.bias")
    refused(tmp_path, safetensors.numpy.save(deltas), r'"dense.bias" is missing', "dense.bias")


def test_misshaped_tensor_is_named(tmp_path):
    deltas = {**good_deltas(), "dense.weight": np.zeros((3, 4), np.float32)}
    refused(tmp_path, safetensors.numpy.save(deltas), r"shape \[3, 4\], expected \[4, 3\]", "dense.weight")


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32])
def test_non_float32_tensor_is_named(tmp_path, dtype):
    deltas = {**good_deltas(), "dense.bias": np.zeros(3, dtype)}
    refused(tmp_path, safetensors.numpy.save(deltas), r"is \w+, expected float32", "dense.bias")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_value_is_named_with_its_index(tmp_path, value):
    deltas = good_deltas()
    deltas["dense.weight"][2, 1] = value
    error = refused(tmp_path, safetensors.numpy.save(deltas), "non-finite value", "dense.weight")
    assert "flat index 7" in error.message


def test_truncated_file_is_refused(tmp_path):
    data = safetensors.numpy.save(good_deltas())
    error = refused(tmp_path, data[:-5], "lie outside the file's 55 data bytes", "dense.weight")
    assert "[12, 60]" in error.message


def test_file_cut_inside_its_header_is_refused(tmp_path):
    data = safetensors.numpy.save(good_deltas())
    refused(tmp_path, data[:20], "truncated")


def test_file_shorter_than_the_length_prefix_is_refused(tmp_path):
    refused(tmp_path, b"\x01\x02", "too short")


def test_huge_declared_header_length_is_refused_before_reading(tmp_path):
    refused(tmp_path, struct.pack("<Q", 2**63) + b"{}", r"header declares \d+ bytes; at most")


def test_header_longer_than_the_file_is_refused(tmp_path):
    refused(tmp_path, raw_file({}, b"", declared_length=500), "truncated")


def test_offsets_pointing_past_the_data_are_refused(tmp_path):
    header = {"dense.weight": entry("F32", [4, 3], 0, 48), "dense.bias": entry("F32", [3], 48, 10**12)}
    refused(tmp_path, raw_file(header, bytes(60)), "outside the file", "dense.bias")


def test_overlapping_offsets_are_refused(tmp_path):
    # Both tensors read the same bytes, and the file is padded to the expected length.
    header = {"dense.weight": entry("F32", [4, 3], 0, 48), "dense.bias": entry("F32", [3], 36, 48)}
    refused(tmp_path, raw_file(header, bytes(60)), "overlap or leave a gap", "dense.bias")


def test_offsets_disagreeing_with_the_shape_are_refused(tmp_path):
    header = {"dense.weight": entry("F32", [4, 3], 0, 40), "dense.bias": entry("F32", [3], 40, 60)}
    refused(tmp_path, raw_file(header, bytes(60)), "span 40 bytes but shape", "dense.weight")


def test_trailing_bytes_after_the_tensors_are_refused(tmp_path):
    data = safetensors.numpy.save(good_deltas()) + b"\x00" * 16
    refused(tmp_path, data, "tensors cover 60 data bytes but the file holds 76")


def test_header_that_is_not_json_is_refused(tmp_path):
    garbage = b"\xff" * 32
    refused(tmp_path, struct.pack("<Q", len(garbage)) + garbage + bytes(60), "not a JSON object")


def test_header_naming_a_tensor_twice_is_refused(tmp_path):
    one = json.dumps(entry("F32", [3], 0, 12))
    text = f'{{"dense.bias": {one}, "dense.bias": {one}}}'.encode()
    refused(tmp_path, struct.pack("<Q", len(text)) + text + bytes(12), "twice", "dense.bias")


@pytest.mark.parametrize("dtype", ["BF16", "F8_E4M3", "O", "object", 7])
def test_unknown_or_unreadable_dtype_is_refused(tmp_path, dtype):
    header = {
        "dense.weight": entry("F32", [4, 3], 0, 48),
        "dense.bias": {**entry("F32", [3], 48, 60), "dtype": dtype},
    }
    refused(tmp_path, raw_file(header, bytes(60)), "dtype", "dense.bias")


def test_oversized_file_is_refused_before_it_is_read(tmp_path):
    limit = outputs.max_deltas_bytes(BASE)
    path = tmp_path / "deltas.safetensors"
    with open(path, "wb") as handle:
        handle.truncate(limit + 1)  # sparse: nothing is written, the size alone refuses it
    with pytest.raises(BadOutput, match=f"is {limit + 1} bytes; at most {limit}"):
        outputs.read_deltas(path, BASE)


def test_a_symlink_is_refused_not_followed(tmp_path):
    secret = write(tmp_path, safetensors.numpy.save(good_deltas()), "elsewhere.safetensors")
    (tmp_path / "deltas.safetensors").symlink_to(secret)
    with pytest.raises(BadOutput, match="must be a regular file"):
        outputs.read_deltas(tmp_path / "deltas.safetensors", BASE)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "deltas.safetensors")
    with pytest.raises(BadOutput, match="not a regular file"):
        outputs.read_deltas(tmp_path / "deltas.safetensors", BASE)


def test_pickle_bytes_are_never_unpickled(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    refused(tmp_path, pickle.dumps(Boom()), "header")
    assert not (tmp_path / "pwned").exists()


# ---- metrics.json ----


def metrics_refused(tmp_path, raw: bytes, match: str) -> BadOutput:
    path = write(tmp_path, raw, "metrics.json")
    with pytest.raises(BadOutput, match=match) as caught:
        outputs.read_metrics(path)
    return caught.value


def test_good_metrics_read_back(tmp_path):
    path = write(
        tmp_path,
        json.dumps({"numSamples": 10, "loss": 0.5, "accuracy": 0.9, "epochs": 3}).encode(),
        "metrics.json",
    )
    assert outputs.read_metrics(path) == {"numSamples": 10, "loss": 0.5, "accuracy": 0.9, "epochs": 3}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"[1, 2]", "must hold a JSON object, got list"),
        (b'"numSamples"', "must hold a JSON object, got str"),
        (b"{not json", "not JSON"),
        (b'{"numSamples": 10, "loss": NaN}', "NaN"),
        (b'{"numSamples": 10, "loss": Infinity}', "Infinity"),
        (b'{"numSamples": 10, "loss": "low"}', "loss must be a finite number"),
        (b'{"numSamples": 10, "nested": {"a": 1}}', "nested must be a finite number"),
        (b'{"numSamples": 10, "flag": true}', "flag must be a finite number"),
        (b'{"loss": 0.1}', "must give numSamples"),
        (b'{"numSamples": 0}', "numSamples must be a positive integer"),
        (b'{"numSamples": -3}', "numSamples must be a positive integer"),
        (b'{"numSamples": 2.5}', "numSamples must be a positive integer"),
        (b'{"numSamples": 5, "numSamples": 6}', "twice"),
        (b'{"numSamples": 5, "accuracy": 1.5}', "accuracy must be between 0 and 1"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_bad_metrics_are_refused(tmp_path, raw, match):
    metrics_refused(tmp_path, raw, match)


def test_too_many_metrics_are_refused(tmp_path):
    many = {f"m{i}": i for i in range(outputs.MAX_METRICS)} | {"numSamples": 1}
    metrics_refused(tmp_path, json.dumps(many).encode(), "entries; at most")


def test_oversized_metrics_are_refused(tmp_path):
    raw = b'{"numSamples": 1, "pad": 1' + b" " * outputs.MAX_METRICS_BYTES + b"}"
    metrics_refused(tmp_path, raw, "bytes; at most")


def test_missing_metrics_is_bad_output(tmp_path):
    with pytest.raises(BadOutput, match="metrics.json is missing"):
        outputs.read_outputs(tmp_path, BASE)


def test_read_outputs_reads_both_files(tmp_path):
    deltas = good_deltas(3)
    write(tmp_path, safetensors.numpy.save(deltas))
    write(tmp_path, b'{"numSamples": 7, "loss": 0.25}', "metrics.json")
    result = outputs.read_outputs(tmp_path, BASE)
    assert result.num_samples == 7 and result.metrics["loss"] == 0.25
    np.testing.assert_array_equal(result.deltas["dense.bias"], deltas["dense.bias"])


# ---- a version's tensors ----


def test_written_tensors_read_back_in_their_order_with_a_sha256(tmp_path):
    import hashlib

    version = {"z.last": np.arange(3, dtype=np.float32), "a.first": np.ones((2, 2), np.float32)}
    path = tmp_path / "v1.safetensors"
    digest = tensors.write_tensors(path, version)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    read = tensors.read_tensors(path, max_bytes=1 << 20)
    assert list(read) == ["z.last", "a.first"]  # the written order, not sorted
    np.testing.assert_array_equal(read["a.first"], version["a.first"])
    assert tensors.inspect_file(path, max_bytes=1 << 20).order == ["z.last", "a.first"]


def test_a_file_without_order_metadata_reads_in_name_order(tmp_path):
    path = write(
        tmp_path,
        safetensors.numpy.save({"b": np.zeros(1, np.float32), "a": np.zeros(2, np.float32)}),
        "x.safetensors",
    )
    assert list(tensors.read_tensors(path, max_bytes=1 << 20)) == ["a", "b"]


def test_order_metadata_that_lies_is_refused(tmp_path):
    data = safetensors.numpy.save(
        {"a": np.zeros(1, np.float32)}, metadata={tensors.ORDER_KEY: '["a", "ghost"]'}
    )
    with pytest.raises(tensors.BadTensorFile, match="naming every tensor once"):
        tensors.read_tensors(write(tmp_path, data, "x.safetensors"), max_bytes=1 << 20)


def test_inspect_reads_no_data_and_checks_the_header(tmp_path):
    path = tmp_path / "big.safetensors"
    header = json.dumps({"x": entry("F32", [1000, 1000], 0, 4_000_000)}).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + 4_000_000)
    found = tensors.inspect_file(path, max_bytes=1 << 30)
    assert found.tensors["x"].to_json() == {"shape": [1000, 1000], "dtype": "float32"}
    with pytest.raises(tensors.BadTensorFile, match="at most 1000"):
        tensors.inspect_file(path, max_bytes=1000)
