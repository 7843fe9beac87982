"""The tuning-record database: where tuned schedules are kept between runs and models.

Layout (one directory per target, under the user cache)::

    $LEPTON_OPT_CACHE/tuning/            (default ~/.cache/lepton-opt/tuning)
      llvm-znver5-3f2a9c01d4/
        target.json                      the TVM target the records were measured on
        database_workload.json           MetaSchedule's JSONDatabase format: one workload a line
        database_tuning_record.json      [workload index, record] a line
        lepton_explored.json             per kernel: every tile measured and its time
        .lock

The two tables are MetaSchedule's own ``JSONDatabase`` files, so TVM's tools can read a record
directory, and ``--records DIR`` accepts both this layout and a plain MetaSchedule work dir.
Workloads are matched by the structural hash of the kernel's TIR (MetaSchedule's
``"structural"`` equality): a kernel of another model with the same shapes, dtypes and fused
epilogue finds the same records.

Why not let MetaSchedule write here directly: a record line refers to its workload by line
number, so two processes appending at once would tangle the tables. Each tuning run measures
into a private database and :meth:`RecordStore.merge` folds its best records in, under an
exclusive ``flock``, by writing complete new tables and renaming them into place (the workload
table first: it only ever grows, so the indices of the old record table stay valid). Readers
take the lock shared. The record tables keep the best few schedules of each kernel (what a
build needs); ``lepton_explored.json`` remembers every tile measured, so that a later tuning
run, of this model or of another that shares kernels, does not measure them again. A truncated or corrupt line (a crash, a disk full, an edit) is skipped
with a warning, never a crash; the next merge writes the tables anew without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule import _ffi_api as _ms_ffi

from lepton_opt.errors import OptionError

CACHE_ENV = "LEPTON_OPT_CACHE"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
EXPLORED = "lepton_explored.json"
TARGET_FILE = "target.json"
LOCK_FILE = ".lock"
# Records kept per workload when merging: the best few, so that a later search starts from them.
KEEP_PER_WORKLOAD = 4
# How kernels are timed (:mod:`.tune`). Times taken under another protocol do not compare, so the
# protocol is part of a cache directory's name and of every ``lepton_explored.json`` row; rows of
# another protocol are measured again. 1: warm repeats (3 calls, 40 ms a repeat); 2: one call per repeat
# after a cache flush of the weights, as a kernel meets them in a model run.
PROTOCOL = 2

Warn = Callable[[str], None]


def cache_root() -> Path:
    """``$LEPTON_OPT_CACHE`` or ``~/.cache/lepton-opt`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lepton-opt"


def tuning_root() -> Path:
    return cache_root() / "tuning"


def target_key(target: tvm.target.Target) -> str:
    """A directory name for ``target``: kind, CPU or arch, and a hash of the whole target
    (features and core count included: a schedule measured with AVX-512 on 2 cores says little
    about another machine)."""
    text = _target_text(target)
    info = json.loads(text) if text.startswith("{") else {}
    name = info.get("mcpu") or info.get("arch") or (info.get("host") or {}).get("mcpu") or "generic"
    digest = hashlib.sha256(f"{text}|protocol={PROTOCOL}".encode()).hexdigest()[:10]
    return f"{target.kind.name}-{name}-{digest}"


def _target_text(target: tvm.target.Target) -> str:
    """The target as canonical JSON (TVM prints a target as JSON)."""
    text = str(target)
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except ValueError:
        return text


def cache_dir(target: tvm.target.Target) -> Path:
    return tuning_root() / target_key(target)


@dataclasses.dataclass
class StoreSummary:
    path: Path
    target: str
    workloads: int
    records: int
    bytes: int


class RecordStore:
    """One record directory (MetaSchedule's two JSON tables), safe for concurrent use."""

    def __init__(self, path: str | os.PathLike, warn: Warn | None = None):
        self.path = Path(path)
        self.warn = warn or (lambda _msg: None)

    # ------------------------------------------------------------------ reading
    def exists(self) -> bool:
        return (self.path / WORKLOADS).is_file() or (self.path / RECORDS).is_file()

    def read(self) -> list[ms.database.TuningRecord]:
        """Every readable record; unreadable lines are skipped with one warning per table."""
        if not self.exists():
            return []
        with self._locked(fcntl.LOCK_SH):
            return self._read_unlocked()

    def _read_unlocked(self) -> list[ms.database.TuningRecord]:
        workloads: list[ms.database.Workload | None] = []
        bad_workloads = 0
        for line in _lines(self.path / WORKLOADS):
            try:
                workloads.append(ms.database.Workload.from_json(json.loads(line)))
            except Exception:  # noqa: BLE001 - a truncated or corrupt line
                workloads.append(None)
                bad_workloads += 1
        records, bad_records = [], 0
        for line in _lines(self.path / RECORDS):
            try:
                index, body = json.loads(line)
                workload = workloads[int(index)] if 0 <= int(index) < len(workloads) else None
                if workload is None:
                    raise ValueError("record of an unreadable workload")
                record = ms.database.TuningRecord.from_json(body, workload)
            except Exception:  # noqa: BLE001 - a truncated or corrupt line
                bad_records += 1
                continue
            if _mean_seconds(record) is not None:
                records.append(record)
        for count, table in ((bad_workloads, WORKLOADS), (bad_records, RECORDS)):
            if count:
                self.warn(f"tuning records: skipped {count} unreadable line(s) of {self.path / table} "
                          "(truncated or corrupt); the next tuning run rewrites the file without them")
        return records

    # ------------------------------------------------------------------ writing
    def merge(self, new: Iterable[ms.database.TuningRecord], target: tvm.target.Target | None = None,
              replace: bool = False) -> int:
        """Fold ``new`` records in, keeping the best :data:`KEEP_PER_WORKLOAD` per workload.
        With ``replace``, the old records of every workload in ``new`` are dropped first (times
        taken another way, which do not compare: tuning's in-model confirmation).
        Returns the number of workloads whose best record got faster or that are new."""
        new = [r for r in new if _mean_seconds(r) is not None]
        replaced = {_workload_key(r.workload) for r in new} if replace else set()
        self.path.mkdir(parents=True, exist_ok=True)
        with self._locked(fcntl.LOCK_EX):
            old = self._read_unlocked()
            table = _RecordTable()
            for record in old:
                if _workload_key(record.workload) not in replaced:
                    table.add(record)
            best_before = {key: table.best(key) for key in table.keys()}
            for record in new:
                table.add(record)
            improved = sum(1 for key in table.keys()
                           if key not in best_before or table.best(key) < best_before[key])
            self._write_unlocked(table)
            if target is not None and not (self.path / TARGET_FILE).exists():
                _atomic_write(self.path / TARGET_FILE, json.dumps(json.loads(_target_text(target)), indent=2) + "\n")
        return improved

    def _write_unlocked(self, table: _RecordTable) -> None:
        workload_lines, record_lines = [], []
        for index, (workload, records) in enumerate(table.items()):
            workload_lines.append(json.dumps(workload.as_json()))
            for record in records:
                record_lines.append(json.dumps([index, record_json(record)]))
        # Workloads first: the old record table's indices stay valid against the new one.
        _atomic_write(self.path / WORKLOADS, "".join(line + "\n" for line in workload_lines))
        _atomic_write(self.path / RECORDS, "".join(line + "\n" for line in record_lines))

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        if mode == fcntl.LOCK_EX:
            self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_FILE
        if not self.path.is_dir():
            yield
            return
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 - held for the duration of the block
        except OSError:  # a read-only records directory given with --records: read without a lock
            yield
            return
        with handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ explored tiles
    def read_explored(self) -> dict[str, dict]:
        """Workload hash -> {"name", "rule", "tiles": {tile key: seconds}}, the rows timed under
        the current :data:`PROTOCOL` only."""
        if not (self.path / EXPLORED).is_file():
            return {}
        with self._locked(fcntl.LOCK_SH):
            return self._read_explored_unlocked()

    def _read_explored_unlocked(self) -> dict[str, dict]:
        table, bad = {}, 0
        for line in _lines(self.path / EXPLORED):
            try:
                row = json.loads(line)
                if row.get("protocol", 1) != PROTOCOL:
                    continue  # timed another way: measured again
                tiles = {str(k): float(v) for k, v in row["tiles"].items() if math.isfinite(float(v))}
                entry = table.setdefault(str(row["workload"]), {"name": row.get("name"), "rule": row.get("rule"),
                                                                "tiles": {}})
                for key, secs in tiles.items():
                    entry["tiles"][key] = min(secs, entry["tiles"].get(key, secs))
            except Exception:  # noqa: BLE001 - a truncated or corrupt line
                bad += 1
        if bad:
            self.warn(f"tuning records: skipped {bad} unreadable line(s) of {self.path / EXPLORED} "
                      "(truncated or corrupt)")
        return table

    def merge_explored(self, new: dict[str, dict]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with self._locked(fcntl.LOCK_EX):
            table = self._read_explored_unlocked()
            for shash, row in new.items():
                entry = table.setdefault(shash, {"name": row.get("name"), "rule": row.get("rule"), "tiles": {}})
                for key, secs in row["tiles"].items():
                    entry["tiles"][key] = min(float(secs), entry["tiles"].get(key, float(secs)))
            _atomic_write(self.path / EXPLORED, "".join(
                json.dumps({"workload": k, **v, "protocol": PROTOCOL}, sort_keys=True) + "\n"
                for k, v in table.items() if v["tiles"]))

    def summary(self) -> StoreSummary:
        records = self.read()
        target = "?"
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((self.path / TARGET_FILE).read_text())
            target = ", ".join(f"{k}={v}" for k, v in info.items() if k in ("kind", "mcpu", "arch", "num-cores"))
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        return StoreSummary(self.path, target, len({_workload_key(r.workload) for r in records}), len(records), size)


class _RecordTable:
    """Records grouped by workload (structural hash + equality), best first."""

    def __init__(self):
        self._groups: dict[str, tuple[ms.database.Workload, list[ms.database.TuningRecord]]] = {}

    def add(self, record: ms.database.TuningRecord) -> None:
        key = _workload_key(record.workload)
        workload, records = self._groups.setdefault(key, (record.workload, []))
        trace = _trace_key(record)
        if any(_trace_key(r) == trace for r in records):
            return  # the same schedule measured again: keep the first measurement
        records.append(record)
        records.sort(key=_mean_seconds)
        del records[KEEP_PER_WORKLOAD:]

    def keys(self):
        return self._groups.keys()

    def best(self, key: str) -> float:
        return _mean_seconds(self._groups[key][1][0])

    def items(self):
        return self._groups.values()


def tile_key(tile) -> str:
    """How a :class:`~lepton_opt.targets.cpu_schedule.Tile` is named in ``lepton_explored.json``."""
    return f"{tile.rows}x{tile.vectors}:{tile.order}"


def _workload_key(workload: ms.database.Workload) -> str:
    # Workload.as_json() is [structural hash, base64 of the module]; the module text is the key,
    # so two workloads with colliding hashes stay apart.
    return json.dumps(workload.as_json())


def record_json(record: ms.database.TuningRecord):
    """A record as MetaSchedule's JSONDatabase writes it. (``TuningRecord.as_json`` fails on the
    index map of a ``transform_layout`` step, which the C++ writer stores as TVM's JSON text.)"""
    return _plain(_ms_ffi.TuningRecordAsJSON(record))


def _plain(obj):
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj.value if isinstance(obj, tvm.tirx.IntImm) else obj
    if isinstance(obj, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
        return obj.value
    if isinstance(obj, tvm.tirx.IndexMap):
        return tvm.ir.save_json(obj)
    if isinstance(obj, (list, tuple, tvm_ffi.Array)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (dict, tvm_ffi.Map)):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    raise TypeError(f"tuning record holds a {type(obj).__name__}")


def _trace_key(record: ms.database.TuningRecord) -> str:
    return json.dumps(record_json(record)[0])


def _mean_seconds(record: ms.database.TuningRecord) -> float | None:
    secs = [float(s) for s in (record.run_secs or [])]
    if not secs or not all(math.isfinite(s) and 0 < s < 1e9 for s in secs):
        return None  # a failed measurement (MetaSchedule writes 1e10 for those)
    return sum(secs) / len(secs)


def _lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    yield line
    except FileNotFoundError:
        return


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------- what compile uses

def record_dirs(target: tvm.target.Target, extra: Iterable[str | os.PathLike] = (), use_cache: bool = True) -> list[Path]:
    """The record directories a build of ``target`` reads: ``extra`` (``--records``), then the
    cache's directory for this target. A ``--records`` directory may hold per-target
    subdirectories (a copied cache) or the tables themselves."""
    dirs = []
    for given in extra:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise OptionError(f"--records {given}: no such directory")
        sub = path / target_key(target)
        dirs.append(sub if sub.is_dir() else path)
    if use_cache:
        dirs.append(cache_dir(target))
    return dirs


def records_digest(dirs: Iterable[Path]) -> str | None:
    """sha256 (16 hex digits) of the record tables of ``dirs``: two builds that applied
    different records can be told apart from their manifests. None when there are none."""
    digest, found = hashlib.sha256(), False
    for path in dirs:
        for table in (WORKLOADS, RECORDS):
            try:
                digest.update((Path(path) / table).read_bytes())
                found = True
            except OSError:
                continue
    return digest.hexdigest()[:16] if found else None


def load_database(dirs: Iterable[Path], warn: Warn | None = None) -> tuple[ms.database.MemoryDatabase, int]:
    """An in-memory MetaSchedule database with every readable record of ``dirs``, and the
    number of records."""
    database = ms.database.MemoryDatabase()
    count = 0
    for path in dirs:
        for record in RecordStore(path, warn).read():
            workload = database.commit_workload(record.workload.mod)
            database.commit_tuning_record(ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target, record.args_info))
            count += 1
    return database, count


def list_stores() -> list[StoreSummary]:
    root = tuning_root()
    if not root.is_dir():
        return []
    return [RecordStore(p).summary() for p in sorted(root.iterdir()) if p.is_dir()]


def clear_cache() -> int:
    """Remove every record directory of the cache; returns how many were removed."""
    root = tuning_root()
    if not root.is_dir():
        return 0
    removed = 0
    for path in root.iterdir():
        if path.is_dir():
            with RecordStore(path)._locked(fcntl.LOCK_EX):  # not while a tuning run merges
                shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
