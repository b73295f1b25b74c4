"""The relay: pidfds of long-lived children held in a helper process, every status still exact.

The engine's thresholds are lowered here (lend past 4 pidfds, keep 2) so that a handful of
children exercises what thousands would in production.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given

from zombiereaper import Child, Reaper, _engine, _fds
from zombiereaper._backends import relay as relay_module
from zombiereaper._backends.relay_main import __file__ as RELAY_SCRIPT

from .helpers import (
    FORK_IN_THREADED_PROCESS,
    HAS_PIDFD,
    eventually,
    fork_waiting,
    is_zombie_or_gone,
    pid_alive,
    pidfds_open,
    proc_status,
    read_fork_report,
    sh,
    zombie_children,
)
from .internals import (
    engine_now,
    lent_count,
    lent_pids,
    lower_relay_thresholds,
    relay_pid,
    set_relay_timing,
)
from .strategies import children_plans
from .test_stress import STRESS, run_burst

pytestmark = pytest.mark.skipif(not HAS_PIDFD, reason="the relay holds pidfds")

ABOVE = 4
KEEP = 2


@pytest.fixture(autouse=True)
def lend_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lend past ABOVE pidfds, down to KEEP."""
    lower_relay_thresholds(monkeypatch, ABOVE, KEEP)


def _relay_pid() -> int:
    pid = relay_pid()
    assert pid is not None, "no relay running"
    return pid


def _lent() -> int:
    return lent_count()


def _relay_object() -> relay_module.Relay | None:
    return engine_now().monitors.pidfd._relay


#: The stdin pipes of this test's waiting children: closed at its end, whatever happened.
_STDINS: list[Any] = []


@pytest.fixture(autouse=True)
def close_waiting_stdins() -> Iterator[None]:
    """Close every waiting child's stdin after the test, also when it failed half-way.

    A failed test would otherwise leave its pipes to the garbage collector, and another
    test's ResourceWarning check would blame itself for them.
    """
    yield
    while _STDINS:
        _STDINS.pop().close()


def _waiting(reaper: Reaper, code: int) -> Child:
    """A child that exits with ``code`` once its stdin closes."""
    child = reaper.spawn(sh(f"read line; exit {code}"), stdin=subprocess.PIPE)
    assert child.popen is not None
    _STDINS.append(child.popen.stdin)
    return child


def _release(child: Child) -> None:
    popen = child.popen
    assert popen is not None and popen.stdin is not None
    popen.stdin.close()


def _started_relay() -> relay_module.Relay:
    """The engine's relay, once it has started."""
    relay = eventually(_relay_object, what="the relay to start")
    assert relay is not None
    return relay


def test_the_relay_returns_a_pidfd_when_its_child_exits_and_exits_on_eof() -> None:
    """The protocol alone: hello, lend, exit, the same process's pidfd back (close-on-exec)."""
    import select

    relay = relay_module.Relay.start()
    popen = subprocess.Popen(sh("read line; exit 9"), stdin=subprocess.PIPE)
    try:
        ready_at_start = relay.ready
        ready, _, _ = select.select([relay.fileno()], [], [], 10)
        assert ready, "no hello from the relay within 10 s"
        assert relay.receive() == ([], True)
        assert (ready_at_start, relay.ready) == (False, True)
        fd = os.pidfd_open(popen.pid)
        assert relay.lend([(77, fd)]) == 1
        os.close(fd)
        assert popen.stdin is not None
        popen.stdin.close()
        ready, _, _ = select.select([relay.fileno()], [], [], 10)
        assert ready, "the relay said nothing within 10 s"
        returned, alive = relay.receive()
        assert alive
        [(token, back)] = returned
        assert token == 77 and back is not None
        try:
            assert not os.get_inheritable(back)
            # It names the same child: waitid through it reads (and here reaps) exit code 9.
            result = os.waitid(os.P_PIDFD, back, os.WEXITED)
            assert result is not None and (result.si_pid, result.si_status) == (popen.pid, 9)
        finally:
            _fds.close(back, _fds.generation())  # received, so tracked: a fork would close it
        popen.returncode = 9  # reaped above, through the pidfd
    finally:
        if popen.returncode is None:
            popen.kill()
            popen.wait()
        assert relay.close() == 0


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    with Reaper(backend="pidfd") as reaper:
        yield reaper


