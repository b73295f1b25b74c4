"""The portable backend: SIGCHLD wakeups and a timer, then a non-blocking check of each child.

Serves macOS, kernels without pidfd, children whose pidfd could not be opened (EMFILE), and
children whose pidfd the relay held when it died. It never reaps with waitpid(-1): each child
is reaped on its own through its ProcessRef, so a stolen status is never mistaken for another
child's that took the pid (issue 11, race 6). Which children to look at on a wakeup, the
kernel says (SweepMonitor.sweep): a sweep costs a system call per exit, not one per child
watched (dotnet/corefx #26291 shows why that matters), but for the sweep that looks at every
one, at least every SAFETY_SWEEP_INTERVAL.

Where pidfds work, up to SWEPT_PIDFD_LIMIT of this backend's children at a time hold one
(:func:`open_ref`): checking and reaping through it needs no identity check, which by pid
costs a pidfd opened, compared and closed per registration and per reap. The rest are named
by pid and identity (pidfs inode number or start time), so the backend's descriptors stay
bounded however many children it watches.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import TYPE_CHECKING, Final

from .. import _fds, _process, _sighandler
from .._process import OUT_OF_DESCRIPTORS, ProcessRef, can_peek

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._watch import Watch
    from .loop import Loop

#: How often swept children are checked even without a wakeup: a Python-level SIGCHLD handler
#: cannot run while the main thread sits in a long C call, so the timer is what bounds the delay.
SAFETY_SWEEP_INTERVAL: Final = 0.1

#: The first pause after a sweep triggered by a wakeup that found nothing. It doubles while
#: wakeups keep finding nothing, up to SAFETY_SWEEP_INTERVAL, so a storm of spurious SIGCHLD
#: cannot spin a core (go-reap PR #1); a sweep that finds an exit resets it.
_FIRST_QUIET_PERIOD: Final = 0.001

#: How many children watched by sweeps may hold a pidfd at once (see open_ref).
SWEPT_PIDFD_LIMIT: Final = 64


class _PidfdQuota:
    """Counts the pidfds that swept children hold, up to a limit; per process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._held = 0

    def take(self) -> bool:
        """Count one more pidfd if the limit allows it."""
        with self._lock:
            if self._held >= self.limit:
                return False
            self._held += 1
            return True

    def give_back(self, generation: int) -> None:
        """One pidfd taken in fork generation ``generation`` is closed."""
        with self._lock:
            if generation == _fds.generation():  # else counted by the parent process
                self._held -= 1

    @property
    def held(self) -> int:
        """How many are held now."""
        return self._held

    def reset_after_fork(self) -> None:
        """In a forked child: its descriptors are closed, and the lock may have been held."""
        self._lock = threading.Lock()
        self._held = 0


_quota = _PidfdQuota(SWEPT_PIDFD_LIMIT)
os.register_at_fork(after_in_child=_quota.reset_after_fork)


class SweptRef(ProcessRef):
    """A child named by a pidfd that the sweeps check, not the poller (see :func:`open_ref`)."""

    __slots__ = ("_counted_in",)

    def __init__(self, pid: int, fd: int | None, start: int | None, **kwargs: int | None) -> None:
        super().__init__(pid, fd, start, **kwargs)
        #: The fork generation in which its pidfd counts toward SWEPT_PIDFD_LIMIT (set by
        #: open_ref once it is open); None once given back, or never counted.
        self._counted_in: int | None = None

    def close(self) -> None:
        """Close the pidfd, and let another swept child hold one."""
        counted_in, self._counted_in = self._counted_in, None
        super().close()
        if counted_in is not None:
            _quota.give_back(counted_in)

    def recover(self) -> None:
        """None: with this backend a status that another waiter took is reported lost.

        Its pidfd could give the status back (Linux 6.15+), but only some of the backend's
        children hold one, and the answer must not depend on which.
        """


