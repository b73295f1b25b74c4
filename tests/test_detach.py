"""spawn_detached(): a daemon that is an orphan in its own session, with nothing of ours."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from zombiereaper import Reaper, _linux

from .helpers import STANDARD_SIGNALS, eventually, proc_status, py, sh, zombie_children

pytestmark = pytest.mark.skipif(
    not _linux.can_be_subreaper(), reason="needs a subreaper to take the daemons back"
)

# Runs in a child of the test process, which is a subreaper for the run: the daemon started
# here must end up as the test process's child, not this script's.
CALLER = r"""
import json, os, signal, sys
from zombiereaper import Reaper

signal.signal(signal.SIGHUP, signal.SIG_IGN)                 # nohup-style: not for the daemon
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})    # a blocked mask: neither
stray = os.open("/dev/null", os.O_RDONLY)
os.set_inheritable(stray, True)                               # an inheritable fd: neither
daemon = Reaper().spawn_detached(["sleep", "60"])
print(json.dumps({"daemon": daemon, "caller": os.getpid()}), flush=True)
"""


def _kill_and_reap(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # ours: the test process is the subreaper it was reparented to


def test_daemon_is_an_orphan_in_a_session_of_its_own() -> None:
    """The daemon is reparented away from its caller, leads a new session, and starts clean."""
    out = subprocess.run(
        [sys.executable, "-c", CALLER], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    info = json.loads(out)
    daemon = info["daemon"]
    try:
        proc = psutil.Process(daemon)
        assert proc.ppid() == os.getpid() != info["caller"]  # the nearest subreaper adopted it
        assert os.getsid(daemon) == daemon
        assert os.getpgid(daemon) == daemon
        assert proc.cwd() == "/"
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{daemon}/fd"))
        assert fds == [0, 1, 2]
        assert {os.readlink(f"/proc/{daemon}/fd/{fd}") for fd in fds} == {"/dev/null"}
        fields = proc_status(daemon)
        assert int(fields["SigBlk"], 16) == 0
        assert int(fields["SigIgn"], 16) & STANDARD_SIGNALS == 0
        assert proc.cmdline() == ["sleep", "60"]
    finally:
        _kill_and_reap(daemon)


def test_no_intermediate_zombie_and_nothing_left_on_failure(tmp_path: Path) -> None:
    """The intermediate is reaped at once; a program that cannot run raises, leaving nothing."""
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(0o644)
    reaper = Reaper()
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(FileNotFoundError) as info:
        reaper.spawn_detached(["/nonexistent/zombiereaper-daemon"])
    assert "zombiereaper-daemon" in str(info.value)
    with pytest.raises(FileNotFoundError):
        reaper.spawn_detached(["no-such-program-on-path-zr"])
    with pytest.raises(PermissionError):
        reaper.spawn_detached([str(not_executable)])
    assert {p.pid for p in psutil.Process().children()} == before
    assert not zombie_children()


def test_output_redirected_to_a_file_arrives(tmp_path: Path) -> None:
    """stdout/stderr given as files reach the daemon; cwd and env are applied."""
    out_path = tmp_path / "out.txt"
    (tmp_path / "work").mkdir()
    with Reaper(scope="all", subreaper=True) as reaper, out_path.open("w") as out:
        pid = reaper.spawn_detached(
            sh('pwd; echo "$ZR_GREETING"; echo oops >&2'),
            cwd=tmp_path / "work",
            env={"ZR_GREETING": "hello", "PATH": os.environ["PATH"]},
            stdout=out,
            stderr=out,
        )
        assert reaper.wait(pid, timeout=10).success
    assert out_path.read_text().split() == [str(tmp_path / "work"), "hello", "oops"]


def test_pass_fds_are_inherited_and_nothing_else() -> None:
    """Only the descriptors in pass_fds reach the daemon, whatever else is inheritable here."""
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    os.set_inheritable(other_write, True)
    report = f"import os; os.write({write_end}, ' '.join(os.listdir('/proc/self/fd')).encode())"
    try:
        with Reaper(scope="all", subreaper=True) as reaper:
            pid = reaper.spawn_detached(py(report), pass_fds=(write_end,))
            assert reaper.wait(pid, timeout=10).success
        os.close(write_end)
        seen = {int(fd) for fd in os.read(read_end, 1000).split()}
    finally:
        for fd in (read_end, other_read, other_write):
            os.close(fd)
    # Python's own listing of /proc/self/fd holds one more descriptor while it reads.
    assert {0, 1, 2, write_end} <= seen
    assert other_write not in seen
    assert len(seen - {0, 1, 2, write_end}) <= 1


def test_a_subreaper_takes_the_daemon_back_and_waits_for_its_real_code() -> None:
    """Under Reaper(scope='all', subreaper=True), wait(daemon) returns the daemon's real code."""
    with Reaper(scope="all", subreaper=True) as reaper:
        pid = reaper.spawn_detached(sh("exit 23"))
        assert reaper.wait(pid, timeout=10).returncode == 23
        eventually(lambda: reaper.status(pid) is not None, what="the daemon to be recorded")
        eventually(lambda: not os.path.exists(f"/proc/{pid}"), what="the daemon to be reaped")
        assert reaper.registry[pid].returncode == 23


def test_bad_arguments_are_refused() -> None:
    """An empty command or a bad descriptor raises ValueError before anything starts."""
    with pytest.raises(ValueError, match="empty"):
        Reaper().spawn_detached([])
    with pytest.raises(ValueError, match="pass_fds"):
        Reaper().spawn_detached(["true"], pass_fds=(-1,))
