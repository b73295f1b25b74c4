"""Races in the reaping core, each pinned by a test (numbers as in the issue).

Each test states what the core must do, however it is built, and fails on the core of
af39fe5:

- 1: ``reap()`` in one thread while another spawns: a new child's exit was read before its
  notifier existed, so its status was reported lost and the child stayed a zombie.
- 2: ``terminate()`` or ``uninstall()`` while another thread spawns: a Child listed before
  its notifier existed (``AssertionError``), a spawn into a stopped engine (``ValueError``),
  children left running.
- 3: ``on_exit`` raising ``SystemExit`` or ``KeyboardInterrupt`` killed the reaping thread.
- 7: a stopped relay (SIGSTOP) held back the exits of the children it had been lent, and
  ``uninstall()`` waited for it, then warned that those zombies "still ran".
- 9: ``os.fork()`` from a thread while pidfds went to and came back from the relay: the
  forked child kept some of them.

The races are aimed at rather than waited for. The thread that another must catch between
two steps crawls through zombiereaper's code (:func:`_crawl`, a trace function that hands
over the GIL at every line of the library): the spawning thread in races 1 and 2, the
reaping thread in race 9. The other thread acts at the moment that matters: once spawn()'s
``subprocess.Popen`` has started the child (:func:`popen_started`) and the new Child is
listed; once the relay's count of pidfds moves. Neither depends on which lines the core
runs, so the tests keep their edge after a redesign. Every loop is bounded. A call that the
old core left blocked runs under an :class:`UninstallWatchdog` that, past the bound the test
states, unblocks it (SIGCONT to the relay, children reaped by hand), so that the suite goes
on and nothing is left behind.

The adapter section below is the only code here that knows zombiereaper's internals.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeAlias

import psutil
import pytest

import zombiereaper
from zombiereaper import (
    Child,
    ExitStatus,
    NotInstalledError,
    Reaper,
    ReaperError,
    StatusLostError,
    WaitTimeout,
    _engine,  # the adapter's, and nobody else's
)

from . import internals
from .helpers import (
    FORK_IN_THREADED_PROCESS,
    HAS_PIDFD,
    eventually,
    is_zombie_or_gone,
    pid_alive,
    pidfds_open,
    read_fork_report,
    sh,
)

# --- adapter: the only code here that touches zombiereaper's internals ------------------------
# Re-point these five functions when the core moves things; the tests use nothing else private.


def lower_relay_thresholds(monkeypatch: pytest.MonkeyPatch, above: int, keep: int) -> None:
    """Lend pidfds to the relay once more than ``above`` are held here, down to ``keep``."""
    internals.lower_relay_thresholds(monkeypatch, above, keep)


def set_relay_answer_timeout(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Declare the relay stuck once a ping has gone unanswered for ``seconds``.

    Stuck: killed, reaped, its children watched by pid, a WARNING logged. Pings go out every
    ``seconds / 2``, so a stuck relay is found within about ``1.5 * seconds``.
    """
    internals.set_relay_timing(monkeypatch, ping=seconds / 2, answer=seconds)


def relay_pid() -> int | None:
    """The pid of the running relay, if there is one."""
    return internals.relay_pid()


def lent_count() -> int:
    """How many pidfds the relay holds for us now."""
    return internals.lent_count() if _engine.current() is not None else 0


def relay_socket_names() -> set[str]:
    """``socket:[inode]`` of this process's end of its connection to the relay, if any."""
    return internals.relay_socket_names()


# --- fixtures and helpers (public API only) ---------------------------------------------------

TraceFunction: TypeAlias = Callable[[FrameType, str, Any], "TraceFunction | None"]

needs_pidfd = pytest.mark.skipif(not HAS_PIDFD, reason="the relay holds pidfds")

#: The relay's thresholds here, as in test_relay.py: a few dozen children do what thousands do.
ABOVE = 4
KEEP = 2


