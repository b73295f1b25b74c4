"""When the sigchld backend sweeps, and when a new child wakes the reaping thread.

A spawn wakes the reaping thread only if nothing would otherwise find its child's exit soon
enough: the child has exited already, or the thread sleeps with no sweep timer armed. The
timer stays armed for one interval after the last swept child left, so that a program that
spawns one short-lived child after another does not pay a wakeup per spawn; and a sweep that
had nothing to check does not count as a storm, so the next SIGCHLD is swept at once.
These drive one SweepMonitor directly, with a stand-in loop and clock: no timing involved.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import subprocess
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from zombiereaper import ExitStatus, Reaper, _process, _sighandler
from zombiereaper._backends.sigchld import SAFETY_SWEEP_INTERVAL, SweepMonitor, SweptRef
from zombiereaper._process import ProcessRef

from .helpers import HAS_PIDFD, eventually, sh
from .internals import engine_now, watch_of


class _Loop:
    """The reaping loop as a SweepMonitor sees it: notes what it is asked."""

    def __init__(self) -> None:
        self.settled: list[object] = []
        #: Those of ``settled`` that it was told to reap without a look first.
        self.told_exited: list[object] = []

    def sweep_needed(self) -> None:
        pass

    def settle_now(self, watch: object, *, look_first: bool = True) -> bool:
        self.settled.append(watch)
        if not look_first:
            self.told_exited.append(watch)
        return False


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Watch(SimpleNamespace):
    """What a SweepMonitor reads of a Watch (kept in a set: hashed by identity)."""

    __hash__ = object.__hash__


_fake_pids = itertools.count(-1, -1)


def _watch(notice: object = None) -> Any:
    """A watch of ``notice``'s pid, or of a pid of its own that no process has."""
    pid = notice.pid if isinstance(notice, ProcessRef) else next(_fake_pids)
    return _Watch(
        pid=pid, notice=notice, monitor=None, slot=None, lock=threading.Lock(), watching=True
    )


