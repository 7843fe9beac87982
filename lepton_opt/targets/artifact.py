"""Compiled artifacts: :class:`CompiledModel` and its on-disk form.

An artifact is a directory::

    model.lepton/
      model.so         the compiled library (Relax VM executable + kernels)
      manifest.json    inputs/outputs (names, shapes, dtypes), target, passes run,
                       source model sha256, lepton-opt / TVM / onnx versions

A model some of whose nodes run in onnxruntime (:class:`PartitionedModel`, see
:mod:`lepton_opt.targets.partition`) has ``segmentK.so`` / ``segmentK.onnx`` files in run order
instead of ``model.so``, listed in ``manifest["segments"]``.

It is written to a temporary directory beside the destination and renamed into place, so an
interrupted save never leaves a half-written artifact. Loading checks the format version, the
TVM version and that this CPU has the instruction sets the build uses.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

from lepton_opt.errors import ArtifactError, InputError

LIBRARY = "model.so"
MANIFEST = "manifest.json"
FORMAT = "lepton-opt-artifact"
FORMAT_VERSION = 1


class CompiledModel:
    """A compiled model: run it on numpy inputs, save it, inspect what was built."""

    def __init__(self, executable: Any, manifest: dict, *, library_path: str | None = None):
        self._executable = executable  # tvm.runtime.Executable (fresh build) or a loaded runtime Module
        self.manifest = manifest
        self._library_path = library_path
        self._vm: VirtualMachine | None = None
        self._main_fn = None
        self._lock = threading.Lock()
        self._input_buffers: dict[int, tuple[Any, np.ndarray | None]] = {}  # tensor, numpy view
        self._owned_outputs: list[bool] | None = None  # per output: allocated afresh by each run
        self._first_values = None
        self.precision = None  # set by lepton_opt.compile: the mixed-precision conversion's result, if any
        self.warnings: list[str] = []  # set by lepton_opt.compile: e.g. unreadable tuning-record lines

    # ------------------------------------------------------------------ description
    @property
    def inputs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    @property
    def target(self) -> dict:
        return self.manifest["target"]

    def __repr__(self) -> str:
        ins = ", ".join(f"{i['name']}:{_fmt_shape(i['shape'])}:{i['dtype']}" for i in self.inputs)
        return f"CompiledModel(target={self.target.get('kind')}, inputs=[{ins}])"

    def _imported_modules(self) -> list:
        mod = self._executable.mod if isinstance(self._executable, tvm.runtime.Executable) else self._executable
        found, stack = [], list(mod.imports)
        while stack:
            m = stack.pop()
            found.append(m)
            stack.extend(m.imports)
        return found

    def imported_module_kinds(self) -> list[str]:
        """Kinds of the modules linked into the library (``'cuda'`` among them for a CUDA build)."""
        return [m.kind for m in self._imported_modules()]

    def device_source(self, fmt: str = "") -> str:
        """The generated device code (CUDA C for a CUDA build), for inspection and tests."""
        for m in self._imported_modules():
            if m.kind == "cuda":
                return m.inspect_source(fmt)
        raise ArtifactError("this artifact holds no device module (it is a CPU build)")

    # ------------------------------------------------------------------ running
    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on ``feeds`` (input name -> array); returns output name -> array in graph order.

        The per-call cost is kept small for models that run every few milliseconds: inputs are
        copied into buffers allocated once per shape (a fresh TVM tensor per call cost 10x the
        copy: 185 us against 13 us for 400 KB), and outputs are handed over without a copy
        (DLPack), except those that are not freshly allocated by each run (a constant output, an
        input passed through), which are copied. Calls from several threads take turns."""
        args = self._check_feeds(feeds)
        with self._lock:
            main = self._main()
            inputs = self._input_tensors(args)
            result = main(*inputs)
            values = list(result) if not hasattr(result, "numpy") else [result]
            return dict(zip((o["name"] for o in self.outputs), self._hand_over(values, inputs)))

    def _main(self):
        if self._main_fn is None:
            self._main_fn = self._virtual_machine()["main"]
        return self._main_fn

    def _input_tensors(self, arrays: list[np.ndarray]) -> list:
        tensors = []
        for i, array in enumerate(arrays):
            buffer, view = self._input_buffers.get(i, (None, None))
            if view is not None and view.shape == array.shape and view.dtype == array.dtype:
                np.copyto(view, array)  # a CPU buffer seen through numpy: no per-call wrapper work
            elif buffer is not None and view is None and tuple(buffer.shape) == array.shape \
                    and buffer.dtype == str(array.dtype):
                buffer.copyfrom(array)
            else:
                buffer = tvm.runtime.tensor(array, self._device())
                view = _view(buffer) if self.target["kind"] == "llvm" else None
                if view is not None and view.dtype != array.dtype:
                    view = None
                self._input_buffers[i] = (buffer, view)
            tensors.append(buffer)
        return tensors

    def _hand_over(self, values: list, inputs: list) -> list[np.ndarray]:
        """Outputs as numpy arrays: zero-copy where the run allocated the output afresh."""
        pointers = [_data_ptr(v) for v in values]
        if self._owned_outputs is None:
            if self._first_values is None:
                # First run: copy everything, and keep these tensors alive so that an output at the
                # same address on the next run can only be one that is not allocated per run.
                self._first_values = (values, pointers)
                return [_to_numpy(v) for v in values]
            first_pointers = self._first_values[1]
            self._owned_outputs = [p is not None and p != q for p, q in zip(pointers, first_pointers)]
            self._first_values = None
        taken = {_data_ptr(t) for t in inputs}
        return [_zero_copy(v) if owned and p not in taken else _to_numpy(v)
                for v, p, owned in zip(values, pointers, self._owned_outputs)]

    def _device(self):
        return tvm.cpu() if self.target["kind"] == "llvm" else tvm.cuda()

    def _virtual_machine(self) -> VirtualMachine:
        if self._vm is None:
            if self.target["kind"] == "cuda" and not cuda_available():
                raise ArtifactError(
                    "this artifact was built for CUDA but no CUDA device is available here; "
                    "run it on a machine with an NVIDIA GPU, or compile with --target llvm"
                )
            self._vm = VirtualMachine(self._executable, self._device())
        return self._vm

    def _check_feeds(self, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise InputError("inputs must be a dict of input name -> array")
        names = [i["name"] for i in self.inputs]
        unknown = [k for k in feeds if k not in names]
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}; the model's inputs are {', '.join(map(repr, names))}")
        missing = [n for n in names if n not in feeds]
        if missing:
            raise InputError(f"missing input {missing[0]!r}; the model's inputs are {', '.join(map(repr, names))}")
        symbols: dict[str, int] = {}
        arrays = []
        for spec in self.inputs:
            name = spec["name"]
            array = np.asarray(feeds[name])
            if array.dtype != np.dtype(_numpy_dtype(spec["dtype"])):
                raise InputError(
                    f"input {name!r} has dtype {array.dtype}, expected {spec['dtype']}; "
                    f"convert it with .astype(np.{spec['dtype']})" if spec["dtype"] != "bfloat16"
                    else f"input {name!r} has dtype {array.dtype}, expected bfloat16 (ml_dtypes.bfloat16)"
                )
            expected = spec["shape"]
            if array.ndim != len(expected):
                raise InputError(f"input {name!r} has shape {list(array.shape)}, expected {_fmt_shape(expected)} "
                                 f"(rank {len(expected)})")
            for axis, (got, want) in enumerate(zip(array.shape, expected)):
                if isinstance(want, int):
                    if got != want:
                        raise InputError(f"input {name!r} has shape {list(array.shape)}, expected "
                                         f"{_fmt_shape(expected)} (dimension {axis} must be {want})")
                elif symbols.setdefault(want, got) != got:
                    raise InputError(f"input {name!r} dimension {axis} ({want}) is {got}, but another input "
                                     f"gave {want}={symbols[want]}")
            arrays.append(np.asarray(array, order="C"))  # ascontiguousarray would make 0-d 1-d
        return arrays

    # ------------------------------------------------------------------ saving / loading
    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact directory atomically; an existing artifact at ``path`` is replaced."""
        dest = Path(path)
        if dest.exists() and not (dest / MANIFEST).is_file():
            raise ArtifactError(f"{dest}: exists and is not a lepton-opt artifact; choose another output path")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            self._write_files(tmp)
            (tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=2) + "\n")
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def _write_files(self, folder: Path, library: str = LIBRARY) -> None:
        """Write the compiled library into ``folder`` (the manifest is written by ``save``)."""
        if isinstance(self._executable, tvm.runtime.Executable):
            self._executable.export_library(str(folder / library))
        else:
            shutil.copyfile(self._library_path, folder / library)


class PartitionedModel(CompiledModel):
    """A model run partly by compiled segments and partly by onnxruntime (the nodes that could
    not be lowered; see :mod:`lepton_opt.targets.partition`). ``manifest["segments"]`` lists
    the segments in run order, each with its kind, inputs and outputs; ``manifest["fallback"]``
    names the nodes onnxruntime runs and why. Running it needs onnxruntime installed."""

    def __init__(self, parts: list[CompiledModel | bytes], manifest: dict):
        super().__init__(None, manifest)
        self.parts = parts
        self._sessions: dict[int, Any] = {}

    def _compiled_parts(self) -> list[CompiledModel]:
        return [p for p in self.parts if isinstance(p, CompiledModel)]

    def _imported_modules(self) -> list:
        return [m for p in self._compiled_parts() for m in p._imported_modules()]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        arrays = self._check_feeds(feeds)
        env: dict[str, np.ndarray] = dict(zip((i["name"] for i in self.inputs), arrays))
        for index, (seg, part) in enumerate(zip(self.manifest["segments"], self.parts)):
            args = {name: env[name] for name in seg["inputs"]}
            if isinstance(part, CompiledModel):
                env.update(part.run(args))
            else:
                session = self._session(index)
                env.update(zip(seg["outputs"], session.run(seg["outputs"], args)))
        return {o["name"]: env[o["name"]] for o in self.outputs}

    def _session(self, index: int):
        if index not in self._sessions:
            self._sessions[index] = onnxruntime_session(self.parts[index])
        return self._sessions[index]

    def _write_files(self, folder: Path, library: str = LIBRARY) -> None:
        for seg, part in zip(self.manifest["segments"], self.parts):
            if isinstance(part, CompiledModel):
                part._write_files(folder, seg["library"])
            else:
                (folder / seg["model"]).write_bytes(part)


def onnxruntime_session(model: bytes):
    """An onnxruntime CPU session for a segment, with as many threads as TVM's pool and no
    spinning threads left to take the cores from the compiled segments."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ArtifactError("this artifact runs some nodes in onnxruntime (see manifest['fallback']); "
                            "install onnxruntime to run it") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = runtime_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def profile_kernels(models: Sequence[CompiledModel], feeds: Mapping[str, Any], runs: int = 10,
                    warmup: int = 2) -> list[dict[str, tuple[float, float]]]:
    """Per model (fresh CPU builds taking the same ``feeds``): kernel name -> (seconds per model
    run, calls per model run), the models run in turn so that drifts of the machine touch all
    alike. Wall time between the VM's instrument callbacks: rank kernels by it, and compare the
    same kernel across builds; the callbacks add a little to each."""
    from lepton_opt.targets.cpu_schedule import profile_interleaved

    if any(not isinstance(m._executable, tvm.runtime.Executable) or m.target.get("kind") != "llvm"
           for m in models):
        raise ArtifactError("kernel profiles need fresh CPU builds (lepton_opt.compile(..., target='llvm'))")
    inputs = [tvm.runtime.tensor(a) for a in models[0]._check_feeds(feeds)]
    return profile_interleaved([m._executable for m in models], inputs, runs, warmup)