@pytest.fixture(autouse=True)
def no_pidfd_kept_open() -> Iterator[None]:
    """Close the pidfds a test's Reaper left open once it is uninstalled (no later test's count).

    The old core leaks the pidfd of a child whose status it wrongly reported lost (race 1).
    """
    before = set(_pidfds())
    yield
    for fd in set(_pidfds()) - before:
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture(autouse=True)
def sigchld_dropped_at_uninstall_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignore CPython's "Signal 17 ignored due to race condition" when a Reaper is uninstalled.

    A SIGCHLD that arrives as uninstall() puts back SIG_DFL reaches CPython's signal check
    with no Python handler left, and CPython reports that as an unraisable OSError, which
    pytest turns into an error. Not one of the races here (it is the SIGCHLD handler's own,
    and harmless); these tests uninstall while children die often enough to meet it.
    """
    previous = sys.unraisablehook
    expected = f"Signal {int(signal.SIGCHLD)} ignored due to race condition"

    def hook(args: Any) -> None:
        if not (isinstance(args.exc_value, OSError) and str(args.exc_value) == expected):
            previous(args)

    monkeypatch.setattr(sys, "unraisablehook", hook)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every 10 µs (instead of 5 ms), so that races show up often."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


#: Where zombiereaper's code lives: the code that _crawl slows down.
LIBRARY = os.path.dirname(zombiereaper.__file__) + os.sep


def _crawl(frame: FrameType, event: str, arg: object) -> TraceFunction | None:
    """A trace function that hands over the GIL at every line of zombiereaper's code.

    A thread traced by it crawls through the library (and only there), so that another
    thread's call lands between any two of its steps, whatever those steps are.
    """
    if event == "call" and not frame.f_code.co_filename.startswith(LIBRARY):
        return None
    if event == "line":
        time.sleep(0)
    return _crawl


@pytest.fixture
def reaping_thread_crawls() -> Iterator[None]:
    """Threads started meanwhile, the reaping thread among them, crawl (see _crawl).

    The tests' own threads turn it off for themselves as they start (``sys.settrace(None)``).
    """
    previous = threading.gettrace()
    threading.settrace(_crawl)
    try:
        yield
    finally:
        threading.settrace(previous)


@pytest.fixture
def popen_started(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An Event set each time ``subprocess.Popen`` has started a child.

    spawn() starts its child through subprocess.Popen: once this is set, a spawn() is half-way,
    its child running and its Child about to be listed and watched. Tests also set it
    themselves after each spawn(), in case spawn() stops going through ``subprocess.Popen``:
    they then still run, only less sharply.
    """
    started = threading.Event()

    class AnnouncingPopen(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.set()

    monkeypatch.setattr(subprocess, "Popen", AnnouncingPopen)
    return started


@pytest.fixture
def thread_deaths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Threads that die of an exception, recorded here instead of reported by pytest.

    A reaping thread killed by a callback's exception is what race 3 is about: the test must
    fail on its own assertions, not on PytestUnhandledThreadExceptionWarning (nor pass because
    threading ignores a SystemExit silently).
    """
    deaths: list[str] = []

    def record(args: threading.ExceptHookArgs) -> None:
        name = "?" if args.thread is None else args.thread.name
        deaths.append(f"{name}: {args.exc_type.__name__}({args.exc_value})")

    monkeypatch.setattr(threading, "excepthook", record)
    return deaths


def _pidfds() -> list[int]:
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[pidfd]":
                found.append(int(name))
        except OSError:
            pass
    return found


def _waiting(reaper: Reaper, code: int) -> Child:
    """A child that exits with ``code`` once its stdin closes."""
    return reaper.spawn(sh(f"read line; exit {code}"), stdin=subprocess.PIPE)


def _release(child: Child) -> None:
    """Close the child's stdin: a ``_waiting`` child exits."""
    popen = child.popen
    if popen is not None and popen.stdin is not None and not popen.stdin.closed:
        popen.stdin.close()


def _reap_by_hand(children: Sequence[Child]) -> None:
    """Settle children without the reaping thread: poll() each, kill() those that still run."""
    for child in children:
        try:
            if child.running and child.poll() is None:
                child.kill()
        except ReaperError:
            pass  # its status is lost: nothing more to settle


def _kill_leftovers(children: Sequence[Child]) -> None:
    """Kill and reap, through their Popen, children that no Reaper reaps any more."""
    for child in children:
        _release(child)
        popen = child.popen
        if popen is not None and popen.returncode is None:
            try:
                popen.kill()
            except OSError:
                pass
            popen.wait()


def _continue(pid: int | None) -> None:
    """SIGCONT ``pid`` if it is a child of ours that has not exited."""
    if pid is None:
        return
    try:
        proc = psutil.Process(pid)
        if proc.ppid() == os.getpid() and proc.status() != psutil.STATUS_ZOMBIE:
            proc.send_signal(signal.SIGCONT)
    except psutil.NoSuchProcess:
        pass


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def _gone(pid: int) -> bool:
    """Whether ``pid`` is neither running nor a zombie child of ours (killed and reaped)."""
    return not pid_alive(pid) and pid not in {proc.pid for proc in psutil.Process().children()}


def _run_all(threads: Sequence[threading.Thread], timeout: float) -> None:
    """Start ``threads`` and join them, failing if any still runs after ``timeout`` seconds."""
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"threads still running after {timeout} s: {stuck}"


@dataclass
class Uninstalled:
    """How a bounded ``uninstall()`` went."""

    seconds: float
    #: Whether it was still blocked at its bound (the watchdog then unblocked it).
    rescued: bool
    error: BaseException | None
    warned: list[str] = field(default_factory=list)


class UninstallWatchdog:
    """Bounds an ``uninstall()``: past ``bound`` seconds, calls ``rescue`` until it returns.

    The uninstall runs on the calling thread, not in a thread of its own, so that the main
    thread restores the SIGCHLD handler as it must. ``rescue`` unblocks what the old core
    waited for in vain (children reaped by hand, SIGCONT to the relay); the test then fails
    on :attr:`Uninstalled.rescued`. Enter it before starting what the uninstall races: its
    thread then starts, and only polls, out of the way of the race.
    """

    def __init__(self, bound: float, rescue: Callable[[], None]) -> None:
        self._bound = bound
        self._rescue = rescue
        self._began: list[float] = []
        self._rescued = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="uninstall watchdog", daemon=True)

    def __enter__(self) -> UninstallWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        # Polls: an Event set as the uninstall starts would wake this thread in the middle
        # of the race that the uninstall is meant to fall into.
        while not self._done.wait(0.05):
            if self._began and time.monotonic() - self._began[0] > self._bound:
                self._rescued.set()
                try:
                    self._rescue()
                except Exception:
                    pass  # tried again in a moment

    def uninstall(self, reaper: Reaper) -> Uninstalled:
        """Uninstall ``reaper``; warnings are recorded, not raised (``-W error`` would abort it)."""
        error: BaseException | None = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._began.append(time.monotonic())
            try:
                reaper.uninstall()
            except Exception as err:
                error = err
        seconds = time.monotonic() - self._began[0]
        self._done.set()
        return Uninstalled(seconds, self._rescued.is_set(), error, [str(w.message) for w in caught])