def test_oldest_pidfds_go_to_the_relay_and_come_back_when_their_children_exit(
    reaper: Reaper,
) -> None:
    """Past the threshold the oldest pidfds leave this process; every exit is still exact."""
    children = [_waiting(reaper, code) for code in range(30)]
    eventually(lambda: _lent() >= 30 - ABOVE, what="the oldest pidfds to be lent")
    relay = psutil.Process(_relay_pid())
    assert relay.ppid() == os.getpid()
    assert relay.cmdline()[-2] == RELAY_SCRIPT
    # The relay takes the pidfds, and the engine closes its copies, just after lending them.
    eventually(lambda: pidfds_open() <= ABOVE, what="the lent pidfds to be closed here")
    eventually(lambda: pidfds_open(relay.pid) == _lent(), what="the relay to hold them")
    # The oldest went: the youngest are the ones still watched here.
    lent = lent_pids()
    assert lent == {child.pid for child in children[: len(lent)]}

    for child in reversed(children):
        _release(child)
    assert [child.wait(10).returncode for child in children] == list(range(30))
    assert _lent() == 0
    eventually(lambda: pidfds_open() == 0, what="the returned pidfds to be closed")
    # The relay closes its copy just after sending it back.
    eventually(lambda: pidfds_open(relay.pid) == 0, what="the relay to close its copies")
    assert not zombie_children()


def test_a_lent_child_is_read_at_once_even_when_the_relay_is_slow(reaper: Reaper) -> None:
    """poll() and reap() find a lent child's exit by pid without waiting for the relay."""
    children = [_waiting(reaper, 40 + n) for n in range(8)]
    eventually(lambda: _lent() >= 8 - ABOVE, what="pidfds to be lent")
    oldest = children[0]
    relay_pid = _relay_pid()
    os.kill(relay_pid, signal.SIGSTOP)  # the relay can tell nobody anything now
    try:
        _release(oldest)
        eventually(lambda: is_zombie_or_gone(oldest.pid), what="the lent child to exit")
        status = oldest.poll()
        assert status is not None and status.returncode == 40
        _release(children[1])
        eventually(lambda: is_zombie_or_gone(children[1].pid), what="another lent child to exit")
        assert [s.pid for s in reaper.reap()] == [children[1].pid]
    finally:
        os.kill(relay_pid, signal.SIGCONT)
    # The relay now hands back pidfds for children already settled: they are closed.
    for child in children[2:]:
        _release(child)
    assert [child.wait(10).returncode for child in children] == [40 + n for n in range(8)]
    eventually(lambda: pidfds_open() == 0, what="every pidfd to be closed")


def test_signals_reach_a_lent_child_without_the_relay(reaper: Reaper) -> None:
    """terminate(), kill() and send_signal() work while the pidfd is away, relay stopped."""
    children = [_waiting(reaper, 0) for _ in range(8)]
    eventually(lambda: _lent() >= 8 - ABOVE, what="pidfds to be lent")
    away = lent_pids()
    lent = [child for child in children if child.pid in away][:3]
    relay_pid = _relay_pid()
    os.kill(relay_pid, signal.SIGSTOP)
    try:
        lent[0].terminate()
        lent[1].kill()
        lent[2].send_signal(signal.SIGUSR1)
        for child in lent:
            eventually(functools.partial(is_zombie_or_gone, child.pid), what="a signalled exit")
    finally:
        os.kill(relay_pid, signal.SIGCONT)
    assert [child.wait(10).signal for child in lent] == [
        signal.SIGTERM,
        signal.SIGKILL,
        signal.SIGUSR1,
    ]
    for child in children:
        _release(child)
    assert all(child.wait(10).returncode == 0 for child in children if child not in lent)


