"""The extraction pipeline: rows -> encoder -> a features file, resumable and shardable.

Rows are split into fixed chunks of whole batches. Each finished chunk is committed as its own
small file (written to a temporary name, synced, then renamed) in a hidden ``.NAME.parts``
folder beside the output, next to a ``state.json`` that records what is being extracted.
A killed run (even SIGKILL) loses at most the chunk in flight: the same command lists the
committed chunks, says "resuming from row K of N" and encodes only the rest. When every chunk
is there, the chunks are merged into the output through the store, which writes it atomically
and marks it complete last; then the parts folder is removed.

One extraction at a time writes an output: rank 0 holds an exclusive ``flock`` on a hidden
``.NAME.lock`` beside it for the whole run (:func:`output_lock`), so a second run into the same
output is refused at once instead of sharing, and removing, the parts folder of the first.

Under torchrun every rank takes a disjoint contiguous range of chunks (its shard), so the
merged file has exactly the rows, order and values of a single-process run. Batches never
straddle chunks and start at the same rows whatever the number of ranks, so each image is
encoded in the same batch either way.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glacli import store
from glacli.devices import resolve_device
from glacli.encoders import DecodeError, Encoder
from glacli.errors import GlaInputError
from glacli.sources import Locator, Rows, read_bytes

DTYPES = {"float16": np.float16, "float32": np.float32}
STATE_FILE = "state.json"
FINGERPRINT_KEYS = ("encoder", "model", "pretrained", "source", "source_kind", "split", "root", "shots",
                    "seed", "classnames_file", "rows_digest", "dtype")
"""Attributes that must agree for a run to resume, or for an existing output to count as done."""


@dataclass
class ExtractOptions:
    batch_size: int = 128
    workers: int = 4
    dtype: str = "float16"
    commit_rows: int = 4096
    """Rows per committed chunk (rounded up to whole batches): the most work a kill can lose."""
    skip_bad: bool = False
    overwrite: bool = False
    decode_on_device: bool = False


@dataclass
class ExtractResult:
    path: Path
    n_rows: int = 0
    n_skipped: int = 0
    resumed_from: int = 0
    encoded: int = 0
    seconds: float = 0.0
    already_complete: bool = False


@dataclass
class Reporter:
    """How the pipeline talks to the command layer (messages on stderr, a progress bar)."""

    message: Callable[[str], None] = lambda text: None
    start: Callable[[int], None] = lambda total: None
    advance: Callable[[int], None] = lambda n: None


# --------------------------------------------------------------------------- distributed


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run on its own)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_true(self, flag: bool) -> bool:
        """True only if ``flag`` is true on every rank (a collective: all ranks must call it)."""
        return self._reduce(int(flag), "min") == 1

    def any_true(self, flag: bool) -> bool:
        return self._reduce(int(flag), "max") == 1

    def _reduce(self, value: int, op: str) -> int:
        if self.world_size == 1:
            return value
        import torch.distributed as dist
        tensor = torch.tensor([value], device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
        return int(tensor.item())

    def close(self) -> None:
        if self.backend is not None:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def init_distributed(device: str) -> Distributed:
    """Join the torchrun job described by the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).

    Each rank uses ``cuda:LOCAL_RANK`` with NCCL when CUDA is wanted and present, else the CPU
    with gloo. Without torchrun this only resolves ``device``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=resolve_device(device))
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not use_cuda:
        resolve_device(device)  # raises the one-line "no CUDA device" error
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"), backend=backend)


# --------------------------------------------------------------------------- the output lock


_HELD_LOCKS: set[int] = set()
"""Descriptors of the output locks this process holds. A forked child (a DataLoader worker)
closes its copies, so a worker that outlives a killed run (stuck reading a file) holds no lock."""


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.NAME.lock`` beside ``output``; a second holder is refused at once.

    The file names the holder (pid, host, start time) for the refusal message. The kernel drops a
    flock when its process dies, even by SIGKILL, so a killed run leaves no stale lock: the file it
    leaves is simply taken by the next run, which resumes. The holder removes the file when done; a
    run that opened it just before then locks a removed file, notices, and opens the path again.
    """
    path = output.with_name(f".{output.name}.lock")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise GlaInputError(f"cannot create the lock file {path.name} ({exc.strerror})", output) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "starting"
            os.close(fd)
            raise GlaInputError(f"another extraction is writing this output ({holder}); wait for it to finish, "
                                f"or stop it and rerun this command to resume", output) from None
        except OSError as exc:
            os.close(fd)
            raise GlaInputError(f"cannot lock {path.name} ({exc.strerror}); the file system must support "
                                f"flock", output) from exc
        if _is_at(fd, path):
            break
        os.close(fd)
    _HELD_LOCKS.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        _HELD_LOCKS.discard(fd)
        os.close(fd)


def _is_at(fd: int, path: Path) -> bool:
    """True if ``path`` still names the file open as ``fd`` (its holder may have removed it meanwhile)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