def uninstall_bounded(reaper: Reaper, bound: float, rescue: Callable[[], None]) -> Uninstalled:
    """Uninstall ``reaper`` under an :class:`UninstallWatchdog`."""
    with UninstallWatchdog(bound, rescue) as watchdog:
        return watchdog.uninstall(reaper)


# --- races 1 and 2: reap(), terminate() and uninstall() racing spawn() ----------------------
# The spawning thread crawls through zombiereaper (_crawl), and the other thread acts once the
# new Child is listed: from there to its notifier is the window that the old core left open.


def _spin_until_listed(
    reaper: Reaper, spawned: list[Child], done: threading.Event | None = None
) -> None:
    """Busy-wait (a sleep would miss it) until reaper.children lists a Child that is not in
    ``spawned`` yet, until the spawn() in progress returns (appending to it), or ``done``."""
    known = {child.pid for child in spawned}
    count = len(spawned)
    deadline = time.monotonic() + 10
    while len(spawned) == count and time.monotonic() < deadline:
        if any(child.pid not in known for child in reaper.children):
            return
        if done is not None and done.is_set():
            return


SPAWNS_WHILE_REAPING = 20


def test_reap_racing_spawn_loses_no_status(
    backend: str, fast_switching: None, popen_started: threading.Event
) -> None:
    """reap() from other threads never settles a child spawn() is setting up: all statuses exact."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        spawned: list[Child] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def reap_in_a_loop() -> None:  # what the issue did
            try:
                while not stop.is_set():
                    reaper.reap()
            except BaseException as err:
                errors.append(err)

        def reap_once_listed() -> None:
            try:
                while not stop.is_set():
                    popen_started.wait(1)
                    popen_started.clear()
                    _spin_until_listed(reaper, spawned, stop)
                    reaper.reap()
            except BaseException as err:
                errors.append(err)

        def spawn_all() -> None:
            sys.settrace(_crawl)
            try:
                for _ in range(SPAWNS_WHILE_REAPING):
                    spawned.append(reaper.spawn(sh("exit 5")))
                    popen_started.set()
            except BaseException as err:
                errors.append(err)
            finally:
                stop.set()
                popen_started.set()

        try:
            _run_all(
                [
                    threading.Thread(target=reap_in_a_loop),
                    threading.Thread(target=reap_once_listed),
                    threading.Thread(target=spawn_all),
                ],
                timeout=40,
            )
            lost, late, wrong = [], [], []
            for child in spawned:
                try:
                    status = child.wait(10)
                except StatusLostError:
                    lost.append(child.pid)
                except WaitTimeout:
                    late.append(child.pid)
                else:
                    if status.returncode != 5:
                        wrong.append(status)
            assert not errors, f"reap() or spawn() raised: {errors[:3]!r}"
            assert not lost, (
                f"{len(lost)} of {len(spawned)} children spawned while reap() ran were reported "
                f"StatusLostError, though nobody else waits for them: pids {lost[:10]}"
            )
            assert not late, f"{len(late)} statuses not recorded within 10 s: pids {late[:10]}"
            assert not wrong, f"wrong statuses: {wrong[:10]}"
        finally:
            stop.set()
            _kill_leftovers(spawned)  # the zombies of children reported lost


SLEEPERS = 30


def test_terminate_racing_spawn_signals_every_listed_child(
    backend: str, fast_switching: None, popen_started: threading.Event
) -> None:
    """terminate() works on every Child in reaper.children, even one spawn() has just listed."""
    with Reaper(backend=backend) as reaper:  # type: ignore[arg-type]
        spawned: list[Child] = []
        errors: list[str] = []
        spawning_done = threading.Event()

        def spawn_all() -> None:
            sys.settrace(_crawl)
            try:
                for _ in range(SLEEPERS):
                    spawned.append(reaper.spawn(sh("exec sleep 30")))
                    popen_started.set()
            except BaseException as err:
                errors.append(f"spawn(): {err!r}")
            finally:
                spawning_done.set()
                popen_started.set()

        def terminate_once_listed() -> None:
            while not spawning_done.is_set():
                popen_started.wait(10)
                popen_started.clear()
                _spin_until_listed(reaper, spawned, spawning_done)
                for child in reaper.children:
                    try:
                        child.terminate()
                    except BaseException as err:
                        errors.append(f"terminate(): {type(err).__name__}: {err}")

        try:
            _run_all(
                [
                    threading.Thread(target=terminate_once_listed),
                    threading.Thread(target=spawn_all),
                ],
                timeout=30,
            )
            for child in reaper.children:
                child.terminate()
            signals = [child.wait(10).signal for child in spawned]
            assert not errors, (
                f"{len(errors)} calls raised while {SLEEPERS} children were spawned; "
                f"first: {errors[:3]}"
            )
            assert signals == [signal.SIGTERM] * SLEEPERS
        finally:
            for child in spawned:
                try:
                    child.kill()
                except ReaperError:
                    pass


UNINSTALL_ROUNDS = 30


def _uninstall_while_spawning(backend: str, started: threading.Event) -> list[str]:
    """One round: uninstall() as soon as a spawn() has listed its Child; what went wrong."""
    reaper = Reaper(backend=backend, stop_timeout=5).install()  # type: ignore[arg-type]
    spawned: list[Child] = []
    errors: list[str] = []

    def spawn_until_uninstalled() -> None:
        sys.settrace(_crawl)
        for _ in range(50):
            try:
                # Exits at once: the rounds stay short, and uninstall() must still reap it.
                child = reaper.spawn(sh("exit 0"))
            except NotInstalledError:
                return
            except BaseException as err:
                errors.append(f"spawn(): {type(err).__name__}: {err}")
                return
            spawned.append(child)
            started.set()

    spawner = threading.Thread(target=spawn_until_uninstalled)
    try:
        with UninstallWatchdog(10, lambda: _reap_by_hand(spawned)) as watchdog:
            spawner.start()
            started.wait(10)
            _spin_until_listed(reaper, spawned)
            outcome = watchdog.uninstall(reaper)
        spawner.join(10)
        if outcome.error is not None:
            errors.append(f"uninstall(): {type(outcome.error).__name__}: {outcome.error}")
        if outcome.rescued:
            errors.append("uninstall() was still blocked after 10 s")
        if outcome.warned:
            errors.append(f"uninstall() warned: {outcome.warned}")
        left = [child.pid for child in spawned if child.running]
        if left:
            errors.append(f"pids {left} not reaped by uninstall() (running or zombies)")
        return errors
    finally:
        spawner.join(10)
        _kill_leftovers(spawned)


def test_uninstall_racing_spawn_raises_nothing_and_reaps_every_child(
    backend: str, fast_switching: None, popen_started: threading.Event
) -> None:
    """uninstall() racing spawn() raises nothing and reaps the child of every spawn() that
    returned; the others raise NotInstalledError."""
    failures: list[str] = []
    for round_number in range(UNINSTALL_ROUNDS):
        popen_started.clear()
        errors = _uninstall_while_spawning(backend, popen_started)
        if errors:
            failures.append(f"round {round_number}: {'; '.join(errors)}")
    assert not failures, (
        f"{len(failures)} of {UNINSTALL_ROUNDS} uninstalls racing spawn() went wrong: "
        f"{failures[:3]}"
    )


# --- race 3: on_exit raising SystemExit or KeyboardInterrupt ---------------------------------

#: Seconds within which an exit that has happened must be recorded, and uninstall() return.
RECORDED_WITHIN = 2.0


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_on_exit_raising_a_base_exception_is_logged_and_reaping_goes_on(
    backend: str,
    exc_type: type[BaseException],
    caplog: pytest.LogCaptureFixture,
    thread_deaths: list[str],
) -> None:
    """An on_exit raising SystemExit or KeyboardInterrupt is logged; later exits are reaped."""
    marker = f"{exc_type.__name__} raised by on_exit on purpose"
    raised = threading.Event()
    heard: list[ExitStatus] = []

    def on_exit(status: ExitStatus) -> None:
        heard.append(status)
        if not raised.is_set():
            raised.set()
            raise exc_type(marker)

    pidfds_before = pidfds_open()
    reaper = Reaper(backend=backend, on_exit=on_exit, stop_timeout=1)  # type: ignore[arg-type]
    reaper.install()
    children: list[Child] = []
    try:
        with caplog.at_level(logging.WARNING, logger="zombiereaper"):
            first = reaper.spawn(sh("exit 3"))
            children.append(first)
            assert first.wait(10).returncode == 3
            assert raised.wait(10), "on_exit was not called"
            later = [reaper.spawn(sh(f"exit {code}")) for code in (11, 12, 13)]
            children += later
            sleeper = reaper.spawn(sh("exec sleep 30"))
            children.append(sleeper)
            eventually(
                lambda: all(is_zombie_or_gone(child.pid) for child in later),
                what="the later children to exit",
            )
            deadline = time.monotonic() + RECORDED_WITHIN
            codes: list[int | None] = []
            for child in later:
                try:
                    codes.append(child.wait(max(0.0, deadline - time.monotonic())).returncode)
                except WaitTimeout:
                    codes.append(None)
            assert codes == [11, 12, 13], (
                f"after on_exit raised {exc_type.__name__}, later exits were not recorded "
                f"within {RECORDED_WITHIN} s (None: not recorded): {codes}; threads that died: "
                f"{thread_deaths}"
            )
            eventually(
                lambda: {child.pid for child in later} <= {status.pid for status in heard},
                timeout=RECORDED_WITHIN,
                what="on_exit to be called for the later children",
            )
            # Forgotten all the same, the one whose on_exit raised too: only the sleeper's
            # pidfd is left (either backend holds one for it where pidfds work).
            eventually(
                lambda: pidfds_open() == pidfds_before + (1 if HAS_PIDFD else 0),
                timeout=RECORDED_WITHIN,
                what="the settled children's pidfds to be closed",
            )
        logged = [
            record
            for record in caplog.records
            if record.name.split(".")[0] == "zombiereaper"
            and (
                marker in record.getMessage()
                or (record.exc_info is not None and marker in str(record.exc_info[1]))
            )
        ]
        assert logged, f"the {exc_type.__name__} from on_exit was not logged to 'zombiereaper'"
    except BaseException:
        # Failed already: the cleanup need not wait long (the old core needs the rescue).
        uninstall_bounded(reaper, 0.2, lambda: _reap_by_hand(children))
        raise
    outcome = uninstall_bounded(reaper, RECORDED_WITHIN, lambda: _reap_by_hand(children))
    assert not outcome.rescued, (
        f"uninstall() after on_exit raised {exc_type.__name__} was still blocked after "
        f"{RECORDED_WITHIN} s"
    )
    assert outcome.error is None and not outcome.warned, (outcome.error, outcome.warned)
    assert sleeper.status is not None and sleeper.status.signal == signal.SIGTERM
    assert not thread_deaths, f"threads died: {thread_deaths}"


# --- race 7: the relay stopped ----------------------------------------------------------------

#: The relay's answer timeout here, and the bound on anything that waits for a stuck relay.
ANSWER_TIMEOUT = 0.5
STUCK_BOUND = ANSWER_TIMEOUT + 4.0
LENT_CHILDREN = 40


def _children_mostly_lent(reaper: Reaper) -> tuple[list[Child], int]:
    """LENT_CHILDREN ``_waiting`` children with most of their pidfds lent; the relay's pid."""
    children = [_waiting(reaper, code) for code in range(LENT_CHILDREN)]
    eventually(lambda: lent_count() >= LENT_CHILDREN - ABOVE, what="pidfds to be lent")
    pid = relay_pid()
    assert pid is not None
    return children, pid


