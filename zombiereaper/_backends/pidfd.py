"""The pidfd backend (Linux 5.4+): a descriptor per child, readable once it exits.

Cost per exit is O(1) however many children are alive, and nothing depends on SIGCHLD or the
main thread. The pidfd also names the child exactly (zombiereaper._process.ProcessRef), so
reads, reaps and signals can never reach a process that took its pid.

Past :attr:`PidfdMonitor.lend_above` pidfds, the oldest are lent to the relay (a helper
process, zombiereaper._backends.relay), so that forks in this process stop copying thousands
of descriptors; the relay hands each one back when its child exits. While a pidfd is away its
ProcessRef names the child by pid and start time, read while the pidfd still proved the pid
was the child's. A relay that stops answering pings is declared stuck, killed, and its
children are swept by pid instead (issue 11, race 7).
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from .. import _fds
from .._process import ProcessRef
from . import relay as relay_module

if TYPE_CHECKING:
    from .._watch import Watch
    from .loop import Cancellable, Loop
    from .sigchld import SweepMonitor

logger = logging.getLogger("zombiereaper")

#: After this many relays died or could not start, the engine keeps its pidfds itself.
_RELAY_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class _Lent:
    """A watch's slot while its pidfd is at the relay: the token it was lent under."""

    token: int


