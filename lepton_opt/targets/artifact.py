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

Integrity: ``manifest["files"]`` (format version 2) records the size and sha256 of every file
the artifact loads (the libraries and the onnxruntime segment models). Loading hashes each of
them before TVM's loader or onnxruntime sees it; a file that is truncated, of another size or
with another hash is refused with one line naming it. The cost is one read of each file: 73 ms
for a 105 MB library (a 5120x5120 float32 MatMul; one core, warm page cache), which
``load_compiled`` then takes 250 ms instead of 170 ms to load. Format version 1 artifacts
(written before the hashes) have no ``files``: they still load, unverified, as before (a
damaged library then fails in TVM's loader, or worse); saving such a loaded artifact again
writes it as version 2 with hashes. A manifest of a newer format version, or built with another
TVM version, is refused. The hashes catch damage (a copy cut short, a disk error, a stray edit),
not an attacker: whoever can change the library can change the manifest beside it. An artifact
is native code that runs in the loading process: load only artifacts from a source you trust.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

from lepton_opt.errors import ArtifactError, InputError, first_line

LIBRARY = "model.so"
MANIFEST = "manifest.json"
# An artifact directory is readable by every user (a serving process often runs as another one);
# its files get the process's default mode (0644 under the usual umask).
ARTIFACT_DIR_MODE = 0o755
FORMAT = "lepton-opt-artifact"
# 1: the first format; 2: manifest["files"] holds the size and sha256 of every library and
# segment model (version 1 artifacts still load, unverified).
FORMAT_VERSION = 2


class CompiledModel:
    """A compiled model: run it on numpy inputs, save it, inspect what was built."""

    def __init__(self, executable: Any, manifest: dict, *, library_path: str | None = None,
                 library_sha256: str | None = None):
        self._executable = executable  # tvm.runtime.Executable (fresh build) or a loaded runtime Module
        self.manifest = manifest
        self._library_path = library_path
        self._library_sha256 = library_sha256  # of the loaded library, where its manifest recorded it
        self._vm: VirtualMachine | None = None
        self._main_fn = None
        self._lock = threading.Lock()
        self._input_buffers: dict[int, tuple[Any, np.ndarray | None]] = {}  # tensor, numpy view
        self._input_pointers: set[int] | None = None  # addresses of those buffers (no output may be one)
        self._owned_outputs: list[bool] | None = None  # per output: allocated afresh by each run
        self._first_values = None
        self._validated: list[tuple[str, tuple, np.dtype]] | None = None  # the last fully checked inputs
        self._output_names = [o["name"] for o in manifest["outputs"]]
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
        args = self._repeated_feeds(feeds)
        if args is None:  # the first call, or inputs unlike the last validated ones: check in full
            args = self._check_feeds(feeds)
            self._validated = [(spec["name"], a.shape, a.dtype) for spec, a in zip(self.inputs, args)]
        with self._lock:
            main = self._main()
            inputs = self._input_tensors(args)
            result = main(*inputs)
            # (indexing a TVM array costs about half a microsecond per element)
            values = [result] if hasattr(result, "numpy") else [result[0]] if len(self.outputs) == 1 else list(result)
            return dict(zip(self._output_names, self._hand_over(values, inputs)))

    def _repeated_feeds(self, feeds) -> list[np.ndarray] | None:
        """The input arrays, when ``feeds`` holds exactly the inputs of the last validated call
        again (same names, shapes and types, contiguous): a tiny model run every few milliseconds
        then pays no per-call validation beyond these comparisons (1.7 of 8.4 us per call)."""
        validated = self._validated
        if validated is None or type(feeds) is not dict or len(feeds) != len(validated):
            return None
        arrays = []
        for name, shape, dtype in validated:
            array = feeds.get(name)
            if type(array) is not np.ndarray or array.shape != shape or array.dtype != dtype \
                    or not array.flags.c_contiguous:
                return None
            arrays.append(array)
        return arrays

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
                self._input_pointers = None
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
        if self._input_pointers is None:  # the input buffers changed since the last run
            self._input_pointers = {_data_ptr(t) for t in inputs}
        taken = self._input_pointers
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
        """Write the artifact directory atomically; an existing artifact at ``path`` is replaced.
        The manifest records the size and sha256 of every file written (``manifest["files"]``),
        which :func:`load_compiled` verifies."""
        dest = Path(path)
        if _holds_other_files(dest):
            raise ArtifactError(f"{dest}: exists and is not a lepton-opt artifact; choose another output path")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            tmp.chmod(ARTIFACT_DIR_MODE)  # mkdtemp's 0700 would keep the artifact from other users
            self._write_files(tmp)
            files = {f.name: {"size": f.stat().st_size, "sha256": _sha256(f)}
                     for f in sorted(tmp.iterdir()) if f.name != MANIFEST}
            manifest = {**self.manifest, "format_version": FORMAT_VERSION, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.manifest.update(format_version=FORMAT_VERSION, files=files)  # what is on disk now
        return dest

    def _write_files(self, folder: Path, library: str = LIBRARY) -> None:
        """Write the compiled library into ``folder`` (the manifest is written by ``save``)."""
        if isinstance(self._executable, tvm.runtime.Executable):
            self._executable.export_library(str(folder / library))
        else:
            shutil.copyfile(self._library_path, folder / library)
            if self._library_sha256 is not None and _sha256(folder / library) != self._library_sha256:
                raise ArtifactError(f"{self._library_path}: changed since it was loaded (its sha256 differs); "
                                    "rebuild the artifact with `lepton-opt compile`")


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


def runtime_threads() -> int:
    """Threads of TVM's CPU thread pool (starts the pool if it has not started)."""
    return int(tvm.get_global_func("runtime.NumThreads")())


def cuda_available() -> bool:
    """Whether a CUDA device can run kernels here (driver loaded and a GPU present)."""
    try:
        return bool(tvm.cuda().exist)
    except Exception:  # noqa: BLE001 - no CUDA runtime in this TVM build, or no driver
        return False


def _holds_other_files(dest: Path) -> bool:
    """Whether ``dest`` exists and is not an artifact. Another process may be replacing the
    artifact there at this moment, and deleting the old one it moved away: a listing without a
    manifest counts only if ``dest`` is the same directory before and after it."""
    for _ in range(100):
        try:
            before = os.stat(dest).st_ino
            if MANIFEST in os.listdir(dest):
                return False
            if os.stat(dest).st_ino == before:
                return True
        except FileNotFoundError:
            return False
        except NotADirectoryError:
            return True
    return False


def _replace_dir(new: Path, dest: Path) -> None:
    """Move the complete artifact directory ``new`` to ``dest``, replacing the one there.

    Safe against other processes saving to ``dest`` at the same time: each ends with one of the
    artifacts, complete, at ``dest`` (the last to rename wins). Where the kernel can swap two
    directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``), ``dest`` is never missing in
    between; elsewhere the old artifact is first moved to a name of this process's own."""
    olds: list[Path] = []
    try:
        for _ in range(1000):
            try:
                os.rename(new, dest)  # no artifact there (or an empty directory)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if _exchange(new, dest):  # ``new`` now holds the artifact that was at ``dest``
                olds.append(new)
                return
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            olds.append(old)
            with contextlib.suppress(FileNotFoundError):  # another process moved it away first
                os.replace(dest, old)
        raise ArtifactError(f"{dest}: could not be replaced (other processes keep writing it)")
    finally:
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 with RENAME_EXCHANGE); False where
    the system or the file system cannot, or ``b`` vanished meanwhile."""
    global _renameat2
    if _renameat2 is None:
        import ctypes

        try:
            function = ctypes.CDLL(None, use_errno=True).renameat2
            function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2 = function
        except (AttributeError, OSError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


_renameat2: Any = None  # libc's renameat2, False where it is missing


REBUILD = "rebuild the artifact with `lepton-opt compile`"


def load_compiled(path: str | os.PathLike) -> CompiledModel:
    """Load an artifact directory written by :meth:`CompiledModel.save` / ``lepton-opt compile``.

    Every library and segment model is checked against the size and sha256 its manifest records
    before it is loaded; a damaged or changed file, a manifest of a newer format or one built with
    another TVM version is an :class:`~lepton_opt.errors.ArtifactError` (one line naming the file).
    An artifact of format version 1 records no hashes: it loads without that check."""
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifact directory (create one with `lepton-opt compile`)")
    manifest = _read_manifest(root)
    _check_cpu_features(root, manifest)
    if "segments" in manifest:
        segments = manifest["segments"]
        if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
            raise ArtifactError(f"{root / MANIFEST}: corrupt (its segments are not a list of objects); {REBUILD}")
        parts: list[CompiledModel | bytes] = []
        for seg in segments:
            if "library" in seg:
                parts.append(_load_library(root, _member(root, seg["library"]), seg.get("manifest"),
                                           manifest))
                continue
            model = _member(root, seg.get("model"))
            if not model.is_file():
                raise ArtifactError(f"{root}: the segment model {model.name} is missing; {REBUILD}")
            _verify_file(root, manifest, model)
            parts.append(model.read_bytes())
        return PartitionedModel(parts, manifest)
    return _load_library(root, _member(root, manifest.get("library", LIBRARY)), manifest, manifest)


def _read_manifest(root: Path) -> dict:
    """The manifest, with its format and TVM version checked."""
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{root}: no {MANIFEST}; not a lepton-opt artifact") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: corrupt ({getattr(e, 'msg', None) or e.reason}); {REBUILD}") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a lepton-opt artifact manifest; {REBUILD}")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {version} is newer than this lepton-opt reads "
                            f"(up to {FORMAT_VERSION}); upgrade lepton-opt, or {REBUILD} of this version")
    if version not in range(1, FORMAT_VERSION + 1) or isinstance(version, bool):
        raise ArtifactError(f"{path}: artifact format version {version!r} is not supported (this lepton-opt reads "
                            f"1 to {FORMAT_VERSION}); {REBUILD}")
    versions = manifest.get("versions")
    built_with = versions.get("tvm") if isinstance(versions, dict) else None
    if built_with and built_with != tvm.__version__:
        raise ArtifactError(f"{path}: built with TVM {built_with}, this installation has {tvm.__version__}; "
                            f"{REBUILD} under this TVM, or install apache-tvm=={built_with} to run it")
    files = manifest.get("files")
    if version >= 2 and not (isinstance(files, dict) and all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("size"), int)
            for e in files.values())):
        raise ArtifactError(f"{path}: corrupt (no size and sha256 of each file in 'files'); {REBUILD}")
    return manifest


def _member(root: Path, name: Any) -> Path:
    """The file ``name`` of the artifact directory; a name that is no plain file name (a path that
    leads out of the directory) is a damaged manifest."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ArtifactError(f"{root / MANIFEST}: corrupt (names {name!r} as a file of the artifact); {REBUILD}")
    return root / name


def _verify_file(root: Path, manifest: dict, path: Path) -> None:
    """Check ``path`` against the size and sha256 the manifest records (format version 2)."""
    if manifest.get("format_version", 1) < 2:
        return  # written before the hashes: not verified
    entry = manifest["files"].get(path.name)
    if entry is None:
        raise ArtifactError(f"{root / MANIFEST}: corrupt (records no sha256 of {path.name}); {REBUILD}")
    size = path.stat().st_size
    if size < entry["size"]:
        raise ArtifactError(f"{path}: truncated ({size:,} of {entry['size']:,} bytes); {REBUILD}")
    if size != entry["size"]:
        raise ArtifactError(f"{path}: {size:,} bytes, the manifest records {entry['size']:,} (the file changed "
                            f"since it was built); {REBUILD}")
    if _sha256(path) != entry["sha256"]:
        raise ArtifactError(f"{path}: sha256 differs from the manifest's (the file is damaged or changed since it "
                            f"was built); {REBUILD}")


def _check_elf_size(lib: Path) -> None:
    """A truncated ELF library (which the dynamic loader maps and the process then dies of
    SIGBUS on) is refused: its headers, loaded segments and section table must lie within the
    file. This is what catches a truncated library of a format 1 artifact (no hashes); a file
    that is not 64-bit little-endian ELF is left to TVM's loader."""
    import struct

    size = lib.stat().st_size
    with open(lib, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4:6] not in (b"\x02\x01", b"\x02", b""):  # ELF64, little-endian
            return
        if len(header) < 64:
            needed = 64
        else:
            phoff, shoff = struct.unpack_from("<QQ", header, 0x20)
            phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", header, 0x36)
            needed = max(phoff + phentsize * phnum, shoff + shentsize * shnum if shoff else 0)
            if needed <= size and phentsize >= 56:
                f.seek(phoff)
                table = f.read(phentsize * phnum)
                for k in range(phnum):
                    p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, k * phentsize)
                    if p_type == 1:  # PT_LOAD
                        needed = max(needed, p_offset + p_filesz)
    if needed > size:
        raise ArtifactError(f"{lib}: truncated ({size:,} bytes; its ELF headers reach byte {needed:,}); {REBUILD}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


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
    target = manifest.get("target")
    if not isinstance(target, dict) or target.get("kind") != "llvm":
        return
    flags = host_cpu_flags()
    if not flags:
        return
    mattr = target.get("mattr")
    wanted = [f[1:] for f in (mattr if isinstance(mattr, list) else []) if isinstance(f, str) and f.startswith("+")]
    missing = [f for f in wanted if f in _CPUINFO_FLAGS and _CPUINFO_FLAGS[f] not in flags]
    if missing:
        raise ArtifactError(
            f"{root}: compiled for a CPU with {', '.join(missing)}, which this CPU lacks (it would stop with an "
            f"illegal instruction); compile on this machine, or for a common CPU with --mcpu (e.g. x86-64-v3)")


def _load_library(root: Path, lib: Path, manifest: dict, top: dict) -> CompiledModel:
    """Load the library ``lib`` of the artifact at ``root`` after checking it against ``top``
    (the artifact's manifest); ``manifest``: the library's own (a segment's for a partitioned
    model, else ``top``)."""
    if not lib.is_file():
        raise ArtifactError(f"{root}: the compiled library {lib.name} is missing; {REBUILD}")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("target"), dict):
        raise ArtifactError(f"{root / MANIFEST}: corrupt (no target of {lib.name}); {REBUILD}")
    _verify_file(root, top, lib)
    _check_elf_size(lib)
    try:
        module = tvm.runtime.load_module(str(lib))
    except Exception as e:
        first = first_line(e)
        if manifest["target"].get("kind") == "cuda":
            raise ArtifactError(f"{root}: a CUDA artifact cannot be loaded without the CUDA driver ({first}); "
                                "load it on a machine with an NVIDIA GPU") from None
        raise ArtifactError(f"{lib}: cannot be loaded ({first}); {REBUILD}") from None
    entry = (top.get("files") or {}).get(lib.name) if top.get("format_version", 1) >= 2 else None
    return CompiledModel(module, manifest, library_path=str(lib), library_sha256=entry and entry["sha256"])


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