@needs_pidfd
def test_a_stopped_relay_is_declared_stuck_and_its_children_are_reaped_by_pid(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay that does not answer is killed with a warning, and every exit is still recorded."""
    lower_relay_thresholds(monkeypatch, ABOVE, KEEP)
    set_relay_answer_timeout(monkeypatch, ANSWER_TIMEOUT)
    reaper = Reaper(backend="pidfd").install()
    children: list[Child] = []
    relay: int | None = None
    try:
        children, relay = _children_mostly_lent(reaper)
        stopped = relay
        os.kill(stopped, signal.SIGSTOP)
        eventually(lambda: _stopped(stopped), what="the relay to stop")
        with caplog.at_level(logging.WARNING, logger="zombiereaper"):
            for child in children:
                _release(child)
            deadline = time.monotonic() + STUCK_BOUND
            codes: list[int | None] = []
            for child in children:
                try:
                    codes.append(child.wait(max(0.0, deadline - time.monotonic())).returncode)
                except WaitTimeout:
                    codes.append(None)
            missing = codes.count(None)
            assert missing == 0, (
                f"with the relay stopped, {missing} of {LENT_CHILDREN} exits were not recorded "
                f"within {STUCK_BOUND} s (answer timeout {ANSWER_TIMEOUT} s)"
            )
            assert codes == list(range(LENT_CHILDREN))
            eventually(
                lambda: _gone(stopped),
                timeout=STUCK_BOUND,
                what="the stopped relay to be killed and reaped",
            )
        warned = [
            record.getMessage()
            for record in caplog.records
            if record.name.split(".")[0] == "zombiereaper"
            and record.levelno >= logging.WARNING
            and "relay" in record.getMessage()
        ]
        assert warned, "no WARNING about the stuck relay on the 'zombiereaper' logger"
    finally:
        _continue(relay)
        for child in children:
            _release(child)
        uninstall_bounded(reaper, STUCK_BOUND, lambda: _reap_by_hand(children))


@needs_pidfd
def test_uninstall_with_a_stopped_relay_returns_in_bounded_time_and_calls_no_zombie_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uninstall() does not wait for a stopped relay, nor warn that its zombies "still ran"."""
    lower_relay_thresholds(monkeypatch, ABOVE, KEEP)
    set_relay_answer_timeout(monkeypatch, ANSWER_TIMEOUT)
    # A stop_timeout below the bound: the old core's false "still ran" shows before the rescue.
    reaper = Reaper(backend="pidfd", stop_timeout=1).install()
    children: list[Child] = []
    relay: int | None = None
    outcome: Uninstalled | None = None
    exited = LENT_CHILDREN * 3 // 4
    try:
        children, relay = _children_mostly_lent(reaper)
        stopped = relay
        os.kill(stopped, signal.SIGSTOP)
        eventually(lambda: _stopped(stopped), what="the relay to stop")
        for child in children[:exited]:
            _release(child)
        eventually(
            lambda: all(is_zombie_or_gone(child.pid) for child in children[:exited]),
            what="the released children to exit",
        )

        def rescue() -> None:
            _continue(stopped)
            _reap_by_hand(children)

        # The others still run: uninstall() sends them SIGTERM, and they die at once.
        outcome = uninstall_bounded(reaper, STUCK_BOUND, rescue)
    finally:
        _continue(relay)
        for child in children:
            _release(child)
        if outcome is None:
            uninstall_bounded(reaper, STUCK_BOUND, lambda: _reap_by_hand(children))
    problems = []
    if outcome.rescued:
        problems.append(
            f"uninstall() was still blocked {STUCK_BOUND} s after it began (answer timeout "
            f"{ANSWER_TIMEOUT} s); it returned after {outcome.seconds:.1f} s, once the test "
            "had SIGCONTed the relay"
        )
    if outcome.error is not None:
        problems.append(f"uninstall() raised {outcome.error!r}")
    false_alarms = [message for message in outcome.warned if "still ran" in message]
    if false_alarms:
        problems.append(f"uninstall() warned of zombies as running: {false_alarms}")
    assert not problems, "; ".join(problems)
    statuses = [child.status for child in children]
    assert [None if s is None else s.returncode for s in statuses[:exited]] == list(range(exited))
    assert all(s is not None and s.signal == signal.SIGTERM for s in statuses[exited:])
    assert _gone(relay), "the stopped relay outlived uninstall()"


# --- race 9: pidfds leaking into forked children ----------------------------------------------

#: ROUNDS rounds of BATCH children: two forks aimed at each spawn, one at each round's exits.
ROUNDS = 5
BATCH = 10


def _count_in_forked_child(relay_sockets: set[str]) -> bytes:
    """In a forked child: how many pidfds and relay sockets it holds, as ``b"P S"``."""
    pidfds = sockets = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        pidfds += link == "anon_inode:[pidfd]"
        sockets += link in relay_sockets
    return f"{pidfds} {sockets}".encode()


class _Forks:
    """Forked children that report what they hold, over pipes opened beforehand.

    A pipe is opened before the moment a fork is aimed at: opening one lets other threads
    run, and the moment would pass.
    """

    def __init__(self, relay_sockets: set[str]) -> None:
        self._relay_sockets = relay_sockets
        self._pipes: list[tuple[int, int]] = []
        self._pids: list[int] = []

    def prepare(self, count: int) -> None:
        """Open the pipes of the next ``count`` forks."""
        self._pipes += [os.pipe() for _ in range(count)]

    def fork(self) -> None:
        """os.fork() a child that writes what it holds to the next pipe and exits."""
        write_end = self._pipes[len(self._pids)][1]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked child
            try:
                report = _count_in_forked_child(self._relay_sockets)
            except BaseException:
                report = b"-1 -1"
            os.write(write_end, report)
            os._exit(0)
        self._pids.append(pid)

    def reports(self) -> list[tuple[int, int, int]]:
        """Reap the forked children: (pid, pidfds held, relay sockets held) for each."""
        for _, write_end in self._pipes:
            os.close(write_end)
        found = []
        for pid, (read_end, _) in zip(self._pids, self._pipes, strict=False):
            pidfds, relay_sockets = read_fork_report(read_end, pid).split()
            found.append((pid, int(pidfds), int(relay_sockets)))
        for read_end, _ in self._pipes[len(self._pids) :]:
            os.close(read_end)
        return found


def _spin_until_lent_count_moves(before: int, timeout: float, *, down: bool = False) -> None:
    """Busy-wait (a sleep would miss it) until lent_count() differs from ``before``.

    With ``down``, until it falls below it. ``timeout`` seconds at most.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = lent_count()
        if now < before or (now > before and not down):
            return


@needs_pidfd
@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_a_forked_child_holds_none_of_the_engines_descriptors(
    monkeypatch: pytest.MonkeyPatch,
    fast_switching: None,
    popen_started: threading.Event,
    reaping_thread_crawls: None,
) -> None:
    """A child os.fork()ed while pidfds come and go holds no pidfd and no relay socket of ours."""
    # Every pidfd is lent as soon as its child is watched.
    lower_relay_thresholds(monkeypatch, 0, 0)
    with Reaper(backend="pidfd") as reaper:
        everyone: list[Child] = []
        errors: list[str] = []
        reports: list[tuple[int, int, int]] = []
        spawn_request: deque[int] = deque()
        spawn_one = threading.Event()
        forking_done = threading.Event()

        def spawn_on_request() -> None:
            sys.settrace(None)
            try:
                while spawn_one.wait(10) and not forking_done.is_set():
                    spawn_one.clear()
                    stdin = spawn_request.popleft()
                    everyone.append(reaper.spawn(sh("read line; exit 0"), stdin=stdin))
                    popen_started.set()
            except BaseException as err:
                errors.append(f"spawn: {err!r}")
            finally:
                popen_started.set()

        def fork_at_each_step() -> None:
            sys.settrace(None)
            try:
                for round_number in range(ROUNDS):
                    forks = _Forks(relay_socket_names())
                    try:
                        fork_through_a_round(forks, (round_number + 1) * BATCH)
                    finally:
                        reports.extend(forks.reports())
                    for child in everyone[-BATCH:]:
                        child.wait(10)
            except BaseException as err:
                errors.append(f"fork: {err!r}")
            finally:
                forking_done.set()
                spawn_one.set()

        def fork_through_a_round(forks: _Forks, spawned: int) -> None:
            # The round's children all read one pipe: closing it ends them together.
            read_end, write_end = os.pipe()
            try:
                try:
                    for _ in range(BATCH):
                        forks.prepare(2)
                        lent_before = lent_count()
                        popen_started.clear()
                        spawn_request.append(read_end)
                        spawn_one.set()
                        # As spawn() is half-way: the pidfd opened, its watch not set up yet.
                        popen_started.wait(10)
                        forks.fork()
                        # As the engine lends that pidfd to the relay.
                        _spin_until_lent_count_moves(lent_before, 0.25)
                        forks.fork()
                finally:
                    os.close(read_end)
                eventually(lambda: len(everyone) >= spawned, what="the round's children")
                forks.prepare(1)
                lent_before = lent_count()
            finally:
                os.close(write_end)
            # As the engine takes back the pidfds that the relay returns together.
            _spin_until_lent_count_moves(lent_before, 2, down=True)
            forks.fork()

        _run_all(
            [threading.Thread(target=spawn_on_request), threading.Thread(target=fork_at_each_step)],
            timeout=40,
        )
        assert not errors, errors
        assert len(reports) == ROUNDS * (2 * BATCH + 1)
        holding = [report for report in reports if report[1] or report[2]]
        assert not holding, (
            f"{len(holding)} of {len(reports)} forked children held descriptors of the "
            f"parent's engine (pid, pidfds, relay sockets): {holding[:5]}"
        )
        assert all(child.wait(10).returncode == 0 for child in everyone)
