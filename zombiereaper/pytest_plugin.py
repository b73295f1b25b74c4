"""pytest plugin: a ``reaper`` fixture, and a check that no test leaves a zombie or a child behind.

Loaded through the ``pytest11`` entry point named ``zombiereaper`` (``pytest -p zombiereaper``
loads it explicitly, ``-p no:zombiereaper`` turns it off). After each test, once its fixtures
are torn down, the direct children of the test process that the test left behind are
reported: zombies (nobody waited for them) and processes still running. ``--zombies=warn``
(the default) warns with :class:`~zombiereaper.ChildLeakWarning`, ``--zombies=fail`` makes the
test error at teardown, ``--zombies=off`` skips the check; the ``zombies`` ini option sets the
same. multiprocessing's fork server and resource tracker live for the whole run by design and
are not leaks, and neither is zombiereaper's own relay (started while an installed Reaper
watches hundreds of children).

While a test runs (setup and teardown included), the test process is a child subreaper (on
Linux), so that the orphans of the test's grandchildren (a daemon it double-forked, a
grandchild whose parent was killed) come back to it instead of to PID 1: they are reported
like leaked children. Those that nobody in the process waits for are then cleaned up: stopped
with their own descendants (SIGTERM, then SIGKILL) and reaped. The subreaper flag is put back
as it was after each test.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
import warnings
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import psutil
import pytest

from . import _engine, _linux, _orphans, _tree
from ._errors import ChildLeakWarning, ReaperError
from ._reaper import Reaper

if TYPE_CHECKING:
    from collections.abc import Iterator

Mode = Literal["warn", "fail", "off"]
_MODES: Final[tuple[Mode, ...]] = ("warn", "fail", "off")

#: Started once by multiprocessing and kept for the rest of the run, by design.
_LONG_LIVED_HELPERS: Final = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")

#: How long a leftover may take to go away by itself (a child reaped by a thread that is just
#: finishing) before it is reported.
_GRACE: Final = 1.0

#: The keyword arguments of Reaper(), which the ``reaper`` marker passes on.
_REAPER_KEYWORDS: Final = tuple(f"{name}=" for name in inspect.signature(Reaper).parameters)

#: The children that existed when the test's setup began (zombies are new after it) and when
#: its call began (running children are new after it: one started by a module- or
#: session-scoped fixture during this test's setup is that fixture's, kept on purpose).
_BEFORE_SETUP: Final = pytest.StashKey[frozenset[tuple[int, float]]]()
_BEFORE_CALL: Final = pytest.StashKey[frozenset[tuple[int, float]]]()
#: Whether the test process was a subreaper before the test (restored after it).
_SUBREAPER_BEFORE: Final = pytest.StashKey[bool]()

#: Seconds a leftover that nobody waits for has, after SIGTERM, before SIGKILL.
_CLEAN_TIMEOUT: Final = 1.0


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--zombies`` and the ``zombies`` ini option."""
    group = parser.getgroup("zombiereaper", "child process leak detection (zombiereaper)")
    group.addoption(
        "--zombies",
        choices=_MODES,
        default=None,
        help="what to do when a test leaves a zombie or a running child: warn (default), "
        "fail, or off",
    )
    parser.addini(
        "zombies",
        "what to do when a test leaves a zombie or a running child: warn, fail or off",
        default="warn",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Check the ini option and register the ``reaper`` marker."""
    _mode(config)
    config.addinivalue_line(
        "markers",
        "reaper(**kwargs): keyword arguments (only) for the Reaper of the `reaper` fixture: "
        + ", ".join(_REAPER_KEYWORDS),
    )


def _mode(config: pytest.Config) -> Mode:
    value = config.getoption("zombies") or config.getini("zombies")
    if value not in _MODES:
        raise pytest.UsageError(
            f"zombies = {value!r} in the ini file: use one of {', '.join(_MODES)}"
        )
    return cast("Mode", value)


@pytest.fixture
def reaper(request: pytest.FixtureRequest) -> Iterator[Reaper]:
    """An installed :class:`~zombiereaper.Reaper` for the test, uninstalled after it.

    Everything the test spawned through it is stopped and reaped at teardown. Configure it with
    ``@pytest.mark.reaper(backend="sigchld", stop_timeout=1.0)``: the marker takes the keyword
    arguments of :class:`~zombiereaper.Reaper`, and nothing else. The warnings of the Reaper's
    setup and teardown (a ``RuntimeWarning`` when a child ignored SIGTERM and was killed) are
    reported at the test function.
    """
    item = request.node
    installed = _new_reaper(item)
    with _warnings_at_test(item):
        installed.install()
    try:
        yield installed
    finally:
        with _warnings_at_test(item):
            installed.uninstall()


def _new_reaper(item: pytest.Item) -> Reaper:
    """The Reaper that the test's ``reaper`` marker asks for; a setup error naming the marker."""
    kwargs = _reaper_kwargs(item)
    try:
        return Reaper(**kwargs)
    except (TypeError, ValueError, ReaperError) as err:
        problem = f"{_marker_call(item)}: {err}"
        if isinstance(err, TypeError):
            problem += f" (it takes {', '.join(_REAPER_KEYWORDS)})"
    # Failed outside the except block: pytest would show the chain of both errors.
    pytest.fail(problem, pytrace=False)


def _reaper_kwargs(item: pytest.Item) -> dict[str, Any]:
    marker = item.get_closest_marker("reaper")
    if marker is None:
        return {}
    if marker.args:
        # Reaper() is keyword-only, and so is its marker: one rule, and nothing is guessed.
        if len(marker.args) == 1 and marker.args[0] in ("owned", "all"):
            example = f"@pytest.mark.reaper(scope={marker.args[0]!r})"
        else:
            example = '@pytest.mark.reaper(backend="sigchld", stop_timeout=1.0)'
        pytest.fail(
            f"{_marker_call(item)}: the reaper marker takes keyword arguments only, those of "
            f"Reaper() ({', '.join(_REAPER_KEYWORDS)}): write {example}",
            pytrace=False,
        )
    return dict(marker.kwargs)


def _marker_call(item: pytest.Item) -> str:
    marker = item.get_closest_marker("reaper")
    if marker is None:
        return "Reaper()"
    arguments = [repr(arg) for arg in marker.args]
    arguments += [f"{name}={value!r}" for name, value in marker.kwargs.items()]
    return f"@pytest.mark.reaper({', '.join(arguments)})"


def _test_location(item: pytest.Item) -> tuple[str, int]:
    """The test function's file and line, where a warning about the test should point."""
    path, lineno, _ = item.location
    return str(item.config.rootpath / path), (lineno or 0) + 1


@contextlib.contextmanager
def _warnings_at_test(item: pytest.Item) -> Iterator[None]:
    """Report the warnings raised in the block at the test function instead of where they arose.

    Raised in the fixture's setup or teardown, a warning points into zombiereaper or pytest
    (its first frame outside zombiereaper is pytest's fixture machinery). Recorded, then issued
    again at the test once the block is over (so that, under ``-W error``, the Reaper is
    uninstalled before the error is raised); the filters in force then decide what happens.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        filename, lineno = _test_location(item)
        for warning in caught:
            warnings.warn_explicit(
                warning.message, warning.category, filename, lineno, source=warning.source
            )


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children()
    except psutil.Error:
        return []


def _key(proc: psutil.Process) -> tuple[int, float] | None:
    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return None


def _is_long_lived_helper(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(name in cmdline for name in _LONG_LIVED_HELPERS)


def _snapshot() -> frozenset[tuple[int, float]]:
    keys = (_key(proc) for proc in _children())
    return frozenset(key for key in keys if key is not None)


def _leftovers(
    before_setup: frozenset[tuple[int, float]], before_call: frozenset[tuple[int, float]] | None
) -> list[psutil.Process]:
    found = []
    ours = _engine.helper_pids()
    for proc in _children():
        key = _key(proc)
        if key is None or key in before_setup or proc.pid in ours or _is_long_lived_helper(proc):
            continue
        try:
            zombie = proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            continue
        if zombie or (before_call is not None and key not in before_call):
            found.append(proc)
    return found


def _describe(proc: psutil.Process, unowned: bool) -> str | None:
    cleaned = " (nobody here waits for it: cleaned up)" if unowned else ""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            # The kernel forgets a process's command line when it exits: only its name is left.
            return f"zombie pid {proc.pid} ({proc.name()}): exited, never waited for{cleaned}"
        command = " ".join(proc.cmdline()) or proc.name()
        return f"pid {proc.pid} still running: {command}{cleaned}"
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return f"pid {proc.pid}{cleaned}"


def _clean(left: list[psutil.Process]) -> None:
    """Stop (with their descendants) and reap the leftovers that nobody here waits for.

    Each is held by a pidfd, checked to be the very process listed (this process's child,
    with the start time seen), so neither a signal nor the reap can reach another process.
    """
    held: list[_tree.TreeProcess] = []
    for proc in left:
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:
            continue  # gone, or no room for a pidfd: left as it is
        try:
            same = proc.ppid() == os.getpid() and proc.is_running()  # is_running: start time
        except psutil.Error:
            same = False
        member = _tree.hold(proc.pid, fd, root=False) if same else None
        if member is not None:
            held.append(member)
        elif same:
            # Exited already (hold() closed its pidfd): reap the zombie through a new one,
            # checked the same way.
            _reap_zombie(proc)
        else:
            os.close(fd)
    if held:
        _tree.stop_tree(held, _CLEAN_TIMEOUT, reap=True)


def _reap_zombie(proc: psutil.Process) -> None:
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return
    try:
        if proc.ppid() == os.getpid() and proc.is_running():
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
    except (psutil.Error, ChildProcessError):
        pass
    finally:
        os.close(fd)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Note the children that exist before the test and its fixtures start; be a subreaper."""
    if _mode(item.config) != "off":
        item.stash[_BEFORE_SETUP] = _snapshot()
        if _linux.can_be_subreaper():
            item.stash[_SUBREAPER_BEFORE] = _linux.is_child_subreaper()
            _linux.set_child_subreaper(True)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Note the children that exist once the fixtures are set up, before the test runs."""
    if _mode(item.config) != "off":
        item.stash[_BEFORE_CALL] = _snapshot()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """After the fixtures are torn down, report what the test left behind, and clean orphans."""
    result = yield
    try:
        return _check_leftovers(item, result)
    finally:
        before = item.stash.get(_SUBREAPER_BEFORE, None)
        if before is not None:
            # Restored, not cleared: an outer init may have made this process a subreaper.
            _linux.set_child_subreaper(before)
            del item.stash[_SUBREAPER_BEFORE]


def _check_leftovers(item: pytest.Item, result: None) -> None:
    mode = _mode(item.config)
    before_setup = item.stash.get(_BEFORE_SETUP, None)
    if mode == "off" or before_setup is None:
        return result
    before_call = item.stash.get(_BEFORE_CALL, None)
    deadline = time.monotonic() + _GRACE
    left = _leftovers(before_setup, before_call)
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = _leftovers(before_setup, before_call)
    unowned = _orphans.unowned({proc.pid for proc in left}) if left else set()
    described = [
        text for proc in left if (text := _describe(proc, proc.pid in unowned)) is not None
    ]
    _clean([proc for proc in left if proc.pid in unowned])
    if not described:
        return result
    message = (
        f"{item.nodeid} left {len(described)} child process(es) behind: "
        + "; ".join(described)
        + ". Wait for every child you start (or spawn it with the `reaper` fixture)."
    )
    if mode == "fail":
        pytest.fail(message, pytrace=False)
    filename, lineno = _test_location(item)
    # Shown at the test itself, not at this hook.
    warnings.warn_explicit(ChildLeakWarning(message), ChildLeakWarning, filename, lineno)
    return result