def open_ref(pid: int) -> ProcessRef:
    """Name the unreaped child ``pid`` for the sweeps.

    With a pidfd while fewer than SWEPT_PIDFD_LIMIT swept children hold one (where pidfds
    work and one can be had); otherwise by pid and identity (see ProcessRef.open).

    Raises:
        ChildProcessError: ``pid`` is not an unreaped child of this process.
    """
    # Asked through the module, so that one patch of the probe turns pidfds off everywhere.
    if _process.can_use_pidfd() and _quota.take():
        generation = _fds.generation()
        try:
            ref = SweptRef.open(pid, pidfd=True)
        except BaseException as err:
            _quota.give_back(generation)
            if not isinstance(err, OSError) or err.errno not in OUT_OF_DESCRIPTORS:
                raise  # ECHILD (not our child) included
        else:
            ref._counted_in = generation
            return ref
    return ProcessRef.open(pid, pidfd=False)


def _still_running(watch: Watch) -> bool:
    """Whether ``watch``'s child is seen running now (False: exited, gone, or can't tell).

    Read under the watch's lock, as every read of a child is: once the watch is swept, the
    reaping thread may settle it and close its pidfd at any moment. If the lock is busy
    (being settled, or demoted by this very thread) the answer is "can't tell".
    """
    if not can_peek() or not watch.lock.acquire(blocking=False):
        return False
    try:
        notice = watch.notice
        if not watch.watching or not isinstance(notice, ProcessRef):
            return False
        return notice.peek(exact=False) is None
    except OSError:  # ProcessGone (reaped), or anything unexpected: let a sweep look
        return False
    finally:
        watch.lock.release()


class SweepSchedule:
    """When to sweep: on wakeups, but not in a storm, and on a timer.

    A wakeup asks for a sweep. After a sweep asked for by a wakeup that found nothing, the
    next one asked for by a wakeup waits a quiet period that doubles up to
    SAFETY_SWEEP_INTERVAL, so a storm of spurious SIGCHLD costs a bounded number of sweeps
    (go-reap PR #1); a sweep that finds an exit ends the quiet period, and a timer sweep that
    finds nothing leaves it as it is. The timer sweeps every SAFETY_SWEEP_INTERVAL regardless,
    which is what bounds the delay when no handler can run (prior-art pitfall 4).
    """

    def __init__(self, now: float) -> None:
        self._last_sweep = now
        self._quiet_period = 0.0
        self._quiet_until = now
        self._pending = False

    def timeout(self, now: float) -> float:
        """Seconds until the next sweep is due."""
        deadline = self._last_sweep + SAFETY_SWEEP_INTERVAL
        if self._pending:
            deadline = min(deadline, self._quiet_until)
        return max(0.0, deadline - now)

    def note_wakeup(self) -> None:
        """Something may have exited: ask for a sweep."""
        self._pending = True

    @property
    def asked(self) -> bool:
        """Whether a wakeup has asked for a sweep since the last one."""
        return self._pending

    def is_due(self, now: float) -> bool:
        """Whether a sweep should run now."""
        return (self._pending and now >= self._quiet_until) or (
            now - self._last_sweep >= SAFETY_SWEEP_INTERVAL
        )

    def record_sweep(self, now: float, found: int) -> None:
        """A sweep ran at ``now`` and reaped ``found`` children."""
        asked = self._pending
        self._last_sweep = now
        self._pending = False
        if found:
            self._quiet_period = 0.0
        elif asked:
            # A wakeup for nothing: perhaps a storm of them. A timer sweep that finds nothing
            # is no such sign: counted too, a few quiet seconds made the next exit's SIGCHLD
            # wait up to SAFETY_SWEEP_INTERVAL for its sweep.
            self._quiet_period = min(
                max(self._quiet_period * 2, _FIRST_QUIET_PERIOD), SAFETY_SWEEP_INTERVAL
            )
        self._quiet_until = now + self._quiet_period

    def record_idle(self, now: float) -> None:
        """A sweep was due at ``now`` but nothing was watched: no sign of a storm.

        The next wakeup sweeps at once (a spawn's child may exit a moment later).
        """
        self._last_sweep = now
        self._pending = False
        self._quiet_period = 0.0
        self._quiet_until = now


