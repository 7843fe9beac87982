"""CUDA builds: cross-compiled with nvcc, no GPU needed. Checks the build and the generated code;
numerics are covered by the CPU tests (the Relax module is the same up to the target's schedules)."""

from __future__ import annotations

import json

import pytest

import lepton_opt
from lepton_opt.errors import ArtifactError
from tests.models import resnet_cnn, transformer_layer

def _nvcc_found() -> bool:
    from lepton_opt.targets.build import find_nvcc

    return find_nvcc() is not None


pytestmark = pytest.mark.skipif(not _nvcc_found(), reason="nvcc (CUDA toolkit) not installed")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cnn_cross_compiles_for_cuda(tmp_path, arch):
    compiled = lepton_opt.compile(resnet_cnn(batch=1), target="cuda", cuda_arch=arch)
    assert "cuda" in compiled.imported_module_kinds()
    source = compiled.device_source()
    assert "__global__" in source and "extern \"C\"" in source
    # dlight schedules bind loops to GPU threads: generated kernels index with threadIdx/blockIdx.
    assert "threadIdx.x" in source and "blockIdx.x" in source
    assert compiled.target["kind"] == "cuda" and compiled.target["cuda_arch"] == arch

    saved = compiled.save(tmp_path / "resnet_cuda.lepton")
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["target"]["kind"] == "cuda" and manifest["target"]["cuda_arch"] == arch
    assert manifest["tvm_target"]["arch"] == arch
    assert (saved / "model.so").stat().st_size > 0


def test_transformer_with_dynamic_batch_cross_compiles_for_cuda():
    compiled = lepton_opt.compile(transformer_layer(batch="N"), target="cuda", cuda_arch="sm_86")
    assert "cuda" in compiled.imported_module_kinds()
    assert compiled.inputs[0]["shape"] == ["N", 16, 64]


def test_running_a_cuda_build_without_a_gpu_is_a_clear_error():
    import numpy as np

    compiled = lepton_opt.compile(resnet_cnn(batch=1), target="gpu")
    if "cuda" in compiled.imported_module_kinds() and _has_gpu():
        pytest.skip("a GPU is present")
    with pytest.raises(ArtifactError, match="no CUDA device"):
        compiled.run({"input": np.zeros((1, 3, 32, 32), np.float32)})


def test_cpu_build_has_no_device_module():
    compiled = lepton_opt.compile(resnet_cnn(batch=1), target="cpu")
    assert "cuda" not in compiled.imported_module_kinds()
    with pytest.raises(ArtifactError, match="no device module"):
        compiled.device_source()


def _has_gpu() -> bool:
    from lepton_opt.targets.artifact import cuda_available

    return cuda_available()


@pytest.mark.parametrize("arch, model", [("sm_80", "encoder"), ("sm_90", "cnn")])
def test_fp16_builds_cross_compile_with_tensor_core_matmuls(arch, model):
    # The encoder's matmuls read float16 and accumulate in float32: dlight's tensor-core rule
    # takes them (wmma fragments); the CNN's convolutions build as float16 kernels. One model per
    # architecture: each cross-compile costs about a minute here.
    if model == "encoder":
        compiled = lepton_opt.compile(transformer_layer(batch=1, seq=128, hidden=128, ffn=512), target="cuda",
                                      cuda_arch=arch, precision="fp16")
        source = compiled.device_source()
        assert "half" in source and "wmma::mma_sync" in source and "wmma::fragment" in source
        assert compiled.manifest["precision"]["precision"] == "fp16"
    else:
        cnn = lepton_opt.compile(resnet_cnn(batch=1), target="cuda", cuda_arch=arch, precision="fp16")
        assert "half" in cnn.device_source() and "cuda" in cnn.imported_module_kinds()
        assert cnn.manifest["target"]["cuda_arch"] == arch


def test_int8_qdq_cnn_cross_compiles_to_integer_kernels(tmp_path):
    """The integer kernels build for CUDA too (dlight's fallback schedule): they read uint8 data
    and int8 weights and write the requantized uint8 tensor. No tensor-core (dp4a/IMMA) schedule
    yet; numerics are covered by the CPU tests."""
    import re

    from tests.targets.test_int8 import _ort_static

    compiled = lepton_opt.compile(_ort_static(resnet_cnn(batch=1), tmp_path), target="cuda", cuda_arch="sm_80")
    source = compiled.device_source()
    kernels = re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(fused_int8_conv\w*)\((.*?)\)", source)
    assert len({name for name, _ in kernels}) == 6
    for name, params in kernels:
        assert "quantize" in name and "uchar*" in params and "signed char*" in params, (name, params)
