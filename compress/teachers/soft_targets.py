"""The ensemble teacher and its soft targets: the mean of the members' softmax(z / T), computed once per
(members, transfer set, T) and cached as a memory-mapped ``.npy`` with its checksum. The rows are computed
in fixed-size shards, shared out among the ``torchrun`` processes; a killed run resumes shard by shard."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np

from compress.core.atomic import write_text
from compress.core.cache import cache_dir, content_key, one_line, read_verified, write_entry
from compress.core.errors import InputError
from compress.teachers.ensemble import ensemble_probs

if TYPE_CHECKING:
    from compress.teachers.member import Teacher

log = logging.getLogger("compress.cache")
T = TypeVar("T")


def soft_targets(members: list[Teacher], x: np.ndarray, temperature: float, data_key: str, *,
                 rank: int | None = None, world: int | None = None,
                 on_shard: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, bool]:
    """Ensemble soft targets for the transfer set, computed once and cached as a memory-mapped .npy.

    The key is (member fingerprints, transfer-set content hash, T): changing any of them recomputes.
    Returns (read-only memmap, whether it came from the cache). The entry's checksum is verified on every
    read: a damaged one is recomputed. When the cache cannot be written (disk full), the targets are
    returned from memory (read-only) instead.

    The rows are computed in shards of ``shard_rows()`` rows (``$COMPRESS_SOFT_TARGET_SHARD_ROWS``, default
    4096: a multiple of the members' inference batches, so the bits are those of one pass over the set).
    Under ``torchrun`` (``rank``/``world``, by default those of the initialized process group) every process
    computes its contiguous share of the missing shards on its own members (on its GPU when they were loaded
    there) and writes them into the one shared file; a single process is world size 1 of the same code.
    An interrupted run resumes shard by shard, whatever the world size. ``on_shard(done, total)`` follows
    this process's shards. See ``_Shards`` for the files.
    """
    if rank is None or world is None:
        rank, world = _process_group()
    key = content_key("soft-targets", [m.fingerprint for m in members], data_key, float(temperature))
    path = cache_dir("soft-targets") / f"{key[:32]}.npy"
    shards = _Shards(path, len(x), shard_rows())
    group = _Group(rank, world)

    def load(p: Path) -> np.ndarray:
        return load_targets(p, len(x))

    def compute(i: int) -> np.ndarray:
        a, b = shards.bounds[i]
        try:
            probs = ensemble_probs(members, x[a:b], temperature)
        except InputError as exc:
            if len(shards.bounds) == 1:
                raise
            raise InputError(f"transfer-set rows {a}..{b - 1} (of {len(x)}): {exc}") from None
        if not np.isfinite(probs).all():
            raise InputError("teacher ensemble: soft targets contain NaN or infinity; expected finite probabilities")
        return probs

    def make_plan() -> dict:
        targets = read_verified(path, load)
        if targets is None:
            return shards.plan(load)
        if shards.folder.is_dir():  # left by a run killed as it finished
            shutil.rmtree(shards.folder, ignore_errors=True)
        return {"state": "cached"}

    try:
        plan = group.from_rank0(make_plan)
        if plan["state"] == "cached":
            return load(path), True  # verified by rank 0 just now
        if plan["state"] == "memory":
            return _in_memory(compute, len(shards.bounds)), False
        return _compute_shards(shards, plan, compute, group, on_shard), False
    finally:
        if rank == 0:
            shards.unlock()


def load_targets(path: Path, rows: int) -> np.ndarray:
    """A soft-target ``.npy`` (read-only memmap, no pickles) that holds float32 (``rows``, classes); a
    ValueError otherwise (``read_verified`` then discards it and the caller computes it again)."""
    targets = np.load(path, mmap_mode="r", allow_pickle=False)
    if targets.ndim != 2 or len(targets) != rows or targets.dtype != np.float32:
        raise ValueError(f"holds {targets.dtype} {tuple(targets.shape)}, expected float32 ({rows}, classes)")
    return targets


SHARD_ROWS_ENV = "COMPRESS_SOFT_TARGET_SHARD_ROWS"
DEFAULT_SHARD_ROWS = 4096


def shard_rows() -> int:
    """Rows per soft-target shard: ``$COMPRESS_SOFT_TARGET_SHARD_ROWS`` when set, else 4096. Fixed whatever
    the world size, so a run resumed with another number of processes reuses the finished shards."""
    text = os.environ.get(SHARD_ROWS_ENV, "").strip()
    if not text:
        return DEFAULT_SHARD_ROWS
    try:
        rows = int(text)
    except ValueError:
        rows = 0
    if rows < 1:
        raise InputError(f"{SHARD_ROWS_ENV}={text!r}: expected an integer >= 1 (rows per soft-target shard)")
    return rows


def _process_group() -> tuple[int, int]:
    """(rank, world size) of the initialized ``torch.distributed`` group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Group:
    """The few collectives the shards need; world size 1 needs none (a single process imports no
    ``torch.distributed`` here)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def broadcast(self, obj):
        """``obj`` of rank 0, on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_rank0(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0, its result on every rank. When it raises, rank 0 raises that and the
        others an error naming it: no process is left waiting for the others."""
        if self.rank == 0:
            try:
                value = fn()
            except Exception as exc:
                self.broadcast((False, one_line(exc)))
                raise
            self.broadcast((True, value))
            return value
        ok, value = self.broadcast(None)
        if not ok:
            raise InputError(f"soft targets: process 0 failed: {value}")
        return value

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank (also a barrier)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


class _Shards:
    """The files of one soft-target entry ``<key>.npy`` while it is computed, in ``<key>.shards/``:

    - ``targets.npy``: the rows being written (the temporary name of the entry), a float32 ``.npy``
      created by rank 0 with ``np.lib.format.open_memmap`` and written in place by every process;
    - ``rows-<start>-<stop>.sha256``: one per finished shard, the sha256 of its rows' bytes, written only
      after the rows are flushed: the "done" marker a resumed run checks before reusing the shard.

    When every shard is done, rank 0 checks each shard against its digest, moves the file into place as
    the entry with its checksum (``write_entry``), writes ``<key>.shards.json`` beside it (which process
    computed which shards, which were reused) and removes the folder. Rank 0 holds an ``flock`` on
    ``<key>.shards/lock`` meanwhile, so two runs computing the same entry take turns (the second then
    reuses it).
    """

    def __init__(self, entry: Path, rows: int, shard_rows: int):
        self.entry, self.rows, self.shard_rows = entry, rows, shard_rows
        self.folder = entry.with_name(entry.stem + ".shards")
        self.partial = self.folder / "targets.npy"
        self.record = entry.with_name(entry.stem + ".shards.json")
        self.bounds = [(a, min(a + shard_rows, rows)) for a in range(0, rows, shard_rows)] or [(0, 0)]
        self._lock: int | None = None

    def marker(self, i: int) -> Path:
        a, b = self.bounds[i]
        return self.folder / f"rows-{a:010d}-{b:010d}.sha256"

    # --- rank 0 ------------------------------------------------------------------------------------------

    def plan(self, load: Callable[[Path], np.ndarray]) -> dict:
        """Rank 0, before any shard is computed: lock the folder, then which shards a killed run finished
        (a marker whose digest matches the rows in the file) and the file's class count (None: no file
        yet). ``{"state": "cached"}`` when another run finished the entry meanwhile; ``"memory"`` when the
        cache cannot be written (one warning line: the rows are then computed in memory)."""
        from compress.core.atomic import clean_stale

        try:
            self._acquire()
            targets = read_verified(self.entry, load)  # finished by another run while this one waited
            if targets is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                return {"state": "cached"}
            clean_stale(self.folder)
            classes, digests = self._finished(), {}
            if classes is not None:
                view = np.load(self.partial, mmap_mode="r", allow_pickle=False)
                for i, (a, b) in enumerate(self.bounds):
                    recorded = _digest(self.marker(i))
                    if recorded is not None and recorded == _sha256(view[a:b]):
                        digests[i] = recorded
                del view
            expected = {self.marker(i).name for i in digests}
            for stale in self.folder.glob("rows-*.sha256"):  # damaged, or from another shard size
                if stale.name not in expected:
                    stale.unlink()
            return {"state": "compute", "done": sorted(digests), "digests": digests, "classes": classes}
        except OSError as exc:
            return self._unwritable(exc)

    def _finished(self) -> int | None:
        """The class count of the partial file when it fits this entry; a misfit one is removed."""
        if not self.partial.is_file():
            return None
        try:
            view = np.load(self.partial, mmap_mode="r", allow_pickle=False)
            if view.ndim == 2 and len(view) == self.rows and view.dtype == np.float32:
                return int(view.shape[1])
        except (ValueError, OSError, EOFError):
            pass
        self.partial.unlink()
        return None

    def create(self, classes: int) -> dict | None:
        """Rank 0: the partial file, full size on disk at once (so a full disk is an error here, not a
        SIGBUS in the middle of a memory-mapped write). None when done; else the "memory" plan."""
        try:
            out = np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.float32, shape=(self.rows, classes))
            size = out.offset + out.nbytes
            del out
            if hasattr(os, "posix_fallocate"):
                fd = os.open(self.partial, os.O_RDWR)
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                finally:
                    os.close(fd)
        except OSError as exc:
            return self._unwritable(exc)
        return None

    def finish(self, digests: dict[int, str], compute: Callable[[int], np.ndarray], record: dict) -> bool:
        """Rank 0, every shard written: check each against its digest (a shard whose rows are not what was
        computed is recomputed here), then move the file into place with its checksum. False when the
        entry cannot be written (the partial file stays, complete, for the next run)."""
        out = np.lib.format.open_memmap(self.partial, mode="r+")
        for i, (a, b) in enumerate(self.bounds):
            if _sha256(out[a:b]) != digests[i]:
                log.warning("cache: soft-target rows %d..%d in %s do not match their digest; recomputing them",
                            a, b - 1, self.partial)
                probs = compute(i)
                out[a:b] = probs
                out.flush()
                write_text(self.marker(i), _sha256(probs) + "\n")
        del out

        def move(tmp: Path) -> None:  # a link: the partial file stays until the entry is in place
            try:
                os.link(self.partial, tmp)
            except OSError:
                shutil.copyfile(self.partial, tmp)

        if not write_entry(self.entry, move):
            return False
        try:
            write_text(self.record, json.dumps(record) + "\n")
        except OSError as exc:
            log.warning("cache: cannot write %s (%s)", self.record, one_line(exc))
        shutil.rmtree(self.folder, ignore_errors=True)
        return True

    def _unwritable(self, exc: OSError) -> dict:
        log.warning("cache: cannot write %s (%s); continuing without caching it", self.entry, one_line(exc))
        shutil.rmtree(self.folder, ignore_errors=True)
        return {"state": "memory"}

    def _acquire(self) -> None:
        """An exclusive ``flock`` on ``<key>.shards/lock`` (created when missing; not the folder itself,
        which ``write_text`` locks briefly for every marker); retried when the folder was removed (a
        finishing run) while this one waited."""
        import fcntl

        lock = self.folder / "lock"
        while True:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.path.samestat(os.fstat(fd), os.stat(lock)):
                    self._lock = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing releases the lock
            self._lock = None


def _compute_shards(shards: _Shards, plan: dict, compute: Callable[[int], np.ndarray], group: _Group,
                    on_shard: Callable[[int, int], None] | None) -> np.ndarray:
    """Every rank: its contiguous share of the missing shards, written into the shared file."""
    done, n = plan["done"], len(shards.bounds)
    missing = sorted(set(range(n)) - set(done))
    mine = missing[group.rank * len(missing) // group.world:(group.rank + 1) * len(missing) // group.world]
    first, classes = None, plan["classes"]
    computed: dict[int, str] = {}
    error: BaseException | None = None
    if classes is None:  # no file yet: the first shard (in memory) says how many classes it holds
        try:
            first = compute(mine[0]) if mine else None
        except Exception as exc:
            error = exc
        seen = group.gather((None if first is None else first.shape[1], _failure(error)))
        _raise_any([f for _, f in seen], error, group.rank)
        classes = next(c for c, _ in seen if c is not None)
        if group.from_rank0(lambda: shards.create(classes)) is not None:
            return _in_memory(compute, n)
    if on_shard:
        on_shard(0, len(mine))
    try:
        out = np.lib.format.open_memmap(shards.partial, mode="r+")
        for i in mine:
            probs = first if first is not None and i == mine[0] else compute(i)
            a, b = shards.bounds[i]
            out[a:b] = probs
            out.flush()
            computed[i] = _sha256(probs)
            write_text(shards.marker(i), computed[i] + "\n")  # the shard is done: a resumed run keeps it
            if on_shard:
                on_shard(len(computed), len(mine))
        del out
    except Exception as exc:
        error = exc
    results = group.gather((computed, _failure(error)))
    log.info("soft targets: rank %d computed shards %s", group.rank, sorted(computed))
    _raise_any([f if f is None or f[0] != "OSError" else None for _, f in results], error, group.rank)
    if any(f is not None for _, f in results):  # the cache could not be written (disk full)
        if group.rank == 0:
            log.warning("cache: cannot write %s (%s); continuing without caching it", shards.entry,
                        next(f[1] for _, f in results if f is not None))
        return _in_memory(compute, n)

    def finish() -> bool:
        digests = {**plan["digests"], **{i: d for part, _ in results for i, d in part.items()}}
        record = {"entry": shards.entry.name, "rows": shards.rows, "classes": classes,
                  "shard_rows": shards.shard_rows, "shards": n, "world_size": group.world, "reused": sorted(done),
                  "computed_by_rank": {str(r): sorted(part) for r, (part, _) in enumerate(results)}}
        try:
            return shards.finish(digests, compute, record)
        except OSError as exc:
            log.warning("cache: cannot write %s (%s); continuing without caching it", shards.entry, one_line(exc))
            return False

    ok = group.from_rank0(finish)
    return np.load(shards.entry if ok else shards.partial, mmap_mode="r", allow_pickle=False)


def _in_memory(compute: Callable[[int], np.ndarray], n: int) -> np.ndarray:
    """Every shard computed here, in memory (the cache cannot be written); read-only."""
    probs = np.concatenate([compute(i) for i in range(n)])
    probs.flags.writeable = False
    return probs


def _failure(exc: BaseException | None) -> tuple[str, str] | None:
    return None if exc is None else ("OSError" if isinstance(exc, OSError) else type(exc).__name__, one_line(exc))


def _raise_any(failures: list, error: BaseException | None, rank: int) -> None:
    """After a gather of every rank's failure (None: none, or one that does not count): a rank that failed
    raises its own error again; the others raise an error naming the first process that failed."""
    if failures[rank] is not None and error is not None:
        raise error
    for r, failure in enumerate(failures):
        if failure is not None:
            raise InputError(f"soft targets: process {r} failed computing its shards: {failure[1]}")


def _sha256(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()


def _digest(marker: Path) -> str | None:
    try:
        return marker.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None
