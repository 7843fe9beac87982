"""Targets and builds: resolve what the user asked for into a TVM target, then compile.

* ``llvm`` (alias ``cpu``): the host CPU. LLVM's name for the host is not trusted alone (a VM can
  report an older model than its features say), so ``-mattr`` is built from the CPU flags the
  kernel reports: AVX-512, VNNI, BF16/FP16 and AMX are used when present. ``mcpu`` overrides.
* ``cuda``: cross-compiled with nvcc for ``cuda_arch`` (``sm_80`` ...) with dlight's default GPU
  schedules; this needs nvcc but no GPU.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Sequence

import tvm

from lepton_opt.errors import TargetError

TARGET_ALIASES = {"llvm": "llvm", "cpu": "llvm", "cuda": "cuda", "gpu": "cuda"}
DEFAULT_CUDA_ARCH = "sm_80"

# /proc/cpuinfo flag -> LLVM feature, for the features that change generated code.
_CPU_FEATURES = {
    "avx2": "+avx2", "fma": "+fma", "f16c": "+f16c", "avx512f": "+avx512f", "avx512bw": "+avx512bw",
    "avx512dq": "+avx512dq", "avx512vl": "+avx512vl", "avx512cd": "+avx512cd",
    "avx512_vnni": "+avx512vnni", "avx_vnni": "+avxvnni", "avx512_bf16": "+avx512bf16",
    "avx512_fp16": "+avx512fp16", "amx_int8": "+amx-int8", "amx_bf16": "+amx-bf16", "amx_tile": "+amx-tile",
    "avx512vbmi": "+avx512vbmi", "avx512_vbmi2": "+avx512vbmi2",
}


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    kind: str  # "llvm" or "cuda"
    mcpu: str | None = None
    mattr: tuple[str, ...] = ()
    cuda_arch: str | None = None
    num_cores: int | None = None

    def tvm_target(self) -> tvm.target.Target:
        host = {"kind": "llvm"}
        if self.mcpu:
            host["mcpu"] = self.mcpu
        if self.mattr:
            host["mattr"] = list(self.mattr)
        if self.kind == "llvm":
            if self.num_cores:
                host["num-cores"] = self.num_cores
            return tvm.target.Target(host)
        return tvm.target.Target({"kind": "cuda", "arch": self.cuda_arch}, host=host)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()
                if v not in (None, ())}


def resolve_target(name: str, *, mcpu: str | None = None, cuda_arch: str | None = None,
                   mattr: str | Sequence[str] | None = None) -> TargetSpec:
    """The target to build for. CPU code (CPU builds, and the host code of CUDA builds) is for
    the host CPU and the features it reports, or for ``mcpu`` (an LLVM CPU name such as
    x86-64-v3: the CPU named, none of the host's features added), with ``mattr`` (LLVM features,
    "+avx2,-avx512f", comma-separated) added or removed."""
    kind = TARGET_ALIASES.get(str(name).strip().lower())
    if kind is None:
        raise TargetError(f"unknown target {name!r}; use one of: llvm (alias cpu), cuda")
    host_cpu, host_features = detect_host_cpu()
    cores = os.cpu_count() or 1
    if mcpu and not _valid_mcpu(mcpu):
        raise TargetError(f"--mcpu {mcpu!r} is not a CPU LLVM knows; try e.g. x86-64-v3, skylake-avx512, znver4")
    # With an explicit mcpu the user chose the CPU: do not add the host's features to it.
    features = _features(() if mcpu else host_features, mattr)
    if kind == "llvm":
        return TargetSpec("llvm", mcpu or host_cpu, features, num_cores=cores)
    arch = (cuda_arch or DEFAULT_CUDA_ARCH).strip().lower()
    if not re.fullmatch(r"sm_\d{2,3}[a-z]?", arch):
        raise TargetError(f"--cuda-arch {cuda_arch!r} is not a CUDA architecture; use e.g. sm_80, sm_86, sm_89, sm_90")
    if find_nvcc() is None:
        raise TargetError("--target cuda needs nvcc (the CUDA toolkit) on PATH or in CUDA_HOME; "
                          "install the CUDA toolkit or build for --target llvm")
    return TargetSpec("cuda", mcpu or host_cpu, features, cuda_arch=arch)


def _features(base: Sequence[str], mattr: str | Sequence[str] | None) -> tuple[str, ...]:
    """``base`` with the ``mattr`` features ("+name" adds, "-name" removes) applied."""
    if mattr is None:
        return tuple(base)
    given = [f.strip() for f in (mattr.split(",") if isinstance(mattr, str) else mattr) if f.strip()]
    bad = [f for f in given if not re.fullmatch(r"[+-][a-z0-9][a-z0-9.\-]*", f)]
    if bad:
        raise TargetError(f"--mattr {bad[0]!r}: give LLVM features as +name or -name, comma-separated "
                          "(e.g. +avx2,+fma,-avx512f)")
    features = {f[1:]: f for f in base}
    for feature in given:
        features[feature[1:]] = feature
    return tuple(features.values())


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def detect_host_cpu() -> tuple[str, tuple[str, ...]]:
    """LLVM's host CPU name and the code-relevant features the OS reports."""
    name = tvm.target.codegen.llvm_get_system_cpu()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return name, tuple(feature for flag, feature in _CPU_FEATURES.items() if flag in flags)


def _valid_mcpu(mcpu: str) -> bool:
    try:
        names = tvm.target.codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm"}))
    except Exception:  # noqa: BLE001 - cannot ask LLVM: let the build decide
        return True
    return mcpu in set(str(n) for n in names)


def build(mod: tvm.IRModule, spec: TargetSpec, database=None, stats: dict | None = None) -> tvm.runtime.Executable:
    """Compile a lowered Relax module for ``spec``; on the CPU, kernels with a record in the
    tuning ``database`` take their tuned schedule (``stats`` gets how many did)."""
    target = spec.tvm_target()
    if spec.kind == "llvm":
        from lepton_opt.targets.cpu_schedule import build_cpu

        return build_cpu(mod, target, database, stats)
    return tvm.compile(mod, target=target)
