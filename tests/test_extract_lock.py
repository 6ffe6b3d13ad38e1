"""One extraction at a time per output: a second writer is refused, a killed one leaves no stale lock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import assert_one_line_error, blocked_extraction, subprocess_env
from tiny_clip import tiny_clip_fixture  # noqa: F401

from glacli.base.errors import GlaInputError
from glacli.io.extraction import output_lock
from glacli.io.rowfile import read_rows

HOLDER = """
import os, sys, time
from pathlib import Path
from glacli.io.extraction import output_lock
with output_lock(Path(sys.argv[1])):
    child = os.fork()  # as a DataLoader worker is forked
    if child == 0:
        time.sleep(300)
        os._exit(0)
    print(child, flush=True)
    time.sleep(300)
"""


def test_the_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    """Killed, the holder releases the lock at once, even while a process it forked lives on."""
    out = tmp_path / "out.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    child = None
    try:
        line = holder.stdout.readline()
        assert line, holder.stderr.read()
        child = int(line)
        with pytest.raises(GlaInputError) as info, output_lock(out):
            pass
        message = str(info.value)
        assert message.startswith(f"{out}: another extraction is writing this output (pid {holder.pid} on ")
        assert "rerun this command to resume" in message and "\n" not in message
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the forked process is still alive...
        with output_lock(out):  # ...and holds no lock
            assert (tmp_path / ".out.h5.lock").exists()
        assert not (tmp_path / ".out.h5.lock").exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
        holder.stderr.close()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.e2e(budget=30)
def test_a_second_extraction_into_a_running_ones_output_is_refused_and_a_killed_one_resumes(
        gla, tiny_clip, tmp_path):
    """Row 8 is a named pipe: the first run commits rows 0-7 and blocks reading it, holding the lock."""
    blocked = blocked_extraction(tmp_path, ["--model", str(tiny_clip.config), "--pretrained",
                                            str(tiny_clip.checkpoint), "--device", "cpu"])
    args, out, parts = blocked.args, blocked.output, blocked.parts

    first = blocked.start()
    try:
        committed = sorted(p.name for p in parts.iterdir())

        r = gla(*args)
        assert_one_line_error(r, str(out), f"another extraction is writing this output (pid {first.pid} on ")
        assert sorted(p.name for p in parts.iterdir()) == committed  # the running one's parts are untouched
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stderr.close()

    assert (tmp_path / ".out.h5.lock").exists()  # left by the kill, but no longer locked
    blocked.unblock()
    r = gla(*args)
    assert r.code == 0, r.err
    assert "resuming from row 8 of 12" in r.err
    assert not parts.exists() and not (tmp_path / ".out.h5.lock").exists()
    with read_rows(out, "features") as f:
        assert f.n_rows == 12