def test_owners_waiting_on_lent_children_keep_their_codes(reaper: Reaper) -> None:
    """popen.wait() and Process.join() on lent children still get the real codes."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    popens = [
        subprocess.Popen(sh(f"read line; exit {20 + n}"), stdin=subprocess.PIPE) for n in range(6)
    ]
    children = [reaper.watch(popen) for popen in popens]
    process = context.Process(target=sys.exit, args=(33,))
    process.start()
    worker = reaper.watch(process)
    eventually(lambda: _lent() >= 7 - ABOVE, what="pidfds to be lent")
    codes: dict[int, int] = {}

    def owner() -> None:
        for popen in popens:
            codes[popen.pid] = popen.wait(10)

    thread = threading.Thread(target=owner)
    thread.start()
    for popen in popens:
        assert popen.stdin is not None
        popen.stdin.close()
    process.join(10)
    thread.join(10)
    assert [codes[popen.pid] for popen in popens] == [20 + n for n in range(6)]
    assert [child.wait(10).returncode for child in children] == [20 + n for n in range(6)]
    assert process.exitcode == 33
    assert worker.wait(10).returncode == 33


def test_forkserver_sentinels_are_not_counted_nor_lent(reaper: Reaper) -> None:
    """Workers watched through their sentinels (not our children) start no relay."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    release = context.Event()
    workers = [context.Process(target=release.wait, args=(20,)) for _ in range(ABOVE + 3)]
    for worker in workers:
        worker.start()
    watched = [reaper.watch(worker) for worker in workers]
    engine = engine_now()
    assert engine.monitors.sentinel.count() == len(workers)
    assert engine.monitors.pidfd.count() == (0, 0)
    # Whatever lending pass a watch() asked for has run once this callback has.
    done = threading.Event()
    engine.call_soon(done.set)
    assert done.wait(10)
    assert relay_pid() is None
    release.set()
    for worker in workers:
        worker.join(10)
    assert [child.wait(10).returncode for child in watched] == [0] * len(workers)


def test_a_dead_relay_loses_nothing(reaper: Reaper, caplog: pytest.LogCaptureFixture) -> None:
    """SIGKILL the relay: it is reaped, its children are watched by pid, a new one takes over."""
    children = [_waiting(reaper, 60 + n) for n in range(10)]
    eventually(lambda: _lent() >= 10 - ABOVE, what="pidfds to be lent")
    first = _relay_pid()
    with caplog.at_level(logging.WARNING, logger="zombiereaper"):
        os.kill(first, signal.SIGKILL)
        eventually(
            lambda: f"relay (pid {first}) exited, exit status -9" in caplog.text,
            what="the engine to notice and say so",
        )
    assert relay_pid() is None
    assert _lent() == 0
    eventually(lambda: not pid_alive(first) and first not in {p.pid for p in zombie_children()})
    # Children started now are lent to a second relay.
    later = [_waiting(reaper, 70 + n) for n in range(10)]
    eventually(lambda: relay_pid() is not None and _lent() > 0, what="a new relay")
    assert _relay_pid() != first
    for child in children + later:
        _release(child)
    assert [child.wait(10).returncode for child in children] == [60 + n for n in range(10)]
    assert [child.wait(10).returncode for child in later] == [70 + n for n in range(10)]


def test_the_relay_exits_with_the_last_reaper() -> None:
    """Uninstalling the last Reaper closes the relay's socket and reaps it."""
    with Reaper(backend="pidfd") as reaper:
        children = [_waiting(reaper, 0) for _ in range(8)]
        eventually(lambda: _lent() > 0, what="pidfds to be lent")
        relay = _relay_pid()
        for child in children:
            _release(child)
        for child in children:
            child.wait(10)
    assert not pid_alive(relay)
    assert relay not in {proc.pid for proc in psutil.Process().children()}


