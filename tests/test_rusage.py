"""Resource usage per child: what the reap itself returns, carried by ExitStatus.

The children measure their own CPU time (not the clock), so that the figures they promise hold
on a busy machine.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import resource
import subprocess
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zombiereaper import ExitStatus, Reaper, ServiceEvent, _process, decode_wait_status
from zombiereaper._status import (
    RUSAGE_LAYOUT,
    _compact,
    _expand,
    compact_usage,
    decode_reaped,
    pack_rusage,
    unpack_rusage,
)

from .helpers import eventually, py, sh

#: A child that spends at least 0.2 s of CPU in user mode and touches 64 MiB, then exits 7.
BUSY = py(
    "import resource\n"
    "memory = bytearray(64 << 20)\n"
    "while resource.getrusage(resource.RUSAGE_SELF).ru_utime < 0.2:\n"
    "    sum(range(10_000))\n"
    "raise SystemExit(7)\n"
)
MIB = 1 << 20


def _assert_busy_usage(status: ExitStatus) -> None:
    assert status == 7
    assert isinstance(status.rusage, resource.struct_rusage)
    assert status.user_time is not None and status.user_time >= 0.2
    assert status.system_time is not None and status.system_time >= 0.0
    assert status.max_rss is not None and status.max_rss >= 64 * MIB
    assert status.max_rss == status.rusage.ru_maxrss * 1024  # Linux counts KiB


def test_a_spawned_child_s_status_carries_its_resource_usage(backend: str) -> None:
    """spawn() + wait(): user and system time, peak memory in bytes, the whole struct."""
    with Reaper(backend=backend) as reaper:
        status = reaper.spawn(BUSY).wait(60)
    _assert_busy_usage(status)


def test_the_registry_and_on_exit_get_the_same_usage(backend: str) -> None:
    """The record that callbacks and the registry hold is the one with the usage."""
    heard: list[ExitStatus] = []
    with Reaper(backend=backend, on_exit=heard.append) as reaper:
        child = reaper.spawn(BUSY)
        status = child.wait(60)
        assert reaper.status(child.pid) is status or reaper.status(child.pid) == status
        recorded = reaper.status(child.pid)
        assert recorded is not None and recorded.rusage == status.rusage
    assert [s.rusage for s in heard] == [status.rusage]


def test_a_watched_popen_reaped_by_the_reaper_carries_usage(backend: str) -> None:
    """A Popen whose exit the Reaper reaps: usage, and the Popen keeps its return code."""
    with Reaper(backend=backend) as reaper:
        popen = subprocess.Popen(BUSY)
        status = reaper.watch(popen).wait(60)
    _assert_busy_usage(status)
    assert popen.returncode == 7


def test_a_status_reaped_by_another_waiter_has_no_usage(backend: str) -> None:
    """Popen.wait() reaped it first: the status is exact, the usage None (documented)."""
    with Reaper(backend=backend) as reaper:
        popen = subprocess.Popen(sh("exit 3"))
        assert popen.wait(30) == 3
        status = reaper.watch(popen).wait(30)
    assert status == 3
    assert status.rusage is None
    assert (status.user_time, status.system_time, status.max_rss) == (None, None, None)


def test_a_multiprocessing_worker_reaped_by_the_reaper_carries_usage(backend: str) -> None:
    """A watched Process: its exitcode as join() gives it, and the usage in the status."""
    context = multiprocessing.get_context("spawn")
    with Reaper(backend=backend) as reaper:
        process = context.Process(target=pow, args=(2, 10))
        process.start()
        status = reaper.watch(process).wait(60)
        process.join(30)
    assert status == 0 and process.exitcode == 0
    assert status.rusage is not None and status.max_rss is not None and status.max_rss > 0


def test_an_orphan_reaped_by_the_all_scope_carries_usage() -> None:
    """A child nobody watches, reaped by the all scope's sweep: usage too."""
    heard: list[ExitStatus] = []
    arrived = threading.Event()

    def on_exit(status: ExitStatus) -> None:
        heard.append(status)
        arrived.set()

    with Reaper(scope="all", grace=0.0, on_exit=on_exit):
        proc = subprocess.Popen(BUSY)
        pid = proc.pid
        proc.returncode = 0  # a Popen that will never wait: the child is nobody's
        del proc
        assert arrived.wait(60)
    (status,) = [s for s in heard if s.pid == pid]
    _assert_busy_usage(status)
    # Compacted as it was recorded, as an owned child's record is once forgotten.
    assert status._usage is not None and len(status._usage) < RUSAGE_LAYOUT.size


def test_service_events_carry_the_usage() -> None:
    """A supervised copy's "exited" event holds the status with its usage."""
    events: list[ServiceEvent] = []
    exited = threading.Event()

    def on_event(event: ServiceEvent) -> None:
        events.append(event)
        if event.kind == "exited":
            exited.set()

    with Reaper() as reaper:
        service = reaper.supervise(BUSY, name="busy", restart="never", on_event=on_event)
        assert exited.wait(60)
        service.stop()
    (event,) = [e for e in events if e.kind == "exited"]
    assert event.status is not None
    _assert_busy_usage(event.status)