@pytest.fixture
def wakes(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Each wakeup of the reaping thread, instead of a byte in the wakeup pipe."""
    woken: list[None] = []
    monkeypatch.setattr(_sighandler, "wake", lambda: woken.append(None))
    return woken


@pytest.fixture
def running() -> Iterator[ProcessRef]:
    """A running child of ours, named by pid as the sigchld backend names it."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        ref = ProcessRef.open(child.pid, pidfd=False)
        yield ref
        ref.close()
    finally:
        child.kill()
        child.wait(10)


def _monitor() -> tuple[SweepMonitor, _Loop, _Clock]:
    loop, clock = _Loop(), _Clock()
    return SweepMonitor(loop, clock.now, clock=clock), loop, clock  # type: ignore[arg-type]


def _emptied_and_asked(later: float) -> SweepMonitor:
    """A monitor whose one swept child left; the reaping thread asks ``later`` after that."""
    monitor, _, clock = _monitor()
    first = _watch()
    monitor.add(first)  # the thread sleeps unarmed: this one wakes it
    monitor.timeout(clock.now)  # the thread, woken, arms the timer
    monitor.remove(first)  # settled: the set is empty again
    monitor.timeout(clock.now + later)
    return monitor


def test_a_sweep_with_nothing_to_check_does_not_delay_the_next_one() -> None:
    """After a timer sweep of nothing, a child added and its SIGCHLD are swept at once."""
    monitor, _, clock = _monitor()
    monitor.sweep_if_due(clock.now + 2 * SAFETY_SWEEP_INTERVAL)  # the timer's: nothing watched
    monitor.add(_watch())
    monitor.note_wakeup()  # its SIGCHLD
    monitor.sweep_if_due(clock.now + 2 * SAFETY_SWEEP_INTERVAL + 1e-6)
    assert monitor.sweeps == 1, "the sweep waited out a quiet period meant for storms"


def test_a_sweep_that_finds_nothing_still_quiets_the_next_wakeup() -> None:
    """The storm guard stays: a sweep of watched children that finds no exit backs off."""
    monitor, _, clock = _monitor()
    monitor.add(_watch())
    monitor.note_wakeup()
    monitor.sweep_if_due(clock.now)
    assert monitor.sweeps == 1
    monitor.note_wakeup()  # a spurious SIGCHLD right after
    monitor.sweep_if_due(clock.now + 1e-6)
    assert monitor.sweeps == 1, "a storm of SIGCHLD would sweep without pause"


def test_timer_sweeps_that_find_nothing_do_not_delay_the_next_wakeup() -> None:
    """A child running quietly for a while: its exit's SIGCHLD is still swept at once.

    Timer sweeps that found it running counted as a storm, so after a few quiet seconds the
    next exit waited up to SAFETY_SWEEP_INTERVAL for its sweep (4 ms to 100 ms, not 0.6 ms,
    from SIGKILL to on_exit after one second).
    """
    monitor, _, clock = _monitor()
    monitor.add(_watch())
    now = clock.now
    for _ in range(20):  # two seconds of timer sweeps, each finding the child running
        now += SAFETY_SWEEP_INTERVAL + 0.001
        monitor.sweep_if_due(now)
    assert monitor.sweeps == 20
    monitor.note_wakeup()  # its SIGCHLD, a moment after the last timer sweep
    monitor.sweep_if_due(now + 1e-6)
    assert monitor.sweeps == 21, "the exit waited out a quiet period meant for storms"


def test_the_timer_stays_armed_for_an_interval_after_the_last_child_left() -> None:
    monitor, _, clock = _monitor()
    assert monitor.timeout(clock.now) is None, "armed with nothing ever watched"
    watch = _watch()
    monitor.add(watch)
    monitor.remove(watch)
    assert monitor.timeout(clock.now + SAFETY_SWEEP_INTERVAL / 2) is not None
    assert monitor.timeout(clock.now + 2 * SAFETY_SWEEP_INTERVAL) is None


def test_a_running_child_added_while_the_timer_is_armed_wakes_nobody(
    wakes: list[None], running: ProcessRef
) -> None:
    """The timer finds it (and its exit's SIGCHLD wakes the thread): no wakeup per spawn."""
    monitor = _emptied_and_asked(later=SAFETY_SWEEP_INTERVAL / 2)  # still armed: it left lately
    wakes.clear()
    monitor.add(_watch(running))
    assert not wakes, "a running child woke the reaping thread with its timer armed"


def test_a_child_added_while_the_timer_is_unarmed_wakes_the_thread(
    wakes: list[None], running: ProcessRef
) -> None:
    """Long after the last swept child, the thread sleeps with no timer: wake it to arm one."""
    monitor = _emptied_and_asked(later=2 * SAFETY_SWEEP_INTERVAL)  # now it sleeps unarmed
    wakes.clear()
    monitor.add(_watch(running))
    assert len(wakes) == 1, "nothing would find this child's exit without the handler"


class _LockWatchingRef(ProcessRef):
    """A running child's ref that notes, at each read, whether its watch's lock was held."""

    __slots__ = ("locked_at_read", "watch")

    def __init__(self) -> None:
        super().__init__(0, None, None)
        self.locked_at_read: list[bool] = []
        self.watch: Any = _watch(self)

    def peek(self, *, exact: bool = True) -> int | None:
        self.locked_at_read.append(self.watch.lock.locked())
        return None


def _lock_watching_watch() -> Any:
    return _LockWatchingRef().watch


def test_a_new_child_is_read_under_its_lock() -> None:
    """Once swept, the reaping thread may settle it and close its pidfd: reads take the lock."""
    monitor = _emptied_and_asked(later=SAFETY_SWEEP_INTERVAL / 2)  # armed: add() reads it
    watch = _lock_watching_watch()
    monitor.add(watch)
    assert watch.notice.locked_at_read == [True], "add() read the child without its lock"


def test_a_new_child_being_settled_meanwhile_is_not_read_but_swept(wakes: list[None]) -> None:
    """Its lock busy (another thread settles it), add() does not wait or read: it wakes a sweep."""
    monitor = _emptied_and_asked(later=SAFETY_SWEEP_INTERVAL / 2)
    watch = _lock_watching_watch()
    wakes.clear()
    with watch.lock:
        monitor.add(watch)
    assert watch.notice.locked_at_read == [], "add() read a child that was being settled"
    assert len(wakes) == 1, "a child that may have exited woke no sweep"


@pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfd")
def test_a_sweep_asks_the_children_holding_a_pidfd_with_one_poll() -> None:
    """Held pidfds are polled at once: only the exited child is settled, told it exited.

    A child named by pid is still checked one by one. Without the poll, every held child was
    looked at with a system call of its own on every sweep, and the exited one looked at
    once more before its reap.
    """
    monitor, loop, clock = _monitor()
    children = [subprocess.Popen(["sleep", "30"]), subprocess.Popen(["true"])]
    refs = [SweptRef.open(child.pid, pidfd=True) for child in children]
    by_pid = ProcessRef.open(children[0].pid, pidfd=False)
    try:
        eventually(lambda: refs[1].peek() is not None, 30, "true to exit")
        held_running, held_exited, named_by_pid = (_watch(ref) for ref in (*refs, by_pid))
        for watch in (held_running, held_exited, named_by_pid):
            monitor.add(watch)
        loop.settled.clear()
        monitor.sweep()
        assert set(loop.settled) == {held_exited, named_by_pid}
        assert loop.told_exited == [held_exited]
        # The timer's sweep looks at each one, in case a readiness came late.
        loop.settled.clear()
        loop.told_exited.clear()
        monitor.sweep_if_due(clock.now + 2 * SAFETY_SWEEP_INTERVAL)
        assert set(loop.settled) == {held_running, held_exited, named_by_pid}
        assert loop.told_exited == []
    finally:
        for ref in (*refs, by_pid):
            ref.close()
        children[0].kill()
        for child in children:
            child.wait(10)


class _ReapingLoop(_Loop):
    """A loop that settles a watch by reaping its child for real, if it has exited."""

    def settle_now(self, watch: object, *, look_first: bool = True) -> bool:
        super().settle_now(watch, look_first=look_first)
        pid = watch.pid  # type: ignore[attr-defined]
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:
            return False


@contextlib.contextmanager
def _children(*commands: list[str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``commands`` in this order; kill and forget them all after."""
    started = [subprocess.Popen(command) for command in commands]
    try:
        yield started
    finally:
        for child in started:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)
            child.returncode = -9  # reaped here or by the loop


def _named_by_pid(monitor: SweepMonitor, children: list[subprocess.Popen[bytes]]) -> list[Any]:
    watches = []
    for child in children:
        watch = _watch(ProcessRef.open(child.pid, pidfd=False))
        monitor.add(watch)
        watches.append(watch)
    return watches


def test_a_sweep_settles_only_the_children_the_kernel_names_as_exited() -> None:
    """Named by pid, the children are not looked at one by one: the kernel names the exited.

    A sweep cost a system call per child watched (and more Python), whether it had exited
    or not: 11 ms at the median from SIGKILL to on_exit with 4,000 idle children.
    """
    loop, clock = _ReapingLoop(), _Clock()
    monitor = SweepMonitor(loop, clock.now, clock=clock)  # type: ignore[arg-type]
    with _children(*[["sleep", "30"]] * 5, ["true"]) as children:
        *running, exited = _named_by_pid(monitor, children)
        eventually(lambda: exited.notice.peek() is not None, 30, "true to exit")
        loop.settled.clear()
        assert monitor.sweep() == 1
        assert loop.settled == [exited]
        # The next looks at nobody: nothing has exited.
        loop.settled.clear()
        assert monitor.sweep() == 0
        assert loop.settled == []
        for watch in running:
            watch.notice.close()


@pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfd")
def test_a_removed_watch_leaves_nothing_for_a_sweep_to_ask_about() -> None:
    """The sweep's indexes (by pidfd, by pid) lose a watch with the watch set."""
    monitor, _, _ = _monitor()
    with _children(["sleep", "30"], ["sleep", "30"]) as children:
        held = _watch(SweptRef.open(children[0].pid, pidfd=True))
        named = _watch(ProcessRef.open(children[1].pid, pidfd=False))
        for watch in (held, named):
            monitor.add(watch)
        assert monitor._held == {held.notice.fileno: held}
        assert monitor._named == {named.pid: named}
        for watch in (held, named):
            monitor.remove(watch)
            watch.notice.close()
        assert monitor._held == {} and monitor._named == {} and monitor.count() == 0


def test_an_exited_child_that_is_not_swept_makes_the_sweep_look_at_each() -> None:
    """Another waiter's zombie, named first, would hide ours: every child is looked at then."""
    loop, clock = _ReapingLoop(), _Clock()
    monitor = SweepMonitor(loop, clock.now, clock=clock)  # type: ignore[arg-type]
    # The stranger's child is the oldest: the kernel names it first, every time.
    with _children(["true"], ["sleep", "30"], ["sleep", "30"], ["true"]) as children:
        stranger = children[0]
        watches = _named_by_pid(monitor, children[1:])
        exited = watches[-1]
        for pid in (stranger.pid, exited.pid):
            eventually(lambda pid=pid: _process.peek_pid(pid) is not None, 30, "an exit")
        loop.settled.clear()
        assert monitor.sweep() == 1
        assert set(loop.settled) == set(watches)
        assert _process.peek_pid(stranger.pid) is not None, "reaped a child not swept"
        for watch in watches:
            watch.notice.close()


def test_wakeups_faster_than_the_timer_still_look_at_every_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every SAFETY_SWEEP_INTERVAL a sweep looks at each child, wakeups or not.

    That is how a child named by pid that another waiter reaped is found (it is no zombie
    for the kernel to name); with SIGCHLD coming faster than the timer, no timer sweep came.
    """
    monitor, _, clock = _monitor()
    monitor.add(_watch())
    asked_thorough: list[bool] = []

    def sweep(*, thorough: bool = False) -> int:
        asked_thorough.append(thorough)
        return 1  # an exit each time: no quiet period

    monkeypatch.setattr(monitor, "sweep", sweep)
    now = clock.now
    for _ in range(10):  # 0.3 s of wakeups, 30 ms apart
        now += 0.03
        monitor.note_wakeup()
        monitor.sweep_if_due(now)
    assert len(asked_thorough) == 10
    assert asked_thorough.count(True) >= 2, "no sweep looked at every child"


@pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfd")
def test_a_lone_child_holding_a_pidfd_is_reaped_without_a_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One held pidfd alone is not polled: the child is settled at once, without a look.

    Reaping costs a system call, as the poll would; for a program that runs one command at
    a time the poll was one more call between the exit and on_exit.
    """
    monitor, loop, _ = _monitor()
    child = subprocess.Popen(["sleep", "30"])
    ref = SweptRef.open(child.pid, pidfd=True)
    try:
        watch = _watch(ref)
        monitor.add(watch)
        loop.settled.clear()

        def no_poll() -> None:
            raise AssertionError("polled a lone pidfd")

        monkeypatch.setattr(select, "poll", no_poll)
        monitor.sweep()
        assert loop.settled == loop.told_exited == [watch]
    finally:
        ref.close()
        child.kill()
        child.wait(10)


@pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfd")
def test_an_exit_that_a_pidfd_announced_is_reaped_without_a_look_first(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its pidfd readable, a spawned child is reaped at once: no peek on the way to on_exit."""
    looked_at: list[int] = []
    peek = ProcessRef.peek

    def counting_peek(ref: ProcessRef, *, exact: bool = True) -> int | None:
        looked_at.append(ref.pid)
        return peek(ref, exact=exact)

    monkeypatch.setattr(ProcessRef, "peek", counting_peek)
    heard: list[ExitStatus] = []
    done = threading.Event()

    def on_exit(status: ExitStatus) -> None:
        heard.append(status)
        done.set()

    with Reaper(backend=backend, on_exit=on_exit) as reaper:  # type: ignore[arg-type]
        child = reaper.spawn(sh("read line; exit 4"), stdin=subprocess.PIPE)
        looked_at.clear()  # the sigchld backend looks once as it adds a child
        stdin = child.popen.stdin  # type: ignore[union-attr]
        assert stdin is not None
        stdin.write(b"go\n")
        stdin.close()
        assert done.wait(20), "no on_exit"
        assert [status.returncode for status in heard] == [4]
        assert looked_at == []
        assert child.wait(10).returncode == 4


@pytest.mark.skipif(not HAS_PIDFD, reason="needs pidfd")
def test_a_stale_exit_hint_does_not_wait_for_a_running_childs_popen_lock() -> None:
    """Told "exited" while its own popen.wait() holds Popen's lock, a running child is only
    looked at: no wait for the lock, no move to the sweeps.

    A readiness meant for an earlier holder of its pidfd's number can reach it; waiting for
    the lock there would stall the reaping thread and then demote the child to the sweeps.
    """
    with Reaper(backend="pidfd") as reaper:
        child = reaper.spawn(sh("read line; exit 3"), stdin=subprocess.PIPE)
        popen = child.popen
        assert popen is not None and popen.stdin is not None
        waiter = threading.Thread(target=popen.wait)
        waiter.start()
        try:
            eventually(lambda: popen._waitpid_lock.locked(), what="the owner to hold the lock")
            # Called with the hint, as a stale readiness would; nothing has exited.
            engine = engine_now()
            assert not engine.settle(watch_of(child), look_first=False)
            assert watch_of(child).monitor is not engine.monitors.sweep, "moved to the sweeps"
        finally:
            popen.stdin.write(b"go\n")
            popen.stdin.close()
            waiter.join(10)
        assert child.wait(10).returncode == 3