# --------------------------------------------------------------------------- loading


class RowDataset(torch.utils.data.Dataset):
    """Row index -> (index, model input or None, error or None); never raises, so a bad file
    becomes a one-line error (or a skipped row) in the main process instead of a worker traceback."""

    def __init__(self, locators: list[Locator], load: Callable[[bytes], Any]):
        self.locators, self.load = locators, load

    def __len__(self) -> int:
        return len(self.locators)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        try:
            return index, self.load(read_bytes(self.locators[index])), None
        except OSError as exc:
            return index, None, f"cannot read file ({exc.strerror or exc})"
        except DecodeError as exc:
            return index, None, str(exc)


class Collate:
    """A batch of dataset items -> its rows, the inputs of the readable ones (stacked when they are
    same-shaped tensors) and the errors of the others."""

    def __init__(self, stack: bool):
        self.stack = stack

    def __call__(self, items: list[tuple[int, Any, str | None]]) -> dict[str, Any]:
        good = [(i, value) for i, value, error in items if error is None]
        inputs = [value for _, value in good]
        return {"rows": [i for i, _, _ in items],
                "good": [i for i, _ in good],
                "inputs": torch.stack(inputs) if self.stack and inputs else inputs,
                "bad": [(i, error) for i, _, error in items if error is not None]}


# --------------------------------------------------------------------------- the pipeline


def extract(rows: Rows, encoder: Encoder, output: str | Path, options: ExtractOptions,
            dist: Distributed | None = None, report: Reporter | None = None) -> ExtractResult:
    """Encode ``rows`` with ``encoder`` into the features file ``output`` (see the module docstring).

    Rank 0 takes the output's lock before it looks at the output and keeps it to the end; the
    other ranks of its job write their chunks under that lock.
    """
    with contextlib.ExitStack() as lock:
        return _extract(rows, encoder, Path(output), options, dist or Distributed(device=encoder.device),
                        report or Reporter(), lock)


