"""Fixtures: both backends, and a guard that fails any test leaving a zombie or a child behind."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import psutil
import pytest

from zombiereaper import _engine, _fds, _linux, _sighandler

# multiprocessing's fork server and resource tracker live for the whole run, by design: the
# plugin's own rule, so that this guard and the plugin never disagree.
from zombiereaper.pytest_plugin import _is_long_lived_helper

from .helpers import BACKENDS, eventually

pytest_plugins = ["pytester"]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _leftovers(before: set[int]) -> list[psutil.Process]:
    left = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in before or _is_long_lived_helper(proc):
            continue
        left.append(proc)
    return left


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} ({proc.status()}): {' '.join(proc.cmdline()) or proc.name()}"
    except psutil.Error:
        return f"pid {proc.pid} (gone)"


@pytest.fixture(scope="session", autouse=True)
def subreaper_for_the_run() -> Iterator[None]:
    """Make the test process a subreaper, so that any orphan a test leaks comes back to it.

    The leak check below then sees it; and no orphan lands on a PID 1 that may not reap.
    """
    if not _linux.can_be_subreaper():
        yield
        return
    before = _linux.is_child_subreaper()
    _linux.set_child_subreaper(True)
    yield
    _linux.set_child_subreaper(before)


@pytest.fixture(autouse=True)
def no_leaked_children() -> Iterator[None]:
    """Fail the test if it leaves a zombie, a running child, a Reaper or our handler behind."""
    before = {proc.pid for proc in psutil.Process().children(recursive=True)}
    handler_before = signal.getsignal(signal.SIGCHLD)
    yield
    problems: list[str] = []
    try:
        eventually(lambda: not _leftovers(before), timeout=3.0, what="children to be gone")
    except AssertionError:
        for proc in _leftovers(before):
            problems.append("left behind: " + _describe(proc))
            try:
                proc.kill()
            except psutil.Error:
                pass
            try:
                os.waitpid(proc.pid, 0)
            except ChildProcessError:
                pass
    if _engine.current() is not None:
        problems.append("a Reaper was left installed")
    if signal.getsignal(signal.SIGCHLD) is not handler_before:
        problems.append(
            f"SIGCHLD handler changed: {handler_before!r} -> {signal.getsignal(signal.SIGCHLD)!r}"
        )
        signal.signal(signal.SIGCHLD, handler_before)
    if _sighandler.is_installed() and _engine.current() is None:
        _sighandler.uninstall()
    stale = [fd for fd in _fds.snapshot() if not _is_open(fd)]
    if stale:
        # A later fork's child would close whatever reuses these numbers (a multiprocessing
        # worker's own pipe: it then exits 1 without a word).
        problems.append(f"tracked descriptors closed behind zombiereaper._fds's back: {stale}")
        with _fds.step():
            for fd in stale:
                _fds.untrack(fd)
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend that this machine can run."""
    return str(request.param)
