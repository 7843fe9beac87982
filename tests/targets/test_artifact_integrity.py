"""Artifact integrity (issue 23, part 2): the manifest records the size and sha256 of every
library and segment model; loading verifies them. A damaged, truncated or changed file, a
manifest of a newer format or built with another TVM is one line naming the file and saying to
rebuild; an artifact of format version 1 (no hashes) still loads."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import lepton_opt
from lepton_opt.errors import ArtifactError
from lepton_opt.targets import artifact
from tests.models import tiny_mlp
from tests.test_cli import assert_user_error, lepton

X = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A saved tiny MLP artifact and its outputs on X; each test copies it before damaging it."""
    compiled = lepton_opt.compile(tiny_mlp())
    path = compiled.save(tmp_path_factory.mktemp("built") / "m.lepton")
    return path, compiled.run({"x": X})["y"]


@pytest.fixture
def saved(built, tmp_path):
    import shutil

    return shutil.copytree(built[0], tmp_path / "m.lepton")


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path, manifest):
    (path / "manifest.json").write_text(json.dumps(manifest))


def _refused(path, match) -> str:
    with pytest.raises(ArtifactError, match=match) as excinfo:
        lepton_opt.load_compiled(path)
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_manifest_records_size_and_sha256_of_the_library(built):
    path, expected = built
    manifest = _manifest(path)
    assert manifest["format_version"] == artifact.FORMAT_VERSION == 2
    library = path / "model.so"
    assert manifest["files"] == {"model.so": {"size": library.stat().st_size,
                                              "sha256": hashlib.sha256(library.read_bytes()).hexdigest()}}
    loaded = lepton_opt.load_compiled(path)
    assert loaded.manifest == manifest
    np.testing.assert_array_equal(loaded.run({"x": X})["y"], expected)


@pytest.mark.parametrize("damage, match", [
    ("flip", r"model\.so: sha256 differs from the manifest's"),
    ("truncate", r"model\.so: truncated \([\d,]+ of [\d,]+ bytes\)"),
    ("empty", r"model\.so: truncated \(0 of [\d,]+ bytes\)"),
    ("append", r"model\.so: [\d,]+ bytes, the manifest records [\d,]+"),
])
def test_damaged_library_is_refused_naming_it(saved, damage, match):
    library = saved / "model.so"
    data = bytearray(library.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    elif damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "empty":
        data = b""
    else:
        data += b"\0" * 16
    library.write_bytes(bytes(data))
    message = _refused(saved, match)
    assert str(library) in message and "rebuild the artifact with `lepton-opt compile`" in message


def test_newer_format_and_other_tvm_are_refused(saved):
    manifest = _manifest(saved)
    _write_manifest(saved, {**manifest, "format_version": artifact.FORMAT_VERSION + 1})
    message = _refused(saved, r"manifest\.json: artifact format version 3 is newer than this lepton-opt reads")
    assert "upgrade lepton-opt" in message and "lepton-opt compile" in message
    for version in (0, "2", None, True):
        _write_manifest(saved, {**manifest, "format_version": version})
        _refused(saved, "is not supported")
    _write_manifest(saved, {**manifest, "versions": {**manifest["versions"], "tvm": "0.1.0"}})
    message = _refused(saved, r"manifest\.json: built with TVM 0\.1\.0, this installation has")
    assert "lepton-opt compile" in message


@pytest.mark.parametrize("change, match", [
    (lambda m: m.pop("files"), r"corrupt \(no size and sha256 of each file"),
    (lambda m: m.update(files={"model.so": {"sha256": 5}}), r"corrupt \(no size and sha256 of each file"),
    (lambda m: m.update(files={}), r"corrupt \(records no sha256 of model\.so\)"),
    (lambda m: m.update(library="../../etc/passwd"), r"corrupt \(names '\.\./\.\./etc/passwd' as a file"),
    (lambda m: m.update(library=7), r"corrupt \(names 7 as a file"),
    (lambda m: m.update(target="llvm"), r"corrupt \(no target of model\.so\)"),
    (lambda m: m.update(segments={"a": 1}), r"corrupt \(its segments are not a list"),
])
def test_damaged_manifest_is_one_line(saved, change, match):
    manifest = _manifest(saved)
    change(manifest)
    _write_manifest(saved, manifest)
    _refused(saved, match)
    _write_manifest(saved, [1, 2])
    _refused(saved, "not a lepton-opt artifact manifest")


def test_format_1_artifact_without_hashes_still_loads(saved, built):
    """Written before the hashes: loads unverified; saving it again adds them."""
    manifest = _manifest(saved)
    del manifest["files"]
    _write_manifest(saved, {**manifest, "format_version": 1})
    loaded = lepton_opt.load_compiled(saved)
    np.testing.assert_array_equal(loaded.run({"x": X})["y"], built[1])
    again = loaded.save(saved.parent / "again.lepton")
    assert _manifest(again)["format_version"] == 2 and _manifest(again)["files"] == _manifest(built[0])["files"]
    np.testing.assert_array_equal(lepton_opt.load_compiled(again).run({"x": X})["y"], built[1])


def test_truncated_library_of_a_format_1_artifact_is_one_line(saved):
    """No hashes to check: the library's ELF headers must lie within the file, else the dynamic
    loader maps it and the process dies of SIGBUS (run in a subprocess, so that a regression
    fails the test instead of killing the test run)."""
    manifest = _manifest(saved)
    del manifest["files"]
    _write_manifest(saved, {**manifest, "format_version": 1})
    library = saved / "model.so"
    library.write_bytes(library.read_bytes()[: library.stat().st_size - 100])
    assert_user_error(lepton("run", saved), str(library), "truncated", "ELF headers reach byte")


def test_resaving_a_library_changed_after_loading_is_refused(saved):
    loaded = lepton_opt.load_compiled(saved)
    library = saved / "model.so"
    data = bytearray(library.read_bytes())
    data[100] ^= 1
    library.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.so: changed since it was loaded"):
        loaded.save(saved.parent / "copy.lepton")
    assert not (saved.parent / "copy.lepton").exists()


def test_partitioned_artifact_verifies_its_segment_models(tmp_path):
    from tests.targets.test_partition import topk_model

    with pytest.warns(UserWarning):
        compiled = lepton_opt.compile(topk_model())
    path = compiled.save(tmp_path / "p.lepton")
    files = _manifest(path)["files"]
    assert sorted(files) == ["segment0.so", "segment1.onnx"]
    assert compiled.manifest["files"] == files
    feeds = {"x": np.ones((1, 3, 8, 8), np.float32), "k": np.array([3], np.int64)}
    expected = compiled.run(feeds)
    np.testing.assert_array_equal(lepton_opt.load_compiled(path).run(feeds)["y"], expected["y"])
    segment = path / "segment1.onnx"
    segment.write_bytes(segment.read_bytes()[:-1] + b"\x01")
    _refused(path, r"segment1\.onnx: sha256 differs")
    segment.unlink()
    _refused(path, r"the segment model segment1\.onnx is missing")


def test_cli_run_of_a_damaged_artifact_is_one_error_line(saved):
    library = saved / "model.so"
    library.write_bytes(library.read_bytes()[:1000])
    assert_user_error(lepton("run", saved), str(library), "truncated", "lepton-opt compile")