def _extract(rows: Rows, encoder: Encoder, output: Path, options: ExtractOptions, dist: Distributed,
             report: Reporter, lock: contextlib.ExitStack) -> ExtractResult:
    say = report.message if dist.is_main else (lambda text: None)
    result = ExtractResult(output)
    if options.dtype not in DTYPES:
        raise GlaInputError(f"--dtype: expected float16 or float32, got {options.dtype!r}")
    if options.batch_size < 1 or options.commit_rows < 1 or options.workers < 0:
        raise GlaInputError("--batch-size and --commit-every must be positive, --workers at least 0")
    if rows.input_kind != encoder.input_kind:
        raise GlaInputError(f"the {encoder.backend} encoder reads {encoder.input_kind}s, but this source lists "
                            f"{rows.input_kind}s", rows.attrs.get("source"))
    attrs = {**rows.attrs, **encoder.describe(), "rows_digest": rows.digest(), "dtype": options.dtype}
    fingerprint = {k: attrs.get(k) for k in FINGERPRINT_KEYS}
    parts = output.with_name(f".{output.name}.parts")
    batch = options.batch_size
    chunk_rows = math.ceil(options.commit_rows / batch) * batch

    state: dict[str, Any] = {}
    error: GlaInputError | None = None
    if dist.is_main:
        try:
            store.check_output_path(output)
            lock.enter_context(output_lock(output))
            if _existing_output_is_done(output, fingerprint, options.overwrite):
                result.already_complete = True
                with store.open_h5(output) as f:
                    done = store.get_attrs(f)
                result.n_rows, result.n_skipped = int(done.get("n_images", 0)), int(done.get("n_skipped", 0))
            else:
                state = _open_parts(output, parts, fingerprint, len(rows), chunk_rows, encoder.dim, options.overwrite)
        except GlaInputError as exc:
            error = exc
    _raise_if_any_failed(dist, error)
    if dist.any_true(result.already_complete):
        result.already_complete = True
        say(f"{output} is already complete for this model and source; nothing to do")
        return result
    if not dist.is_main:
        state = json.loads((parts / STATE_FILE).read_text())
    chunk_rows = int(state["chunk_rows"])
    n_chunks = math.ceil(len(rows) / chunk_rows)
    mine = range(dist.rank * n_chunks // dist.world_size, (dist.rank + 1) * n_chunks // dist.world_size)
    committed = _committed_chunks(parts)
    committed_rows = sum(_chunk_bounds(c, chunk_rows, len(rows))[1] - _chunk_bounds(c, chunk_rows, len(rows))[0]
                         for c in committed)
    result.resumed_from = committed_rows
    if committed_rows:
        say(f"resuming from row {committed_rows} of {len(rows)}")
    pending = [c for c in mine if c not in committed]

    started = time.perf_counter()
    error = None
    try:
        result.encoded = _encode_chunks(rows, encoder, parts, pending, chunk_rows, options, dist, report)
    except GlaInputError as exc:
        error = exc
    _raise_if_any_failed(dist, error)
    result.seconds = time.perf_counter() - started

    error = None
    if dist.is_main:
        try:
            result.n_rows, result.n_skipped = _merge(parts, output, rows, n_chunks, chunk_rows, attrs, options)
            shutil.rmtree(parts, ignore_errors=True)
        except GlaInputError as exc:
            error = exc
    _raise_if_any_failed(dist, error)
    return result


def _raise_if_any_failed(dist: Distributed, error: GlaInputError | None) -> None:
    if not dist.all_true(error is None):
        raise error or GlaInputError("stopped because another rank failed (see its message)")


def _encode_chunks(rows: Rows, encoder: Encoder, parts: Path, chunks: list[int], chunk_rows: int,
                   options: ExtractOptions, dist: Distributed, report: Reporter) -> int:
    """Encode and commit ``chunks``; returns how many rows were encoded."""
    n = len(rows)
    batches = [list(range(b, min(b + options.batch_size, stop)))
               for c in chunks for start, stop in [_chunk_bounds(c, chunk_rows, n)]
               for b in range(start, stop, options.batch_size)]
    total = sum(len(b) for b in batches)
    if dist.is_main:
        report.start(total)
    if not batches:
        return 0
    decode_on_device = options.decode_on_device and encoder.device.type == "cuda"
    stack = encoder.input_kind == "image" and not decode_on_device
    loader = torch.utils.data.DataLoader(
        RowDataset(rows.locators, encoder.loader(decode_on_device)), batch_sampler=batches,
        num_workers=options.workers, collate_fn=Collate(stack), pin_memory=encoder.device.type == "cuda",
        prefetch_factor=4 if options.workers else None, persistent_workers=False)
    dtype = DTYPES[options.dtype]
    chunk: _ChunkBuffer | None = None
    for item in loader:
        bad = list(item["bad"])
        good = item["good"]
        features = None
        if good:
            inputs, failed = encoder.prepare(item["inputs"], decode_on_device)
            if failed:
                bad += [(good[k], "cannot decode image on the device") for k in failed]
                good = [i for k, i in enumerate(good) if k not in failed]
            if good:
                features = encoder.encode_batch(inputs).to("cpu", dtype=torch.float32).numpy()
        if bad and not options.skip_bad:
            index, message = bad[0]
            raise GlaInputError(f"{message}; use --skip-bad to leave unreadable images out",
                                _where(rows, index))
        first = item["rows"][0]
        if chunk is None or not chunk.start <= first < chunk.stop:
            c = first // chunk_rows
            chunk = _ChunkBuffer(c, *_chunk_bounds(c, chunk_rows, n), encoder.dim, dtype)
        if features is not None:
            chunk.put(np.asarray(good), features)
        chunk.seen += len(item["rows"])
        if chunk.seen == chunk.stop - chunk.start:
            chunk.commit(parts)
        if dist.is_main:
            report.advance(len(item["rows"]))
    return total


@dataclass
class _ChunkBuffer:
    index: int
    start: int
    stop: int
    dim: int
    dtype: Any
    seen: int = 0
    features: np.ndarray = field(init=False)
    ok: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.features = np.zeros((self.stop - self.start, self.dim), dtype=self.dtype)
        self.ok = np.zeros(self.stop - self.start, dtype=bool)

    def put(self, rows: np.ndarray, features: np.ndarray) -> None:
        self.features[rows - self.start] = features
        self.ok[rows - self.start] = True

    def commit(self, parts: Path) -> None:
        """Write the chunk under a temporary name, sync it, and rename it into place (atomic)."""
        with store.atomic_output(parts / _chunk_name(self.index)) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=self.features[self.ok], ok=self.ok)
            f.flush()
            os.fsync(f.fileno())


def _where(rows: Rows, index: int) -> str:
    locator = rows.locators[index]
    return locator if isinstance(locator, str) else rows.ids[index]


def _chunk_name(index: int) -> str:
    return f"chunk-{index:08d}.npz"


