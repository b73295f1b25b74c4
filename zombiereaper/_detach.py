"""spawn_detached(): a double fork into an orphan, without forking this (threaded) process.

Our process runs the reaping thread, so forking it and running Python before exec is unsafe
(and Python 3.12+ warns: gh-100228). Instead a small, fresh, single-threaded Python helper is
started through subprocess (fork and exec in C); the helper starts the daemon with
``subprocess`` (new session, default signal dispositions, empty signal mask), reports the
daemon's pid or the exec errno over a close-on-exec pipe, and exits. We reap the helper at
once, so no intermediate zombie is ever left (skypilot #8929), and the daemon is reparented
to init or to the nearest subreaper.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import IO, TYPE_CHECKING, Any, Final

from ._errors import ReaperError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from ._reaper import Command

# Runs in the helper with -I -S: nothing but the standard library, no site-packages needed.
_HELPER: Final = r"""
import json, os, signal, subprocess, sys

def main():
    spec = json.loads(sys.argv[1])
    report = spec["report"]
    os.set_inheritable(report, False)
    # This fresh helper is single-threaded: it may fork. It clears what it inherited from the
    # thread that started it (a blocked mask, ignored signals such as nohup's SIGHUP) so that
    # the daemon starts with an empty mask and default dispositions; exec then resets nothing
    # that is still ignored, and posix_spawn would leave glibc's own signals ignored.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for number in signal.valid_signals():
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(number, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    try:
        daemon = subprocess.Popen(
            spec["argv"], cwd=spec["cwd"], env=spec["env"], start_new_session=True,
            close_fds=True, pass_fds=spec["pass_fds"],
        )
    except OSError as err:
        os.write(report, ("E %d" % (err.errno or 0)).encode())
        return 1
    os.write(report, ("P %d" % daemon.pid).encode())
    # Exit without waiting: the daemon becomes an orphan, adopted by init or a subreaper.
    os._exit(0)

sys.exit(main())
"""

_Stream = int | IO[Any] | None


def command_argv(args: Command) -> list[str]:
    """A command as Popen takes it, as a list of strings (a lone path is the program).

    Raises:
        ValueError: The command is empty.
    """
    if isinstance(args, str | bytes | os.PathLike):
        return [os.fsdecode(args)]
    argv = [os.fsdecode(arg) for arg in args]
    if not argv:
        raise ValueError("a command needs a program to run: args is empty")
    return argv


def spawn_detached(
    args: Command,
    *,
    cwd: str | os.PathLike[str] = "/",
    env: Mapping[str, str] | None = None,
    stdin: _Stream = None,
    stdout: _Stream = None,
    stderr: _Stream = None,
    pass_fds: Iterable[int] = (),
    on_helper: Callable[[int], None] | None = None,
) -> int:
    """Start ``args`` as a daemon, an orphan in a session of its own; return its pid.

    See :meth:`zombiereaper.Reaper.spawn_detached` for the contract. ``on_helper(pid)`` is
    told the helper's pid before it is waited for, so that an all-scope reaper leaves it alone.
    """
    argv = command_argv(args)
    fds = tuple(pass_fds)
    for fd in fds:
        if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
            raise ValueError(f"pass_fds must hold descriptor numbers >= 0, got {fd!r}")
    report_read, report_write = os.pipe()
    spec = {
        "program": argv[0],
        "argv": argv,
        "cwd": os.fspath(cwd),
        "env": None if env is None else {str(k): str(v) for k, v in env.items()},
        "pass_fds": list(fds),
        "report": report_write,
    }
    try:
        helper = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HELPER, json.dumps(spec)],
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.DEVNULL if stdout is None else stdout,
            stderr=subprocess.DEVNULL if stderr is None else stderr,
            pass_fds=(*fds, report_write),
            close_fds=True,
            cwd="/",
        )
    except BaseException:
        os.close(report_read)
        os.close(report_write)
        raise
    os.close(report_write)
    if on_helper is not None:
        on_helper(helper.pid)
    try:
        chunks = []
        while chunk := os.read(report_read, 64):
            chunks.append(chunk)
    finally:
        os.close(report_read)
        # Reaped at once: the intermediate never lingers as a zombie.
        helper_code = helper.wait()
    return _parse_report(b"".join(chunks).decode("ascii", "replace"), argv[0], helper_code)


def _parse_report(report: str, program: str, helper_code: int) -> int:
    kind, _, value = report.partition(" ")
    if kind == "P" and value.isdigit():
        return int(value)
    if kind == "E" and value.isdigit():
        errno = int(value)
        # OSError picks the subclass from the errno: FileNotFoundError, PermissionError...
        raise OSError(errno, os.strerror(errno), program)
    raise ReaperError(
        f"the helper that starts detached processes failed (exit status {helper_code}) "
        f"before starting {program!r}; is {sys.executable!r} runnable?"
    )