def test_the_relay_starts_with_no_signal_blocked_or_ignored() -> None:
    """The relay drops the blocked and ignored signals it inherits: SIGTERM still stops it."""
    blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    ignored = {number: signal.signal(number, signal.SIG_IGN) for number in blocked}
    try:
        # The reaping thread starts now, with this thread's mask.
        with Reaper(backend="pidfd") as reaper:
            children = [_waiting(reaper, 0) for _ in range(8)]
            eventually(lambda: _lent() > 0, what="pidfds to be lent")
            relay = _relay_pid()
            reaping_thread = engine_now().thread.native_id
            thread_blocked = int(proc_status(f"self/task/{reaping_thread}")["SigBlk"], 16)
            assert thread_blocked & (1 << (signal.SIGTERM - 1))

            mask = sum(1 << (number - 1) for number in blocked)

            def relay_blocks_and_ignores_none() -> bool:
                fields = proc_status(relay)
                return int(fields["SigBlk"], 16) == 0 and not int(fields["SigIgn"], 16) & mask

            eventually(relay_blocks_and_ignores_none, what="the relay to reset its signals")
            for child in children:
                _release(child)
            assert all(child.wait(10).returncode == 0 for child in children)
    finally:
        for number, handler in ignored.items():
            signal.signal(number, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def test_without_a_relay_the_pidfds_stay_here(
    reaper: Reaper, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay that cannot start costs a warning; the pidfds stay and every status arrives."""
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with caplog.at_level(logging.WARNING, logger="zombiereaper"):
        children = [_waiting(reaper, n) for n in range(12)]
        eventually(lambda: "could not start its relay" in caplog.text, what="the warning")
    assert relay_pid() is None
    assert pidfds_open() == 12
    for child in children:
        _release(child)
    assert [child.wait(10).returncode for child in children] == list(range(12))


def test_a_relay_that_never_says_hello_is_killed_and_gets_nothing(
    reaper: Reaper,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sys.executable that is no Python (uWSGI...) gets no pidfd, and is killed and reaped."""
    host = tmp_path / "host"
    host.write_text('#!/bin/sh\necho started > "$0.log"\nexec sleep 60\n')
    host.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(host))
    set_relay_timing(monkeypatch, hello=0.5)
    with caplog.at_level(logging.WARNING, logger="zombiereaper"):
        children = [_waiting(reaper, n) for n in range(8)]
        eventually(lambda: "did not start within 0.5 s" in caplog.text, what="the warning")
    assert (tmp_path / "host.log").read_text() == "started\n"
    assert relay_pid() is None
    assert _lent() == 0
    assert pidfds_open() == 8
    # No second attempt: more children than the threshold stay here too.
    more = [_waiting(reaper, n) for n in range(8, 12)]
    assert relay_pid() is None
    for child in children + more:
        _release(child)
    assert [child.wait(10).returncode for child in children + more] == list(range(12))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:"):
            inodes.add(link)
    return inodes


def _in_another_thread(action: Callable[[], object]) -> None:
    thread = threading.Thread(target=action)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_a_fork_while_the_relay_starts_does_not_keep_its_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fork between the socket pair and the relay's start leaves the child no copy of it."""
    real_popen = subprocess.Popen
    holder: list[tuple[int, int]] = []

    def fork_first(args: Any, *rest: Any, **kwargs: Any) -> Any:
        if RELAY_SCRIPT in map(str, args) and not holder:
            _in_another_thread(lambda: holder.append(fork_waiting()))
        return real_popen(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", fork_first)
    with Reaper(backend="pidfd") as reaper:
        # No more: a fork while this thread is inside Popen would hold up that Popen (its
        # error pipe is copied into the forked child) until the child exits.
        children = [_waiting(reaper, 0) for _ in range(ABOVE + 1)]
        relay = _started_relay()
        ((pid, pipe),) = holder
        try:
            assert f"socket:[{os.fstat(relay.fileno()).st_ino}]" not in _socket_inodes(pid)
            for child in children:
                child.terminate()  # the holder has copies of the stdin pipes too
            assert all(child.wait(10).signal == signal.SIGTERM for child in children)
        finally:
            os.close(pipe)
            os.waitpid(pid, 0)
        for child in children:
            _release(child)
    # Its socket closed by the uninstall, the relay exited by itself.
    assert relay.close() == 0


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_a_fork_while_the_engine_stops_does_not_keep_the_relay_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fork after the last uninstall began, before the relay closed: the relay still exits."""
    real_close = _engine.Engine._close
    holder: list[tuple[int, int]] = []

    def fork_first(engine: _engine.Engine) -> None:
        _in_another_thread(lambda: holder.append(fork_waiting()))
        real_close(engine)

    reaper = Reaper(backend="pidfd").install()
    children = [_waiting(reaper, 0) for _ in range(8)]
    relay = _started_relay()
    for child in children:
        _release(child)
    assert all(child.wait(10).returncode == 0 for child in children)
    monkeypatch.setattr(_engine.Engine, "_close", fork_first)
    reaper.uninstall()
    ((pid, pipe),) = holder
    try:
        # Exited on its own, as its socket closed: not killed after a timeout.
        assert relay.close() == 0
    finally:
        os.close(pipe)
        os.waitpid(pid, 0)


def test_an_all_scope_sweep_while_the_relay_dies_leaves_it_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Until the engine has reaped its dead relay, no all-scope sweep records or reaps it."""
    heard: list[int] = []
    real_close = relay_module.Relay.close
    swept: list[list[int]] = []

    all_scope = Reaper(backend="pidfd", scope="all", grace=0, on_exit=lambda s: heard.append(s.pid))

    def sweep_first(relay: relay_module.Relay, **kwargs: Any) -> int | None:
        _in_another_thread(lambda: swept.append([s.pid for s in all_scope.reap()]))
        return real_close(relay, **kwargs)

    with all_scope as reaper:
        children = [_waiting(reaper, 0) for _ in range(8)]
        relay = _started_relay()
        monkeypatch.setattr(relay_module.Relay, "close", sweep_first)
        with caplog.at_level(logging.WARNING, logger="zombiereaper"):
            os.kill(relay.pid, signal.SIGKILL)
            eventually(lambda: f"(pid {relay.pid}) exited" in caplog.text, what="the engine")
        monkeypatch.setattr(relay_module.Relay, "close", real_close)
        assert swept and relay.pid not in swept[0]
        for child in children:
            _release(child)
        assert all(child.wait(10).returncode == 0 for child in children)
    assert reaper.status(relay.pid) is None
    assert relay.pid not in heard


def test_the_all_scope_leaves_the_relay_alone() -> None:
    """An all-scope sweep, grace or not, never reaps the relay."""
    with Reaper(backend="pidfd", scope="all", grace=0) as reaper:
        children = [_waiting(reaper, 0) for _ in range(8)]
        eventually(lambda: _lent() > 0, what="pidfds to be lent")
        relay = _relay_pid()
        reaper.reap()
        engine_now().sweep_all_scope(skip_grace=True)
        assert pid_alive(relay)
        assert reaper.status(relay) is None
        for child in children:
            _release(child)
        assert all(child.wait(10).returncode == 0 for child in children)


@pytest.mark.filterwarnings(FORK_IN_THREADED_PROCESS)
def test_a_forked_child_drops_the_relay_and_starts_its_own(reaper: Reaper) -> None:
    """After os.fork() the child has no copy of the relay socket and lends to a relay of its own."""
    children = [_waiting(reaper, 0) for _ in range(8)]
    eventually(lambda: _lent() > 0, what="pidfds to be lent")
    relay = _relay_object()
    assert relay is not None
    socket_fd = relay.fileno()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child, reports through the pipe
        report: dict[str, Any] = {}
        try:
            os.close(read_end)
            try:
                report["socket"] = os.readlink(f"/proc/self/fd/{socket_fd}")
            except OSError:
                report["socket"] = None
            with Reaper(backend="pidfd") as own:
                mine = [_waiting(own, 5) for _ in range(8)]
                eventually(lambda: _lent() > 0, what="pidfds to be lent in the child")
                report["relay_parent"] = psutil.Process(_relay_pid()).ppid()
                for child in mine:
                    _release(child)
                report["codes"] = [child.wait(10).returncode for child in mine]
        except BaseException as err:
            report["error"] = repr(err)
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    report = json.loads(read_fork_report(read_end, pid))
    assert report == {"socket": None, "relay_parent": pid, "codes": [5] * 8}
    # The parent's relay still serves the parent.
    assert _relay_object() is relay
    for child in children:
        _release(child)
    assert all(child.wait(10).returncode == 0 for child in children)


def test_a_relay_out_of_descriptors_refuses_and_nothing_is_lost(
    reaper: Reaper, caplog: pytest.LogCaptureFixture
) -> None:
    """Pidfds the relay cannot take are watched by pid here; every status still arrives."""
    import resource

    first = [_waiting(reaper, n) for n in range(ABOVE + 1)]
    relay = _started_relay()
    # Room for about 8 descriptors beyond what it has open: far fewer than it is sent.
    resource.prlimit(relay.pid, resource.RLIMIT_NOFILE, (16, 16))
    with caplog.at_level(logging.WARNING, logger="zombiereaper"):
        children = first + [_waiting(reaper, n) for n in range(ABOVE + 1, 40)]
        eventually(lambda: "ran out of descriptors" in caplog.text, what="the relay to refuse")
    assert engine_now().monitors.pidfd._relay_full
    assert engine_now().monitors.sweep.count() > 0
    assert pidfds_open(relay.pid) < 16
    for child in children:
        _release(child)
    assert [child.wait(10).returncode for child in children] == list(range(40))


@STRESS
@given(plan=children_plans)
def test_every_child_of_a_burst_is_reaped_exactly_with_the_relay(
    plan: list[tuple[tuple[str, int], float, bool]],
) -> None:
    """The stress burst again, with most pidfds lent while their children live and die."""
    run_burst("pidfd", plan)