class PidfdMonitor:
    """Watches children through their pidfds in the engine's poller, lending the oldest away."""

    #: Holding more pidfds than this, lend the oldest to the relay, down to :attr:`lend_keep`.
    #: Forks copy the descriptor table: a few hundred entries cost little, thousands double
    #: the cost of a Popen (see docs/performance.md).
    lend_above: int = 256
    #: How many pidfds (the youngest) stay in this process after a lending round.
    lend_keep: int = 128
    #: Seconds a new relay has to say hello before it is killed and no other is started.
    relay_hello_timeout: float = 10.0
    #: While pidfds are lent, the relay is pinged this often (seconds)...
    relay_ping_interval: float = 1.0
    #: ...and declared stuck when a ping stays unanswered this long.
    relay_answer_timeout: float = 5.0

    def __init__(self, loop: Loop, fallback: SweepMonitor) -> None:
        self._loop = loop
        self._fallback = fallback
        self._lock = threading.Lock()
        #: Our pidfds in the poller, by descriptor; dicts keep insertion order, so the first
        #: entries are the children watched longest.
        self._here: dict[int, Watch] = {}
        #: token -> watch whose pidfd the relay holds.
        self._lent: dict[int, Watch] = {}
        self._tokens = itertools.count(1)
        self._relay: relay_module.Relay | None = None
        self._relay_attempts = 0
        #: The relay ran out of descriptors once: lend it nothing more (until another starts).
        self._relay_full = False
        self._lending_asked = False
        self._ping_timer: Cancellable | None = None

    # --- watching ---------------------------------------------------------------------------

    def add(self, watch: Watch, fd: int) -> None:
        """Settle ``watch`` when its pidfd ``fd`` turns readable."""
        with self._lock:
            self._here[fd] = watch
            watch.monitor, watch.slot = self, fd
            self._loop.add_reader(fd, lambda: self._loop.settle_now(watch, look_first=False))
            lend = len(self._here) > self.lend_above and not self._lending_asked
            self._lending_asked |= lend
        if lend:
            self._loop.call_soon(self._lend_oldest)

    def remove(self, watch: Watch) -> None:
        """Stop watching ``watch`` (settled, its lock held); the engine closes its pidfd."""
        slot = watch.slot
        with self._lock:
            if isinstance(slot, int) and self._here.get(slot) is watch:
                del self._here[slot]
                self._loop.remove_reader(slot)
            elif isinstance(slot, _Lent):
                # The relay hands the pidfd back when the child exits; nobody will take it.
                self._lent.pop(slot.token, None)
                ref = watch.notice
                if isinstance(ref, ProcessRef):
                    ref.take_back(None)  # nothing will come back for it to read
        watch.monitor = watch.slot = None

    def count(self) -> tuple[int, int]:
        """How many pidfds are here and how many lent."""
        with self._lock:
            return len(self._here), len(self._lent)

    def helper_pids(self) -> frozenset[int]:
        """The relay's pid, while it runs: the engine's own helper, which it reaps itself."""
        relay = self._relay
        return frozenset() if relay is None else frozenset({relay.pid})

    def close(self) -> None:
        """The engine is stopping: kill the relay (its children stay named by pid)."""
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()

    # --- lending to the relay -----------------------------------------------------------------

    def _lend_oldest(self) -> None:
        """Lend the oldest pidfds to the relay, down to lend_keep (on the reaping thread)."""
        self._lending_asked = False
        with self._lock:
            if len(self._here) <= self.lend_above:
                return
            excess = len(self._here) - self.lend_keep
            oldest = list(itertools.islice(self._here.items(), max(0, excess)))
        relay = self._start_relay()
        if relay is None or not relay.ready or self._relay_full:
            return  # once it says hello, _on_relay_readable calls this again
        lent: list[tuple[int, int]] = []
        for fd, watch in oldest:
            with watch.lock:
                ref = watch.notice
                if not watch.watching or watch.slot != fd or not isinstance(ref, ProcessRef):
                    continue
                # Proves the pid is still this running child, or keeps the pidfd: one that
                # has exited is settled through its readable pidfd.
                handed = ref.lend()
                if handed is None:
                    continue
                with self._lock:
                    del self._here[fd]
                    self._loop.remove_reader(fd)
                    token = next(self._tokens)
                    self._lent[token] = watch
                    watch.slot = _Lent(token)
            lent.append((token, handed))
        sent = relay.lend(lent)
        born = _fds.generation()
        for _, fd in lent[:sent]:
            _fds.close(fd, born)  # the relay has its own copy now
        for token, fd in lent[sent:]:
            self._take_back(token, fd)
        self._schedule_ping()

    def _start_relay(self) -> relay_module.Relay | None:
        if self._relay is not None:
            return self._relay
        if self._relay_attempts >= _RELAY_ATTEMPTS or not relay_module.is_available():
            return None
        self._relay_attempts += 1
        try:
            with self._loop.spawning():
                relay = relay_module.Relay.start()
                self._relay = relay
        except Exception as err:  # whatever failed, the pidfds just stay here
            logger.warning(
                "zombiereaper could not start its relay (%s); its pidfds stay in this process",
                err,
            )
            return None
        self._loop.add_reader(relay.fileno(), self._on_relay_readable)
        self._loop.call_later(self.relay_hello_timeout, lambda: self._check_hello(relay))
        return relay

    def _check_hello(self, relay: relay_module.Relay) -> None:
        if self._relay is not relay or relay.ready:
            return
        # Not our relay at all, most likely: sys.executable is not a Python (uWSGI...).
        self._relay_attempts = _RELAY_ATTEMPTS
        self._drop_relay(
            relay,
            f"did not start within {self.relay_hello_timeout:g} s (is {sys.executable!r} "
            "a Python interpreter?); no other is started",
            kill=True,
        )

    def _on_relay_readable(self) -> None:
        relay = self._relay
        if relay is not None:
            self._hear_from_relay(relay)

    def _hear_from_relay(self, relay: relay_module.Relay) -> None:
        """Take back the pidfds of children that exited, and settle those children."""
        was_ready = relay.ready
        returned, alive = relay.receive()
        exited = []
        for token, fd in returned:
            watch = self._take_back(token, fd)
            if watch is not None and fd is not None:
                exited.append(watch)
        lost = sum(fd is None for _, fd in returned)
        if lost and alive:
            self._relay_full = True
            logger.warning(
                "zombiereaper's relay or this process ran out of descriptors; %d children "
                "are watched by pid, and no more pidfds are lent",
                lost,
            )
        if not alive:
            self._drop_relay(relay, "exited")
        elif relay.ready and not was_ready:
            self._lend_oldest()
        for watch in exited:
            self._loop.settle_now(watch)

    def _take_back(self, token: int, fd: int | None) -> Watch | None:
        """Watch a lent child here again: by its pidfd, or by pid when ``fd`` is None."""
        born = _fds.generation()
        with self._lock:
            watch = self._lent.get(token)
        if watch is None:
            # Settled while away (someone asked before the relay answered).
            if fd is not None:
                _fds.close(fd, born)
            return None
        with watch.lock:
            ref = watch.notice
            with self._lock:
                if (
                    self._lent.get(token) is not watch
                    or not watch.watching
                    or not isinstance(ref, ProcessRef)
                ):
                    if fd is not None:
                        _fds.close(fd, born)
                    return None
                del self._lent[token]
                ref.take_back(fd)
                if fd is not None:
                    self._here[fd] = watch
                    watch.slot = fd
                    self._loop.add_reader(
                        fd, lambda: self._loop.settle_now(watch, look_first=False)
                    )
            if fd is None:
                # Named by pid and start time from now on: swept like a sigchld child.
                self._fallback.add(watch)
        return watch

    def _drop_relay(self, relay: relay_module.Relay, what: str, *, kill: bool = False) -> None:
        """The relay is gone (or ``kill``: stuck), with the pidfds it held: sweep by pid."""
        self._loop.remove_reader(relay.fileno())
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        # Reaped before it stops counting as ours: until then the all scope leaves it alone.
        code = relay.close(kill=kill)
        with self._lock:
            self._relay = None
            self._relay_full = False  # a new relay starts with room
            tokens = list(self._lent)
        for token in tokens:
            self._take_back(token, None)
        # Said once it is true: the children are watched by pid when this is logged.
        logger.warning(
            "zombiereaper's relay (pid %d) %s, exit status %s; watching its %d children by pid",
            relay.pid,
            what,
            code,
            len(tokens),
        )

    # --- is the relay still there? ---------------------------------------------------------

    def _schedule_ping(self) -> None:
        if self._ping_timer is None and self._relay is not None and self._lent:
            self._ping_timer = self._loop.call_later(self.relay_ping_interval, self._check_relay)

    def _check_relay(self) -> None:
        """Ping the relay while it holds pidfds; one that does not answer in time is stuck.

        A SIGSTOPped relay never hands a pidfd back: its children would stay zombies, and
        their waiters wait, for as long as it stays stopped (issue 11, race 7).
        """
        self._ping_timer = None
        relay = self._relay
        if relay is None or not self._lent:
            return
        # Read what came first: a pong may be waiting while the reaping thread was busy.
        self._hear_from_relay(relay)
        if self._relay is not relay:
            return
        now = time.monotonic()
        pinged = relay.pinged_at
        if pinged is not None and relay.heard_at < pinged:
            if now - pinged >= self.relay_answer_timeout:
                self._drop_relay(
                    relay,
                    f"did not answer for {self.relay_answer_timeout:g} s (stopped?) and was killed",
                    kill=True,
                )
                return
        else:
            relay.ping()
        self._schedule_ping()
