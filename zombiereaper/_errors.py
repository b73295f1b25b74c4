"""The library's errors: one root, and specific errors that also subclass the nearest builtin."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from typing import Any

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """Warn, pointing at the first frame outside zombiereaper (the user's ``with`` or call)."""
    # stacklevel 1 is this function, 2 its caller: count on from there.
    level = 2
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE_DIR + os.sep
    ):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)


def _rebuild_error(cls: type[ReaperError], args: tuple[Any, ...]) -> ReaperError:
    """Unpickle an error: make it with its ``args``, without calling its ``__init__``.

    The fields come back from the pickled ``__dict__`` afterwards.
    """
    error = cls.__new__(cls, *args)
    # OSError's __new__ leaves args empty for a class with its own __init__.
    error.args = args
    return error


class ReaperError(Exception):
    """The root of every error that zombiereaper raises itself.

    Every error of the package pickles with its fields and message, so that it can cross a
    ``multiprocessing`` boundary.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduce calls cls(*self.args), which fails (or doubles the message)
        # for an error whose __init__ takes fields rather than the message (issue 13).
        return (_rebuild_error, (type(self), self.args), self.__dict__ or None)


class NotInstalledError(ReaperError, RuntimeError):
    """A Reaper was asked to start or adopt a child while it is not installed."""


class NotOurChildError(ReaperError, ChildProcessError):
    """A pid is not a child that this Reaper owns (or its record has left the history).

    Attributes:
        pid: The pid that was asked about.
    """

    def __init__(self, pid: int, message: str) -> None:
        super().__init__(message)
        self.pid = pid


class WaitTimeout(ReaperError, TimeoutError, subprocess.TimeoutExpired):
    """A child did not exit within the time a wait allowed.

    It is also a :class:`TimeoutError` and a :class:`subprocess.TimeoutExpired`, so code that
    catches what ``Popen.wait(timeout=...)`` raises catches it too.

    Args:
        pid: The child that is still running.
        timeout: The number of seconds that the wait allowed.
        message: What to say instead of the default message.
        cmd: The child's command, if it is known (Popen's ``args``, a Process's name).

    Attributes:
        pid: The child that is still running.
        timeout: The number of seconds that the wait allowed.
        cmd: The child's command (Popen's ``args``, a Process's name) when it is known, else
            its pid: never None, so that ``TimeoutExpired`` handlers always have something
            that names what timed out.
        output: None: a wait captures no output (``TimeoutExpired.output``, ``stdout``).
        stderr: None, likewise.
    """

    def __init__(
        self,
        pid: int,
        timeout: float,
        message: str | None = None,
        *,
        cmd: Any = None,
    ) -> None:
        # This reaches OSError's __init__ (the message and args stay ours, TimeoutExpired's
        # fields are set below); typeshed gives OSError no __init__, so mypy sees the next one.
        super().__init__(  # type: ignore[call-arg]
            message
            or f"pid {pid} was still running after {timeout:g} s; wait again, or stop it with "
            "child.stop() (SIGTERM, then SIGKILL)"
        )
        self.pid = pid
        self.timeout = timeout
        self.cmd = pid if cmd is None else cmd
        self.output = None
        self.stderr = None


class StatusLostError(ReaperError, ChildProcessError):
    """Other code reaped the child with a blanket wait, so its exit status cannot be known.

    zombiereaper reports this instead of inventing a status, as ``subprocess`` (0), asyncio (255)
    and ``multiprocessing`` (None) do in the same situation.

    Attributes:
        pid: The child whose status was taken.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(
            f"pid {pid} was reaped by other code (a waitpid(-1) loop or SIGCHLD set to SIG_IGN?) "
            "before its exit status could be read; remove that reaper, it steals every child's "
            "status"
        )
        self.pid = pid


class BackendUnavailableError(ReaperError, OSError):
    """The backend that was asked for cannot run on this system."""


class ChildLeakWarning(UserWarning):
    """A test left a zombie or a running child behind (emitted by the pytest plugin)."""
