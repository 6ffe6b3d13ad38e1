"""Outputs and damaged inputs as a user meets them: every command checks its outputs before any work, a file
system that refuses a write is one line naming the output (never the temporary, never ``None``), a rerun
removes the temporaries of killed writers, an HDF5 read error is one line naming the file, and two runs
of ``evaluate`` never interleave their outputs.

The read-only file system is real (an empty tmpfs mounted read-only in a private mount namespace, by
``unshare``); the unwritable folder is real too (the command runs as ``nobody`` through ``setpriv``).
Each skips, saying why, where the machine cannot provide it.
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, subprocess_env
from synth import biased_logits, classnames, write_features, write_logits_file

from glacli.base.errors import GlaInputError
from glacli.base.types import Head, Prior
from glacli.io.h5file import COMPLETE_ATTR, provenance_attrs, set_attrs, write_strings
from glacli.io.outputs import atomic_output, writer_lock
from glacli.io.paramfile import write_head, write_prior

C = 4


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """Small valid inputs of every command that writes a gla file, in ``tmp_path / "in"``."""
    folder = tmp_path / "in"
    folder.mkdir()
    z, y, _ = biased_logits(20, C, seed=3)
    zs = write_logits_file(folder / "zs.h5", z, y, head_type="zeroshot")
    write_prior(folder / "q.h5", Prior(prior=np.full(C, 1 / C), classnames=classnames(C), temperature=1.0,
                                       method="nll"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    train = write_features(folder / "train.h5", x, np.arange(40) % C)
    write_head(folder / "head.h5", Head(weight=rng.normal(size=(C, 8)).astype(np.float32),
                                        bias=np.zeros(C, np.float32), classnames=classnames(C),
                                        head_type="zeroshot"))
    np.save(folder / "z.npy", z)
    return {"zs": zs, "q": folder / "q.h5", "train": train, "head": folder / "head.h5", "npy": folder / "z.npy"}


WRITERS = {
    "estimate-prior": ["estimate-prior", "{zs}", "-o", "{out}/q.h5", "--device", "cpu"],
    "estimate-target": ["estimate-target", "{zs}", "-o", "{out}/t.h5"],
    "combine": ["combine", "--zeroshot", "{zs}", "--prior", "{q}", "-o", "{out}/d.h5"],
    "calibrate": ["calibrate", "{zs}", "--val", "{zs}", "-o", "{out}/c.h5"],
    "fit": ["fit", "{train}", "--wd", "1e-3", "-o", "{out}/h.h5", "--device", "cpu"],
    "import": ["import", "{npy}", "--kind", "logits", "-o", "{out}/i.h5"],
    "logits": ["logits", "{train}", "{head}", "-o", "{out}/l.h5"],
    "subset": ["subset", "{train}", "--shots", "2", "--seed", "0", "-o", "{out}/s.h5"],
    "export": ["export", "{zs}", "-o", "{out}/e.npy"],
    "evaluate --json-out": ["evaluate", "{zs}", "--json-out", "{out}/r.json"],
    "evaluate --plot": ["evaluate", "{zs}", "--plot", "{out}/r.png"],
}
"""One run of each command that writes, its outputs in the folder ``{out}``."""


def command(name: str, inputs: dict[str, Path], out: Path) -> list[str]:
    return [a.format(out=out, **inputs) for a in WRITERS[name]]


def output_of(args: list[str]) -> str:
    """The output path of a run (the value after -o, --json-out or --plot)."""
    return next(args[i + 1] for i, a in enumerate(args) if a in ("-o", "--json-out", "--plot"))


def gla_child(args: list[str], *prefix: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "glacli", *args], capture_output=True, text=True,
                          env=subprocess_env(), cwd=ROOT, timeout=300)


def assert_child_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr[-2000:])
    assert lines[0].startswith("gla: error: ") and "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert ".tmp-" not in lines[0] and "None" not in lines[0], lines[0]


def leftovers(folder: Path, before: set[str] = frozenset()) -> list[str]:
    return sorted(set(os.listdir(folder)) - set(before))


# --------------------------------------------------------------------------- outputs checked first


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_command_refuses_an_unwritable_output_before_reading_its_inputs(gla, tmp_path, name):
    """``fit -o DIR`` used to fit first: now every output is refused when parsed, before any input is read
    (the inputs here do not even exist)."""
    missing = {key: tmp_path / "missing" / f"{key}.h5" for key in ("zs", "q", "train", "head", "npy")}
    args = command(name, missing, tmp_path)
    args[args.index(output_of(args))] = str(tmp_path)  # the output is a folder
    assert_one_line_error(gla(*args), str(tmp_path), "is a directory")
    args[args.index(str(tmp_path))] = str(tmp_path / "no" / "out.h5")
    assert_one_line_error(gla(*args), "out.h5", "does not exist")
    assert leftovers(tmp_path) == []


def test_evaluate_refuses_one_file_as_both_json_and_figure(gla, inputs, tmp_path):
    out = tmp_path / "same.out"
    assert_one_line_error(gla("evaluate", inputs["zs"], "--json-out", out, "--plot", out), "same.out",
                          "two different outputs")
    assert leftovers(tmp_path) == ["in"]


# --------------------------------------------------------------------------- a file system that refuses


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -m` (a private mount namespace) to mount a "
                                                 "read-only file system")
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_read_only_file_system_is_one_line_naming_the_output(inputs, tmp_path, name):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    args = command(name, inputs, read_only)
    script = f'mount -t tmpfs -o ro tmpfs "{read_only}" && exec "$@"'
    done = gla_child(args, "unshare", "-m", "sh", "-c", script, "sh")
    assert_child_error(done, output_of(args), "read-only file system")


def _runs_as_nobody() -> bool:
    return shutil.which("setpriv") is not None and os.geteuid() == 0


@pytest.fixture
def world_readable_folder():
    """A folder that ``nobody`` can read (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="gla-perm-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.skipif(not _runs_as_nobody(), reason="needs root and setpriv to run a command as another user")
@pytest.mark.parametrize("name", ["estimate-prior", "evaluate --json-out", "import", "fit"])
def test_unwritable_folder_names_the_output_not_none_nor_the_temporary(inputs, world_readable_folder, name):
    for path in inputs.values():
        shutil.copy(path, world_readable_folder / path.name)
    local = {key: world_readable_folder / path.name for key, path in inputs.items()}
    locked = world_readable_folder / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    args = command(name, local, locked)
    done = gla_child(args, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    assert_child_error(done, output_of(args), "permission denied")
    assert leftovers(locked) == []


def test_a_failing_clean_up_does_not_hide_the_first_error(tmp_path, monkeypatch):
    """The write fails (EROFS) and so does the removal of the temporary: the user sees the first error,
    as one line naming the output."""
    out = tmp_path / "x.h5"
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if ".tmp-" in self.name:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(GlaInputError) as raised:
        with atomic_output(out) as tmp:
            raise OSError(errno.EROFS, "Read-only file system", str(tmp))
    assert str(raised.value) == f"{out}: cannot write (read-only file system)"
    monkeypatch.setattr(Path, "unlink", real_unlink)
    for path in tmp_path.iterdir():
        path.unlink()


# --------------------------------------------------------------------------- temporaries of killed writers


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_rerun_removes_the_temporaries_of_dead_writers_only(gla, inputs, tmp_path):
    out = tmp_path / "q.h5"
    host = socket.gethostname()
    dead = tmp_path / f".q.h5.tmp-{host}-{dead_pid()}-0123abcd.h5"
    alive = tmp_path / f".q.h5.tmp-{host}-{os.getpid()}-4567cdef.h5"
    other_host = tmp_path / f".q.h5.tmp-another-host-{dead_pid()}-89abcdef.h5"
    other_output = tmp_path / f".r.h5.tmp-{host}-{dead_pid()}-0123abcd.h5"
    for path in (dead, alive, other_host, other_output):
        path.write_bytes(b"partial")
    r = gla("estimate-prior", inputs["zs"], "-o", out, "--device", "cpu")
    assert r.code == 0, r.err
    assert not dead.exists()
    assert alive.exists() and other_host.exists() and other_output.exists()
    assert set(leftovers(tmp_path)) == {"in", out.name, alive.name, other_host.name, other_output.name}


def test_the_temporary_names_its_writer(tmp_path):
    with atomic_output(tmp_path / "a.json") as tmp:
        assert tmp.name.startswith(f".a.json.tmp-{socket.gethostname()}-{os.getpid()}-")
        assert tmp.suffix == ".json"
        tmp.write_text("{}")
    assert os.listdir(tmp_path) == ["a.json"]


# --------------------------------------------------------------------------- damaged inputs


def damaged_logits(path: Path) -> Path:
    """A complete-looking logits file whose compressed values cannot be decoded: reading them raises the
    HDF5 library's "Can't synchronously read data" (as a temporary of a killed writer can)."""
    z, y, _ = biased_logits(50, C, seed=4)
    with h5py.File(path, "w") as f:
        set_attrs(f, {**provenance_attrs("logits"), "temperature": 1.0})
        f.create_dataset("logits", data=z.astype(np.float32), chunks=(10, C), compression="gzip")
        f.create_dataset("labels", data=y)
        write_strings(f, "ids", [f"r{i}" for i in range(len(y))])
        write_strings(f, "classnames", classnames(C))
        f.attrs[COMPLETE_ATTR] = True
        chunks = [f["logits"].id.get_chunk_info(i) for i in range(f["logits"].id.get_num_chunks())]
    with open(path, "r+b") as fh:
        for chunk in chunks:
            fh.seek(chunk.byte_offset)
            fh.write(b"\xff" * chunk.size)
    return path


def killed_writer_temporary(folder: Path) -> Path:
    """The hidden temporary a writer leaves when it is killed half-way (SIGKILL)."""
    code = ("import os, signal, numpy as np\n"
            "from glacli.io.rowfile import write_rows\n"
            "with write_rows('out.h5', 'features', n_rows=4000, n_cols=64, classnames=['a', 'b']) as sink:\n"
            "    sink.write(0, np.ones((2000, 64), np.float32), np.zeros(2000, np.int64), ['x'] * 2000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code], cwd=folder, env=subprocess_env(), timeout=120)
    (temporary,) = folder.glob(".out.h5.tmp-*")
    return temporary


@pytest.mark.parametrize("args", [
    ["evaluate", "{bad}"],
    ["estimate-prior", "{bad}", "-o", "{out}/q.h5", "--device", "cpu"],
    ["estimate-target", "{bad}", "-o", "{out}/t.h5"],
    ["calibrate", "{good}", "--val", "{bad}", "-o", "{out}/c.h5"],
    ["combine", "--zeroshot", "{bad}", "--prior", "{q}", "-o", "{out}/d.h5"],
    ["export", "{bad}", "-o", "{out}/e.npy"],
], ids=lambda a: a[0])
def test_an_hdf5_read_error_is_one_line_naming_the_file(gla, inputs, tmp_path, args):
    bad = damaged_logits(tmp_path / "bad.h5")
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(bad=bad, good=inputs["zs"], q=inputs["q"], out=out) for a in args]
    assert_one_line_error(gla(*args), str(bad), "cannot be read")
    assert leftovers(out) == []


@pytest.mark.parametrize("args", [["info", "{tmp}"], ["evaluate", "{tmp}"], ["estimate-target", "{tmp}", "-o",
                                                                               "{out}/t.h5"]], ids=lambda a: a[0])
def test_a_killed_writers_temporary_given_as_input_is_one_line(gla, tmp_path, args):
    temporary = killed_writer_temporary(tmp_path)
    args = [a.format(tmp=temporary, out=tmp_path) for a in args]
    assert_one_line_error(gla(*args), str(temporary))


# --------------------------------------------------------------------------- two writers of one output


def test_a_second_evaluate_writing_the_same_outputs_is_refused(gla, inputs, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    with writer_lock(png):  # another run is writing r.png
        assert_one_line_error(gla("evaluate", inputs["zs"], "--json-out", out, "--plot", png),
                              str(png), "another gla run is writing this output", f"pid {os.getpid()}")
    assert leftovers(tmp_path) == ["in"]
    r = gla("evaluate", inputs["zs"], "--json-out", out, "--plot", png)
    assert r.code == 0, r.err
    assert leftovers(tmp_path) == ["in", "r.json", "r.png"]  # no lock file left behind


def test_the_writer_lock_is_dropped_when_its_holder_is_killed(tmp_path):
    out = tmp_path / "r.json"
    code = ("import os, signal\nfrom glacli.io.outputs import writer_lock\n"
            f"with writer_lock({str(out)!r}):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code], env=subprocess_env(), timeout=120)
    with writer_lock(out):
        pass
    assert leftovers(tmp_path) == []
