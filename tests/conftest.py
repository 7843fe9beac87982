"""Shared fixtures: small models saved to disk, and a check that a directory gained no files."""

from __future__ import annotations

import os
import tempfile

import onnx
import pytest

# Two engines on two cores: keep TVM's runtime to one thread per pytest worker.
os.environ.setdefault("TVM_NUM_THREADS", "1")
# Builds must not pick up the tuning records of the user's cache (tests that tune set their own).
os.environ["LEPTON_OPT_CACHE"] = tempfile.mkdtemp(prefix="lepton-opt-test-cache-")

from tests.models import tiny_mlp  # noqa: E402


@pytest.fixture
def mlp_path(tmp_path):
    """tiny_mlp (input ``x`` [1, 16] -> output ``y`` [1, 8]) saved as tmp_path/mlp.onnx."""
    path = tmp_path / "mlp.onnx"
    onnx.save(tiny_mlp(), path)
    return path


def listing(directory) -> set[str]:
    """Every path below ``directory`` (hidden temp dirs included), relative to it."""
    return {os.path.relpath(os.path.join(root, name), directory)
            for root, dirs, files in os.walk(directory) for name in dirs + files}