class SweepMonitor:
    """Watches the children that are not polled: each is checked on every sweep.

    The reaping thread arms the timer while anything is watched, and for one
    SAFETY_SWEEP_INTERVAL after the last watch left: a program that spawns one short-lived
    child after another then spawns each without waking the thread (its exit's SIGCHLD
    does), at the price of a sweep or two of nothing once it stops.
    """

    def __init__(
        self, loop: Loop, now: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._loop = loop
        self._clock = clock
        self._lock = threading.Lock()
        #: The watches: those that hold a pidfd by it (their slot), the rest by pid, so that
        #: a sweep asks for what it needs without a pass over every watch.
        self._held: dict[int, Watch] = {}
        self._named: dict[int, Watch] = {}
        self._schedule = SweepSchedule(now)
        #: Whether the reaping thread's current wait ends in time for a timer sweep (it
        #: asked timeout() while something was swept, or soon after): a child added
        #: meanwhile is swept by then without a wakeup.
        self._timer_armed = False
        #: When the last watch left (by ``clock``): the timer stays armed for one interval
        #: after, so that the next spawn of a busy program need not wake the thread.
        self._emptied_at = float("-inf")
        #: When a sweep last looked at every child (see sweep()).
        self._scanned_at = now
        #: Sweeps so far (read by tests of the storm guard).
        self.sweeps = 0

    @property
    def active(self) -> bool:
        """Whether any child is watched this way (then SIGCHLD must wake the loop)."""
        return bool(self._held or self._named)

    def add(self, watch: Watch) -> None:
        """Check ``watch`` on every sweep from now on."""
        notice = watch.notice
        # A swept pidfd stays open, and its number this watch's, until the watch is removed.
        fd = notice.fileno if isinstance(notice, SweptRef) else None
        with self._lock:
            armed = self._timer_armed
            first = not self.active
            if fd is None:
                self._named[watch.pid] = watch
            else:
                self._held[fd] = watch
            watch.monitor, watch.slot = self, fd
        if first:  # SIGCHLD must wake the loop from now on (see remove())
            self._loop.sweep_needed()
        # From now on its exit raises a SIGCHLD that wakes a sweep (where the handler is
        # installed; else the timer finds it). One that came before (it has exited already; a
        # demoted watch has) woke nobody for it: wake the sweep then. So does a reaping thread
        # that sleeps with no sweep timer (nothing swept lately): the timer is what finds an
        # exit while the main thread cannot run the handler. Else a child seen running needs
        # no wakeup, and spawn() saves one.
        if not armed or not _still_running(watch):
            _sighandler.wake()

    def remove(self, watch: Watch) -> None:
        """Stop checking ``watch`` (settled)."""
        with self._lock:
            # Only if it is still the one listed: a settled watch's pid may be a new watch's
            # already (the engine lets a new child take the pid of one being settled).
            fd = watch.slot
            if isinstance(fd, int):
                if self._held.get(fd) is watch:
                    del self._held[fd]
            elif self._named.get(watch.pid) is watch:
                del self._named[watch.pid]
            last = not self.active
            if last:
                self._emptied_at = self._clock()
        watch.monitor = None
        # Only a change between empty and not changes what SIGCHLD must do; the loop reads
        # the set's state when told, so the last of two racing calls sees the latest one.
        if last:
            self._loop.sweep_needed()

    def timeout(self, now: float) -> float | None:
        """Seconds until the next sweep is due; None when nothing is swept, nor was lately.

        Lately: within the last SAFETY_SWEEP_INTERVAL. The reaping thread asks this before
        each wait: a timer sweep is armed (or not) until it asks again.
        """
        with self._lock:
            self._timer_armed = self.active or (now - self._emptied_at < SAFETY_SWEEP_INTERVAL)
        return self._schedule.timeout(now) if self._timer_armed else None

    def note_wakeup(self) -> None:
        """A SIGCHLD (or another wakeup) came: something may have exited."""
        self._schedule.note_wakeup()

    def sweep_if_due(self, now: float) -> None:
        """Check every swept child if a sweep is due."""
        if not self._schedule.is_due(now):
            return
        if self.active:
            # The timer's sweep looks at every child (see sweep()), and so does a sweep asked
            # for by a wakeup when wakeups come too often for the timer's turn to come.
            thorough = not self._schedule.asked or now - self._scanned_at >= SAFETY_SWEEP_INTERVAL
            if thorough:
                self._scanned_at = now
            self._schedule.record_sweep(now, self.sweep(thorough=thorough))
        else:
            self._schedule.record_idle(now)

    def sweep(self, *, thorough: bool = False) -> int:
        """Check the swept children now; return how many were settled.

        Not ``thorough``, a child is looked at only on a sign that it exited. The children
        that hold a pidfd are asked all at once, with one poll() of their pidfds (readable
        once the process has exited, or been reaped by another waiter), and only those that
        answer are settled, without a look first; one alone is not asked: reaping it costs a
        system call, as asking would, and one fewer when it has exited (a program that runs
        one command at a time). The children named by pid are found through the kernel,
        which names a child of the process that has exited (waitid(P_ALL) with WNOWAIT:
        nothing is reaped): that one is settled, then the next it names, until it names
        none. A system call per exit, where looking at each child cost one per child
        (dotnet/corefx #26291). A child it names that is not swept here (another waiter's,
        the relay), or that does not settle, hides every later one (it names the same child
        until it is reaped, pitfall 2): then each one is looked at.

        ``thorough``: look at every child, pidfd or not. The net under readiness (a pidfd's
        number closed behind our back and reused, a kernel whose poll lagged), and how a
        child named by pid that another waiter reaped is found: it is no zombie to name, and
        its pid may name another child of ours by now, so only its owner's record (a Popen's
        returncode) or a look at it by identity tells.
        """
        self.sweeps += 1
        with self._lock:
            held = dict(self._held)  # at most SWEPT_PIDFD_LIMIT
            named = bool(self._named)
        # A pidfd's number is closed only once its watch is removed: one closed or reused
        # since the copy can only skip a settled watch, or check one for nothing
        # (settle_now() looks under the watch's lock).
        if thorough:
            settled = sum(self._loop.settle_now(watch) for watch in held.values())
        else:
            settled = self._settle_readable(held)
        if not named:
            return settled
        hidden = True
        if can_peek():
            found, hidden = self._settle_exited()
            settled += found
        if hidden or thorough:
            with self._lock:
                candidates = list(self._named.values())
            for watch in candidates:
                settled += self._loop.settle_now(watch)
        return settled

    def _settle_readable(self, by_fd: dict[int, Watch]) -> int:
        """Settle the children whose pidfd (the keys) is readable; return how many."""
        if len(by_fd) == 1:
            (watch,) = by_fd.values()
            return self._loop.settle_now(watch, look_first=False)
        settled = 0
        if by_fd:
            poller = select.poll()
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(0):  # POLLNVAL (closed meanwhile) included: check it
                settled += self._loop.settle_now(by_fd[fd], look_first=False)
        return settled

    def _settle_exited(self) -> tuple[int, bool]:
        """Settle the children named by pid that the kernel names as exited, one by one.

        Returns:
            How many were settled, and whether the kernel named a child that this did not
            settle (not swept by pid here, or named again after its turn), which may hide
            others.
        """
        settled = 0
        named: set[int] = set()
        while True:
            pid = _process.exited_child()
            if pid is None:
                return settled, False
            with self._lock:
                watch = self._named.get(pid)
            if watch is None or pid in named:
                return settled, True
            named.add(pid)  # each one once: the loop ends
            settled += self._loop.settle_now(watch)

    def count(self) -> int:
        """How many children are watched this way."""
        with self._lock:
            return len(self._held) + len(self._named)