def _chunk_bounds(index: int, chunk_rows: int, n_rows: int) -> tuple[int, int]:
    return index * chunk_rows, min((index + 1) * chunk_rows, n_rows)


def _committed_chunks(parts: Path) -> set[int]:
    return {int(p.stem.split("-")[1]) for p in parts.glob("chunk-*.npz")}


def _existing_output_is_done(output: Path, fingerprint: dict[str, Any], overwrite: bool) -> bool:
    """True if ``output`` is a complete features file of the same extraction; refuse any other file."""
    if not output.exists() or overwrite:
        return False
    try:
        with store.open_h5(output) as f:
            attrs = store.get_attrs(f)
    except GlaInputError:
        attrs = {}
    complete = attrs.get("gla_kind") == "features" and bool(attrs.get(store.COMPLETE_ATTR))
    differs = _differences(fingerprint, attrs)
    if complete and not differs:
        return True
    what = f"holds features of a different extraction ({differs[0]})" if complete and differs else \
        "already exists and is not a complete features file of this extraction"
    raise GlaInputError(f"{what}; use --overwrite to replace it", output)


def _differences(fingerprint: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    def norm(value: Any) -> Any:
        return "" if value is None else value
    return [f"{k}: {norm(recorded.get(k))!r} here, {norm(v)!r} now" for k, v in fingerprint.items()
            if norm(recorded.get(k)) != norm(v)]


def _open_parts(output: Path, parts: Path, fingerprint: dict[str, Any], n_rows: int, chunk_rows: int, dim: int,
                overwrite: bool) -> dict[str, Any]:
    """Create the parts folder of a new run, or return the state of the unfinished run of this same
    extraction in it; an unfinished run of something else is discarded only with ``overwrite``."""
    state = {"fingerprint": fingerprint, "n_rows": n_rows, "chunk_rows": chunk_rows, "dim": dim}
    state_path = parts / STATE_FILE
    if parts.exists() and not _committed_chunks(parts):
        shutil.rmtree(parts)  # an earlier run stopped before committing anything: nothing to keep
    if parts.exists():
        try:
            previous = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
        same = previous is not None and previous.get("n_rows") == n_rows and previous.get("dim") == dim \
            and not _differences(fingerprint, previous.get("fingerprint", {}))
        if same:  # the same extraction, even with --overwrite: resume it
            for tmp in parts.glob(".*.tmp-*"):  # left by a kill during a commit
                tmp.unlink()
            return previous
        if not overwrite:
            differs = _differences(fingerprint, previous.get("fingerprint", {})) if previous else ["unreadable state"]
            raise GlaInputError(f"an unfinished extraction of something else is in {parts} "
                                f"({(differs or ['row count'])[0]}); use --overwrite to discard it", output)
        shutil.rmtree(parts)
    parts.mkdir()
    store.write_text_atomic(state_path, json.dumps(state, indent=1))
    return state


def _merge(parts: Path, output: Path, rows: Rows, n_chunks: int, chunk_rows: int, attrs: dict[str, Any],
           options: ExtractOptions) -> tuple[int, int]:
    """Concatenate the committed chunks into ``output`` (atomic, complete last); returns (rows, skipped)."""
    ok = np.concatenate([np.load(parts / _chunk_name(c))["ok"] for c in range(n_chunks)])
    skipped = np.flatnonzero(~ok)
    if len(skipped) and not options.skip_bad:
        raise GlaInputError(f"{len(skipped)} images were left out by an earlier --skip-bad run "
                            f"(first: {rows.ids[skipped[0]]}); add --skip-bad or --overwrite", output)
    n_ok = int(ok.sum())
    if not n_ok:
        raise GlaInputError("no image could be read", attrs.get("source"))
    dim = int(json.loads((parts / STATE_FILE).read_text())["dim"])
    attrs = {**attrs, "n_images": n_ok, "n_skipped": len(skipped)}
    with store.atomic_h5(output, "features", (), attrs) as f:
        store.write_strings(f, "classnames", rows.classnames)
        sink = store.RowSink(f, "features", n_ok, dim, DTYPES[options.dtype])
        position = 0
        for c in range(n_chunks):
            start = _chunk_bounds(c, chunk_rows, len(rows))[0]
            with np.load(parts / _chunk_name(c)) as data:
                kept = np.flatnonzero(data["ok"]) + start
                values = data["features"]
            if len(kept):
                sink.write(position, values, rows.labels[kept], [rows.ids[i] for i in kept])
                position += len(kept)
        store.write_strings(f, "skipped", [rows.ids[i] for i in skipped])
    return n_ok, len(skipped)