def runtime_threads() -> int:
    """Threads of TVM's CPU thread pool (starts the pool if it has not started)."""
    return int(tvm.get_global_func("runtime.NumThreads")())


def cuda_available() -> bool:
    """Whether a CUDA device can run kernels here (driver loaded and a GPU present)."""
    try:
        return bool(tvm.cuda().exist)
    except Exception:  # noqa: BLE001 - no CUDA runtime in this TVM build, or no driver
        return False


def _replace_dir(new: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(new, dest)
        return
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def load_compiled(path: str | os.PathLike) -> CompiledModel:
    """Load an artifact directory written by :meth:`CompiledModel.save` / ``lepton-opt compile``."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifact directory (create one with `lepton-opt compile`)")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{root}: no {MANIFEST}; not a lepton-opt artifact") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{root}/{MANIFEST}: corrupt ({e.msg}); recompile the model") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{root}: artifact format {manifest.get('format_version')!r} is not supported "
                            f"(this lepton-opt reads version {FORMAT_VERSION}); recompile the model")
    built_with = manifest.get("versions", {}).get("tvm")
    if built_with and built_with != tvm.__version__:
        raise ArtifactError(f"{root}: built with TVM {built_with}, this installation has {tvm.__version__}; "
                            "recompile the model")
    _check_cpu_features(root, manifest)
    if "segments" in manifest:
        parts: list[CompiledModel | bytes] = []
        for seg in manifest["segments"]:
            if "library" in seg:
                parts.append(_load_library(root, root / seg["library"], seg["manifest"]))
                continue
            try:
                parts.append((root / seg["model"]).read_bytes())
            except OSError:
                raise ArtifactError(f"{root}: the segment model {seg['model']} is missing; recompile the model") from None
        return PartitionedModel(parts, manifest)
    return _load_library(root, root / manifest.get("library", LIBRARY), manifest)


# LLVM feature names -> the /proc/cpuinfo flags that say a CPU has them (x86). Only these are
# checked: a build with them runs instructions a CPU without them dies on (SIGILL).
_CPUINFO_FLAGS = {
    "sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "avx512f": "avx512f", "avx512cd": "avx512cd", "avx512bw": "avx512bw", "avx512dq": "avx512dq",
    "avx512vl": "avx512vl", "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2", "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16", "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq",
    "avxvnni": "avx_vnni", "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
}


def host_cpu_flags() -> set[str] | None:
    """The CPU feature flags of this host (Linux /proc/cpuinfo), or None where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def _check_cpu_features(root: Path, manifest: dict) -> None:
    """A CPU build whose target features this host lacks is refused with one line (it would
    die of an illegal instruction on the first run)."""
    target = manifest.get("target", {})
    if target.get("kind") != "llvm":
        return
    flags = host_cpu_flags()
    if not flags:
        return
    wanted = [f[1:] for f in target.get("mattr", []) if isinstance(f, str) and f.startswith("+")]
    missing = [f for f in wanted if f in _CPUINFO_FLAGS and _CPUINFO_FLAGS[f] not in flags]
    if missing:
        raise ArtifactError(
            f"{root}: compiled for a CPU with {', '.join(missing)}, which this CPU lacks (it would stop with an "
            f"illegal instruction); compile on this machine, or for a common CPU with --mcpu (e.g. x86-64-v3)")


def _load_library(root: Path, lib: Path, manifest: dict) -> CompiledModel:
    if not lib.is_file():
        raise ArtifactError(f"{root}: the compiled library {lib.name} is missing; recompile the model")
    try:
        module = tvm.runtime.load_module(str(lib))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if manifest.get("target", {}).get("kind") == "cuda":
            raise ArtifactError(f"{root}: a CUDA artifact cannot be loaded without the CUDA driver ({first}); "
                                "load it on a machine with an NVIDIA GPU") from None
        raise ArtifactError(f"{root}: cannot load {lib.name} ({first}); recompile the model") from None
    return CompiledModel(module, manifest, library_path=str(lib))


def make_manifest(*, inputs: list[dict], outputs: list[dict], target: dict, tvm_target: dict | str,
                  passes: list[str], source: str, sha256: str, opset: int) -> dict:
    import onnx

    from lepton_opt import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library": LIBRARY,
        "inputs": inputs,
        "outputs": outputs,
        "target": target,
        "tvm_target": tvm_target,
        "passes": passes,
        "source": {"path": source, "sha256": sha256, "opset": opset},
        "versions": {"lepton_opt": __version__, "tvm": tvm.__version__, "onnx": onnx.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _numpy_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return dtype


def _data_ptr(value) -> int | None:
    try:
        return int(value.data_ptr())
    except (AttributeError, TypeError):
        return None


def _view(tensor) -> np.ndarray | None:
    """A numpy array sharing ``tensor``'s memory, or None where DLPack cannot give one (bfloat16)."""
    try:
        return np.from_dlpack(tensor)
    except (TypeError, ValueError, RuntimeError, BufferError):
        return None


def _zero_copy(value) -> np.ndarray:
    try:
        return np.from_dlpack(value)
    except (TypeError, ValueError, RuntimeError, BufferError):  # bfloat16 and the like: copy
        return _to_numpy(value)


def _to_numpy(value) -> np.ndarray:
    with contextlib.suppress(AttributeError):
        return value.numpy()
    return np.asarray(value)


def _fmt_shape(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
