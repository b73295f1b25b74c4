"""The process-wide wakeup pipe and the SIGCHLD handler that only writes to it.

The handler does nothing but write one byte and chain to the handler that was there before:
no waitpid, no logging, no locks (gunicorn deadlocked logging in its handler, #2564). Python
runs handlers only in the main thread between bytecodes, so reaping never depends on it: the
pidfd backend needs no signal at all, and the sigchld backend also sweeps on a timer.

Only users that rely on the signal (the sigchld backend, the all scope) install it
(zombiereaper._engine.acquire): at every exit it runs on the main thread, which then competes
with the reaping thread for the GIL just when the exit is being reaped (SIGKILL -> on_exit was
about 35 us slower at the median with a pidfd Reaper that installed it for nothing).

The pipe lives as long as the process: closing it while the main thread may be about to run
the handler could let the handler write into a descriptor that has meanwhile been reused.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from . import _linux
from ._errors import ReaperError

if TYPE_CHECKING:
    from types import FrameType

logger = logging.getLogger("zombiereaper")

_HandlerType = Any  # what signal.getsignal returns: a callable, SIG_DFL, SIG_IGN or None

_lock = threading.Lock()
_wake_read = -1
_wake_write = -1
_previous: _HandlerType = None
_ours_installed = False
#: Between begin_uninstall() and finish_uninstall(): the kernel has ``_previous`` already,
#: Python's table still names our handler.
_releasing = False
#: Whether a SIGCHLD must wake the reaping thread: only when something is watched by sweeps
#: (the sigchld backend, the all scope). pidfds need no signal, and a wakeup per exit for
#: nothing cost 20 µs of the reaping thread per child.
wake_on_sigchld = True


def wakeup_fds() -> tuple[int, int]:
    """Return the (read, write) ends of the wakeup pipe, creating it on first use."""
    global _wake_read, _wake_write
    with _lock:
        if _wake_read < 0:
            read_end, write_end = os.pipe()
            for fd in (read_end, write_end):
                os.set_blocking(fd, False)
                os.set_inheritable(fd, False)
            _wake_read, _wake_write = read_end, write_end
        return _wake_read, _wake_write


def wake() -> None:
    """Wake the reaping thread (safe from any thread and from a signal handler)."""
    fd = _wake_write
    if fd >= 0:
        try:
            os.write(fd, b"\0")
        except OSError:
            # BlockingIOError: the pipe is full, so a wakeup is already pending (cpython #74224).
            pass


def drain(fd: int) -> None:
    """Read the pending wakeup bytes from the pipe's read end (more, if any, wake us again)."""
    try:
        os.read(fd, 4096)
    except BlockingIOError:
        pass


def _on_sigchld(signum: int, frame: FrameType | None) -> None:
    if wake_on_sigchld:
        wake()
    previous = _previous
    if callable(previous):
        previous(signum, frame)


def is_main_thread() -> bool:
    """Whether the caller runs in the main thread, the only one that may set signal handlers."""
    return threading.current_thread() is threading.main_thread()


def _effective_handler() -> _HandlerType:
    """SIGCHLD's handler as the kernel has it (Python's table lags during an uninstall)."""
    return _previous if _releasing else signal.getsignal(signal.SIGCHLD)


def is_ignored() -> bool:
    """Whether SIGCHLD is SIG_IGN, as the kernel has it."""
    return bool(_effective_handler() == signal.SIG_IGN)


def check_disposition() -> None:
    """Refuse to run where SIGCHLD is ignored and the handler cannot be installed to fix it.

    Raises:
        ReaperError: SIGCHLD is SIG_IGN (the kernel then discards every exit status) and the
            caller is not the main thread.
    """
    if not is_main_thread() and is_ignored():
        raise ReaperError(
            "SIGCHLD is set to SIG_IGN, so the kernel discards every child's exit status; "
            "install the first Reaper from the main thread (it resets SIGCHLD), or call "
            "signal.signal(signal.SIGCHLD, signal.SIG_DFL) from the main thread first"
        )


