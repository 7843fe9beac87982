"""Loading: path, bytes, ModelProto, ir.Model and external data all give the same compiled model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import lepton_opt
from lepton_opt.errors import ModelLoadError, ShapeError
from lepton_opt.ir.load import load_model, parse_input_shape
from tests.models import random_inputs, resnet_cnn, tiny_mlp, ort_run


@pytest.mark.parametrize("form", ["path", "str", "bytes", "proto", "ir"])
def test_every_source_form_compiles_to_the_same_outputs(tmp_path, form):
    model = tiny_mlp()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    source = {
        "path": lambda: path,
        "str": lambda: str(path),
        "bytes": lambda: path.read_bytes(),
        "proto": lambda: model,
        "ir": lambda: lepton_opt.load(model),
    }[form]()
    compiled = lepton_opt.compile(source)
    feeds = random_inputs(model, seed=3)
    np.testing.assert_allclose(compiled.run(feeds)["y"], ort_run(model, feeds)["y"], rtol=0, atol=1e-5)


def test_external_data_model(tmp_path):
    model = resnet_cnn()
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnx.save rewrites the proto it saves with external data
    onnx.save(copy, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (path.parent / "weights.bin").stat().st_size > 10_000
    assert path.stat().st_size < 10_000  # the weights really are outside the .onnx file
    compiled = lepton_opt.compile(path)
    feeds = random_inputs(model, seed=0)
    np.testing.assert_allclose(compiled.run(feeds)["logits"], ort_run(model, feeds)["logits"], rtol=0, atol=1e-4)


def test_external_data_missing_is_a_clear_error(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(tiny_mlp(), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"external data.*w\.bin.*beside the model"):
        lepton_opt.compile(path)


def test_the_callers_model_is_not_modified(tmp_path):
    model = resnet_cnn(batch="N")
    before = model.SerializeToString()
    lepton_opt.compile(model, input_shapes={"input": [2, 3, 32, 32]})
    assert model.SerializeToString() == before
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    data = path.read_bytes()
    lepton_opt.compile(path, input_shapes={"input": [2, 3, 32, 32]})
    assert path.read_bytes() == data


def test_input_shapes_substitute_the_symbol_everywhere():
    loaded = load_model(resnet_cnn(batch="N"), {"input": [5, 3, 32, 32]})
    assert list(loaded.model.graph.inputs[0].shape) == [5, 3, 32, 32]
    assert list(loaded.model.graph.outputs[0].shape) == [5, 10]


def test_sha256_is_of_the_serialized_source(tmp_path):
    import hashlib

    path = tmp_path / "m.onnx"
    onnx.save(tiny_mlp(), path)
    assert load_model(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert lepton_opt.compile(path).manifest["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("text,expected", [
    ("x:1x3x224x224", ("x", [1, 3, 224, 224])),
    ("input_ids:1,128", ("input_ids", [1, 128])),
    ("ns:x:4", ("ns:x", [4])),
    ("s:", ("s", [])),
])
def test_parse_input_shape(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["x", ":1x2", "x:1xa", "x:-1x3"])
def test_parse_input_shape_rejects(text):
    with pytest.raises(ShapeError, match="--input-shape"):
        parse_input_shape(text)


def test_save_model_writes_a_checked_model_whole_or_not_at_all(tmp_path):
    import onnx
    from onnx import helper

    import lepton_opt
    from tests.models import tiny_mlp

    out = tmp_path / "sub" / "m.onnx"
    assert lepton_opt.save_model(tiny_mlp(), out) == []
    onnx.checker.check_model(str(out))
    broken = tiny_mlp()
    broken.graph.node.append(helper.make_node("Relu", ["nowhere"], ["y2"]))  # reads a value nobody makes
    target = tmp_path / "broken.onnx"
    with pytest.raises(onnx.checker.ValidationError):
        lepton_opt.save_model(broken, target)
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == ["sub"]
