"""What zombiereaper reads from /proc: a process's start time, whatever its name holds."""

from __future__ import annotations

import os
import subprocess

import pytest

from zombiereaper import _linux

from .helpers import py, read_line

#: A name with the characters that break a naive parse of /proc/PID/stat: spaces and a ")".
_TRICKY_NAME = "a) 1 2 (b"


@pytest.mark.parametrize("name", ["plain", _TRICKY_NAME])
def test_the_start_time_is_read_whatever_the_name(name: str) -> None:
    """read_start_time() agrees with the full parse, for a running process and a zombie."""
    code = (
        f"open('/proc/self/comm', 'w').write({name!r}); print('ready', flush=True); "
        "import sys; sys.stdin.read()"
    )
    with subprocess.Popen(
        py(code), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert read_line(proc.stdout).strip() == "ready"
            stat = _linux.read_stat(proc.pid)
            assert stat is not None
            start = _linux.read_start_time(proc.pid)
            assert start == stat.start_time
            assert start <= _linux.boot_ticks()
            assert proc.stdin is not None
            proc.stdin.close()
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # a zombie, not reaped
            assert _linux.read_start_time(proc.pid) == start
        finally:
            proc.kill()


def test_no_start_time_for_a_pid_nobody_has() -> None:
    """A pid beyond pid_max names no process: None, not an error."""
    with open("/proc/sys/kernel/pid_max") as limit:
        beyond = int(limit.read()) + 1
    assert _linux.read_start_time(beyond) is None