def install() -> None:
    """Put our handler in front of the current one (main thread only; idempotent)."""
    global _previous, _ours_installed, _releasing
    current = signal.getsignal(signal.SIGCHLD)
    if current is _on_sigchld:
        if _releasing:
            # Between the two steps of an uninstall: the kernel has the previous disposition
            # again; give it ours back (Python's table already names it).
            _releasing = False
            signal.signal(signal.SIGCHLD, _on_sigchld)
        _ours_installed = True
        return
    if current == signal.SIG_IGN:
        # SIG_IGN makes the kernel reap every child at exit and discard its status; the setting
        # even survives exec (Popen would then report 0 for everything).
        logger.warning(
            "SIGCHLD was set to SIG_IGN, which discards every exit status; zombiereaper replaced "
            "it with its own handler and will restore SIG_IGN when the last Reaper is uninstalled"
        )
    _previous = current
    signal.signal(signal.SIGCHLD, _on_sigchld)
    _ours_installed = True


def uninstall() -> None:
    """Restore the handler that was there before ours, unless other code replaced ours since.

    Main thread only; does nothing when our handler is not installed. The same as
    :func:`begin_uninstall` then :func:`finish_uninstall` at once.
    """
    begin_uninstall()
    finish_uninstall()


def begin_uninstall() -> bool:
    """Give SIGCHLD back to the kernel's previous disposition; Python's table follows later.

    A SIGCHLD whose Python-level call is still pending when Python's handler is swapped for
    SIG_DFL or SIG_IGN makes CPython report "Signal 17 ignored due to race condition" (an
    unraisable OSError) at the next bytecode. Pending here includes a signal that another
    thread took just before: its C handler may not have run yet when that thread is
    preempted (a whole time slice on a busy machine). So the kernel's disposition changes
    first, through libc: no thread starts our handler after that; :func:`finish_uninstall`,
    called once the reaping thread has been joined, runs what is still pending while Python
    names our handler, then sets Python's table to match.

    Main thread only. Returns whether :func:`finish_uninstall` has work to do.
    """
    global _previous, _ours_installed, _releasing
    if not _ours_installed:
        return False
    _ours_installed = False
    if signal.getsignal(signal.SIGCHLD) is not _on_sigchld:
        _previous = None  # other code replaced ours: theirs stays
        return False
    if _previous is None:
        # Not installed from Python: SIG_DFL is the best approximation that Python can express.
        _previous = signal.SIG_DFL
    if not callable(_previous):
        _linux.set_kernel_disposition(signal.SIGCHLD, ignore=_previous == signal.SIG_IGN)
    _releasing = True
    return True


def finish_uninstall() -> None:
    """Set Python's handler to the previous one (main thread; after :func:`begin_uninstall`)."""
    global _previous, _releasing
    if not _releasing:
        return  # nothing begun, or a Reaper installed since took the handler back
    _releasing = False
    previous, _previous = _previous, None
    if signal.getsignal(signal.SIGCHLD) is not _on_sigchld:
        return
    if not callable(previous):  # a Python handler takes a late call like ours would
        _wait_for_handlers_in_flight()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        _run_pending_handlers()
        signal.signal(signal.SIGCHLD, previous)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _wait_for_handlers_in_flight() -> None:
    """Wait (at most 0.1 s) until no other thread may still be in our C-level handler.

    A thread that took a SIGCHLD before the kernel's disposition changed can be preempted
    before its handler runs, for longer than joining the reaping thread takes (a busy
    machine): it would trip the signal after Python's table says SIG_DFL. Such a thread is
    runnable with SIGCHLD in its blocked mask until its handler returns.
    """
    deadline = time.monotonic() + 0.1
    while _linux.threads_handling(signal.SIGCHLD) and time.monotonic() < deadline:
        time.sleep(0.0005)


def _run_pending_handlers() -> None:
    """Nothing: entering a Python function is where CPython runs pending signal handlers."""


def is_installed() -> bool:
    """Whether our handler is currently installed by us."""
    return _ours_installed


def reset_after_fork() -> None:
    """Make the inherited handler and pipe inert in a forked child (runs in the child)."""
    global _wake_read, _wake_write, _lock
    old = (_wake_read, _wake_write)
    # Order matters: the handler runs in this same thread between bytecodes, so once the
    # write end is -1 it can no longer touch the pipe we are about to close.
    _wake_write = -1
    _wake_read = -1
    _lock = threading.Lock()
    for fd in old:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    if _ours_installed or _releasing:
        try:
            uninstall()
        except ValueError:
            # Forked from a thread that Python does not treat as main: leave the inert handler.
            pass