def test_without_the_raw_call_statuses_are_exact_and_usage_is_none(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """A machine whose waitid number is unknown: reaps go through os.waitid, no usage."""
    monkeypatch.setattr(_process, "_raw_waitid", lambda: None)
    with Reaper(backend=backend) as reaper:
        status = reaper.spawn(sh("exit 5")).wait(30)
    assert status == 5 and status.rusage is None


def test_an_enosys_from_the_raw_call_falls_back_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong syscall number (ENOSYS) costs nothing: that reap and the next go on without."""
    broken = _process._RawWaitid(100_000)  # no such system call
    monkeypatch.setattr(_process, "_raw_waitid", lambda: broken)
    with Reaper() as reaper:
        statuses = [reaper.spawn(sh(f"exit {code}")).wait(30) for code in (3, 4)]
    assert statuses == [3, 4]
    assert [s.rusage for s in statuses] == [None, None]
    assert broken.works is False


def test_usage_is_not_part_of_equality() -> None:
    """Two records of the same code are equal, whatever their usage; hashing agrees."""
    usage = resource.struct_rusage((1.5, 0.25, 2048, *[0] * 13))
    with_usage = decode_wait_status(1, 3 << 8, usage)
    without = decode_wait_status(1, 3 << 8)
    assert with_usage == without == 3 and hash(with_usage) == hash(3)
    assert (with_usage.user_time, with_usage.system_time) == (1.5, 0.25)
    assert with_usage.max_rss == 2048 * 1024
    assert ExitStatus.from_returncode(1, 3).rusage is None


def test_a_packed_usage_reads_back_as_it_was_given() -> None:
    """decode_wait_status(rusage=...) keeps the usage to the microsecond, every field."""
    given = resource.getrusage(resource.RUSAGE_SELF)
    status = decode_wait_status(12, 3 << 8, given)
    assert status.rusage == given
    assert status.user_time == given.ru_utime and status.system_time == given.ru_stime
    assert status.max_rss == given.ru_maxrss * 1024
    # Packed, not kept as the struct: a registry of records stays small.
    assert unpack_rusage(pack_rusage(given)) == given


@given(st.lists(st.sampled_from([0, 1, 255, 256, 2**31, 2**62 - 1, -1]), min_size=18, max_size=18))
def test_a_record_keeps_the_kernels_bytes_exactly(words: list[int]) -> None:
    """The compact form a record keeps gives back the very bytes of the reap, zeros and all."""
    raw = RUSAGE_LAYOUT.pack(*words)
    assert _expand(_compact(raw)) == raw
    assert _compact(raw) == _compact(_expand(_compact(raw)))
    # Never as long as the bytes a reap gives, which a record holds until compact_usage().
    assert len(_compact(raw)) != RUSAGE_LAYOUT.size
    assert _expand(raw) == raw
    status = decode_reaped(1, 0, raw)
    before = status.rusage
    compact_usage(status)
    assert status.rusage == before == unpack_rusage(raw)


def test_the_usage_is_compacted_after_on_exit_not_before() -> None:
    """The reaping thread calls on_exit before it compacts the usage; the registry's record
    is compact afterwards, and reads the same.

    Compacting it first cost on_exit about 7 us of a cache-cold reaping thread.
    """
    seen: list[tuple[int, object]] = []
    called = threading.Event()

    def on_exit(status: ExitStatus) -> None:
        seen.append((len(status._usage or b""), status.rusage))
        called.set()

    if _process._raw_waitid() is None:
        pytest.skip("no resource usage on this machine")
    with Reaper(on_exit=on_exit) as reaper:
        child = reaper.spawn(sh("exit 3"))
        # No wait() before on_exit: settled on the caller's thread, the record would be
        # compacted there, before the reaping thread calls back.
        assert called.wait(30), "no on_exit"
        status = child.wait(30)
        assert reaper.registry[child.pid] is status
        eventually(
            lambda: len(status._usage or b"") < RUSAGE_LAYOUT.size, 10, "the usage compacted"
        )
    [(length_in_callback, usage_in_callback)] = seen
    assert length_in_callback == RUSAGE_LAYOUT.size, "compacted before on_exit"
    assert status.rusage == usage_in_callback


def test_a_record_of_a_short_child_keeps_little() -> None:
    """The fields that Linux leaves 0 cost nothing: about 60 bytes instead of 144."""
    raw = RUSAGE_LAYOUT.pack(0, 0, 0, 2144, 14104, 0, 0, 0, 396, 0, 0, 0, 0, 0, 0, 0, 1, 0)
    assert len(_compact(raw)) < 64
    status = decode_reaped(5, 0, raw)
    assert status.system_time == 0.002144 and status.max_rss == 14104 * 1024
    assert status.rusage is not None and status.rusage.ru_nvcsw == 1


def test_the_raw_call_reused_says_none_for_a_running_child() -> None:
    """Its buffers are reused: after a reap, a child still running reads as None."""
    raw = _process._raw_waitid()
    if raw is None:
        pytest.skip("no raw waitid on this machine")
    done = subprocess.Popen(["true"])
    running = subprocess.Popen(["sleep", "60"])
    fds = [os.pidfd_open(done.pid), os.pidfd_open(running.pid)]
    try:
        eventually(lambda: _process.peek_pidfd(fds[0]) is not None, 30, "true to exit")
        first = raw.wait(os.P_PIDFD, fds[0], _process.REAP)
        second = raw.wait(os.P_PIDFD, fds[1], _process.REAP)
    finally:
        for fd in fds:
            os.close(fd)
        done.returncode = 0  # reaped above
        running.kill()
        running.wait()
    assert first is not None and first.status == 0 and first.usage is not None
    assert second is None


def test_the_raw_call_reports_a_child_reaped_already_as_echild() -> None:
    """A failed call is made again to read its errno: ECHILD comes out as os.waitid's would."""
    raw = _process._raw_waitid()
    if raw is None:
        pytest.skip("no raw waitid on this machine")
    child = subprocess.Popen(["true"])
    fd = os.pidfd_open(child.pid)
    try:
        child.wait(30)  # reaped by its Popen: the pidfd names no child of ours any more
        with pytest.raises(ChildProcessError) as caught:
            raw.wait(os.P_PIDFD, fd, _process.REAP)
    finally:
        os.close(fd)
    assert caught.value.errno == errno.ECHILD
    assert raw.works


def test_the_raw_call_from_many_threads_reads_each_childs_own_status() -> None:
    """Threads reaping at once never read each other's buffers: each gets its child's code.

    The system call releases the GIL, so with one shared pair of buffers another thread's
    reap could overwrite them between a call and the reading of its result.
    """
    raw = _process._raw_waitid()
    if raw is None:
        pytest.skip("no raw waitid on this machine")
    threads, rounds = 6, 15
    children = [
        [subprocess.Popen(sh(f"exit {t * rounds + r}")) for r in range(rounds)]
        for t in range(threads)
    ]
    fds = [[os.pidfd_open(c.pid) for c in row] for row in children]
    for row in fds:
        for fd in row:
            eventually(lambda fd=fd: _process.peek_pidfd(fd) is not None, 30, "an exit")
    results: list[list[int | None]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def reap(t: int) -> None:
        start.wait(10)
        for fd in fds[t]:
            reaped = raw.wait(os.P_PIDFD, fd, _process.REAP)
            results[t].append(None if reaped is None else reaped.status >> 8)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=reap, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
    finally:
        sys.setswitchinterval(interval)
        for row, fd_row in zip(children, fds, strict=True):
            for child, fd in zip(row, fd_row, strict=True):
                os.close(fd)
                child.returncode = 0  # reaped above (or by the wait below if not)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child.pid, 0)
    assert results == [[t * rounds + r for r in range(rounds)] for t in range(threads)]


def test_the_raw_call_is_linux_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another system on the same machine name (macOS on x86_64) has other syscall numbers."""
    monkeypatch.setattr(_process.sys, "platform", "darwin")
    assert _process._raw_waitid.__wrapped__() is None


def test_the_raw_call_needs_a_64_bit_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 32-bit Python on a 64-bit kernel sees x86_64 too, but has other numbers and layouts."""
    monkeypatch.setattr(_process.sys, "maxsize", 2**31 - 1)
    assert _process._raw_waitid.__wrapped__() is None


def test_the_raw_call_reads_the_kernels_figures() -> None:
    """The ctypes call's struct matches what os.wait4 reports for a twin child."""
    raw = _process._raw_waitid()
    if raw is None:
        pytest.skip("no raw waitid on this machine")
    twins = [subprocess.Popen(BUSY), subprocess.Popen(BUSY)]
    fd = os.pidfd_open(twins[0].pid)
    try:
        eventually(lambda: _process.peek_pidfd(fd) is not None, 60, "the first twin's exit")
        reaped = raw.wait(os.P_PIDFD, fd, _process.REAP)
    finally:
        os.close(fd)
    _, other_raw, other_usage = os.wait4(twins[1].pid, 0)
    for twin in twins:
        twin.returncode = 7  # reaped above
    assert reaped is not None and reaped.usage is not None
    assert reaped.status == other_raw == 7 << 8
    usage = unpack_rusage(reaped.usage)
    # Same program, same work: the same order of magnitude on every field that counts.
    assert usage.ru_utime >= 0.2 and other_usage.ru_utime >= 0.2
    assert abs(usage.ru_maxrss - other_usage.ru_maxrss) < 16 * 1024  # KiB
