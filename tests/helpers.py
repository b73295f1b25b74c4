"""Shared helpers for the tests: children described exactly, and deadlines instead of sleeps."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, Final, TypeVar

import psutil
import pytest

from zombiereaper import ExitStatus, can_use_pidfd

T = TypeVar("T")

#: Bits of /proc/PID/status's SigIgn/SigBlk for the standard signals 1 to 31. The C library's
#: own real-time signals (32 and 33 with glibc) cannot be reset through it: they keep what
#: the test process got from whoever started it (Python 3.13's posix_spawn leaves them
#: ignored), and glibc resets them itself when it needs them.
STANDARD_SIGNALS: Final = (1 << 31) - 1

BACKENDS = ("pidfd", "sigchld") if can_use_pidfd() else ("sigchld",)
HAS_PIDFD = can_use_pidfd()

PY = sys.executable

#: Python 3.12+ warns when a process with threads (ours has the reaping thread) calls
#: os.fork(). Tests that fork on purpose, as a user choosing multiprocessing's "fork" would,
#: filter exactly that warning; any other fork warning still fails the test.
FORK_IN_THREADED_PROCESS: Final = (
    r"ignore:This process .* is multi-threaded, use of fork\(\) may lead to deadlocks:"
    "DeprecationWarning"
)

#: multiprocessing's start methods, "fork" with its warning filtered.
START_METHODS: Final = [
    pytest.param("fork", marks=pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)),
    "spawn",
    "forkserver",
]

#: A child that ignores SIGTERM, says "ready" once it does, and sleeps a minute.
IGNORES_SIGTERM = [
    PY,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    "print('ready', flush=True); time.sleep(60)",
]


def sh(script: str) -> list[str]:
    """A child that runs ``script`` in /bin/sh, without core dumps."""
    return ["/bin/sh", "-c", f"ulimit -c 0; {script}"]


def py(code: str) -> list[str]:
    """A child that runs ``code`` in this Python."""
    return [PY, "-c", code]


def eventually(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds.

    An ExitStatus counts as found (it has no truth value of its own): poll a record with
    ``eventually(lambda: reaper.status(pid))``.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = predicate()
        if isinstance(value, ExitStatus) or value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def zombie_children() -> list[psutil.Process]:
    """Direct children of this process that are zombies."""
    found = []
    for proc in psutil.Process().children():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def is_zombie_or_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie, or no longer there)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_line(stream: object, timeout: float = 10.0) -> str:
    """Read one line from a child's pipe, failing after ``timeout`` seconds.

    Reads the descriptor byte by byte, past the stream's buffer: a buffered readline could
    swallow the next line too, and a later select() would then wait for it in vain.
    """
    import select

    fileno = stream.fileno()  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    line = bytearray()
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fileno], [], [], max(0.0, remaining))
        if not ready:
            raise AssertionError(f"no whole line from the child within {timeout} s: {line!r}")
        byte = os.read(fileno, 1)
        if not byte:
            break  # end of file: return what came
        line += byte
    return line.decode()


def status_fields(text: str) -> dict[str, str]:
    """The fields of a /proc/PID/status text, by name (``SigBlk``, ``SigIgn``...)."""
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def proc_status(which: int | str) -> dict[str, str]:
    """The fields of /proc/``which``/status (a pid, or a path such as ``self/task/TID``)."""
    with open(f"/proc/{which}/status", encoding="ascii") as file:
        return status_fields(file.read())


def pidfds_open(pid: int | str = "self") -> int:
    """How many pidfds process ``pid`` (this one by default) holds."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == "anon_inode:[pidfd]":
                count += 1
        except OSError:
            pass
    return count


def fork_waiting(exit_code: int = 0) -> tuple[int, int]:
    """os.fork() a child that exits with ``exit_code`` once the returned pipe end closes.

    Returns once the child runs, past every at-fork hook (it says so through a pipe).

    Returns:
        The child's pid and the pipe's write end (close it to let the child exit).
    """
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked child
        os.close(write_end)
        os.close(ready_read)
        os.write(ready_write, b"r")
        os.read(read_end, 1)
        os._exit(exit_code)
    os.close(read_end)
    os.close(ready_write)
    try:
        assert os.read(ready_read, 1) == b"r", "the forked child died before it ran"
    finally:
        os.close(ready_read)
    return pid, write_end


def read_fork_report(read_end: int, pid: int) -> bytes:
    """What a forked test child wrote to ``read_end`` before exiting 0; reaps the child."""
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, raw = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(raw) == 0
    return b"".join(chunks)


def check_in_fork(check: Callable[[], object]) -> str:
    """Run ``check`` in an os.fork()ed child: "ok", or the traceback of what it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child, reports through the pipe
        report = "ok"
        try:
            os.close(read_end)
            check()
        except BaseException:
            report = traceback.format_exc()
        os.write(write_end, report.encode())
        os._exit(0)
    os.close(write_end)
    return read_fork_report(read_end, pid).decode()


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not is_zombie_or_gone(pid)


#: A multiprocessing target that exits with the code it receives (a builtin, so that spawned
#: and forkserver workers can find it).
EXIT_WITH_RECEIVED = "import sys; sys.exit(conn.recv())"


def exit_code_worker(method: str) -> tuple[multiprocessing.process.BaseProcess, Any]:
    """A started worker of ``method`` that exits with the code sent on the returned pipe end."""
    context = multiprocessing.get_context(method)
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=exec, args=(EXIT_WITH_RECEIVED, {"conn": reader}))
    process.start()
    reader.close()
    return process, writer


class NaiveReaper:
    """The usual fix that breaks everything: a SIGCHLD handler looping waitpid(-1, WNOHANG).

    Tests use it as a negative control, to show that they would catch a reaper that steals.

    Attributes:
        taken: pid -> raw wait status of every child it reaped.
    """

    def __enter__(self) -> NaiveReaper:
        import signal

        self.taken: dict[int, int] = {}
        self._previous = signal.signal(signal.SIGCHLD, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        while True:
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.taken[pid] = raw

    def __exit__(self, *exc: object) -> None:
        import signal

        signal.signal(signal.SIGCHLD, self._previous)
