"""What every benchmark shares: the configurations, clocks, statistics and child bookkeeping."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Final, NoReturn, TypeVar

import psutil

import zombiereaper
from zombiereaper import _engine, can_use_pidfd

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

    from zombiereaper import Child, ExitStatus, Reaper

H = TypeVar("H")

#: The short child of the throughput, scaling and memory benchmarks, as the issue names it.
TRUE_ARGS: Final = ["/bin/true"]
#: An idle child: alive, silent, and gone at the first SIGTERM or SIGKILL.
IDLE_ARGS: Final = [shutil.which("sleep") or "/bin/sleep", "3600"]
#: The backends this machine can run, pidfd first.
BACKENDS: Final[tuple[str, ...]] = ("pidfd", "sigchld") if can_use_pidfd() else ("sigchld",)
#: The scaling benchmark's control: bare Popen + wait, no Reaper installed.
BACKEND_REFERENCE: Final = "Popen+wait"
#: Every scope the issue names; the suite probes which ones this version of zombiereaper has.
SCOPES: Final = ("owned", "all")
#: Reapers in the suite stop their leftovers quickly when a run is interrupted.
STOP_TIMEOUT: Final = 2.0


@dataclasses.dataclass(frozen=True)
class Config:
    """The sizes of one run of the suite; :data:`FULL` is the documented one."""

    name: str
    #: Throughput: children per contender and round, the most alive at once, rounds.
    throughput_children: int
    window: int
    throughput_rounds: int
    warmup: bool
    #: Latency and scaling: idle children alive while measuring, samples per level and pass.
    latency_levels: tuple[int, ...]
    latency_samples: int
    latency_target_level: int
    pool_rounds: int
    #: Scaling: the idle level compared with none, children per batch, batches per point.
    scaling_idle: int
    scaling_batch: int
    scaling_repeats: int
    #: Memory: cycles after which the resident size is read (the last is the target's).
    memory_checkpoints: tuple[int, ...]
    #: Zombie lifetime: children killed at once, bursts per backend.
    zombie_burst: int
    zombie_rounds: int
    #: Start-up: timed rounds of fresh processes and untimed runs before them (which also write
    #: the .pyc files), and rounds of the init memory readings.
    startup_rounds: int
    startup_warmups: int
    init_rss_rounds: int


FULL: Final = Config(
    name="full",
    throughput_children=2_000,
    window=100,
    throughput_rounds=9,
    warmup=True,
    latency_levels=(0, 100, 1_000, 4_000),
    latency_samples=200,
    latency_target_level=1_000,
    pool_rounds=2,
    scaling_idle=4_000,
    scaling_batch=1_000,
    scaling_repeats=3,
    memory_checkpoints=(1_000, 10_000, 30_000, 60_000, 100_000),
    zombie_burst=1_000,
    zombie_rounds=3,
    startup_rounds=100,
    startup_warmups=3,
    init_rss_rounds=5,
)

QUICK: Final = Config(
    name="quick",
    throughput_children=100,
    window=20,
    throughput_rounds=1,
    warmup=False,
    latency_levels=(0, 10, 50),
    latency_samples=8,
    latency_target_level=10,
    pool_rounds=1,
    scaling_idle=50,
    scaling_batch=40,
    scaling_repeats=1,
    memory_checkpoints=(100, 500),
    zombie_burst=50,
    zombie_rounds=1,
    startup_rounds=5,
    startup_warmups=1,
    init_rss_rounds=1,
)


#: The directory that holds ``run.py`` and this package.
BENCH_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_worker(module: str, *args: str) -> tuple[list[str], dict[str, str], str]:
    """The command, environment and directory that run ``python -m module`` as a helper.

    The helper imports the very zombiereaper this process imported (not one that its working
    directory happens to hold), and this suite's package.
    """
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(zombiereaper.__file__)))
    paths = [BENCH_DIR, package_root, env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    return [sys.executable, "-m", module, *args], env, BENCH_DIR


# --- statistics ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolating between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: list[float]) -> float:
    """The median of ``values`` (NaN for none)."""
    return percentile(values, 50)


def rotated(items: list[H], by: int) -> list[H]:
    """``items`` rotated left by ``by``: round r of a benchmark starts with contender r."""
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


# --- clocks and resources -----------------------------------------------------------------------


def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds: one clock for every thread and every process."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def thread_cpu_ns(native_id: int) -> int | None:
    """The CPU time a thread of this process has run, from its schedstat, or None."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", encoding="ascii") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def relay_cpu_ns() -> int:
    """The CPU time zombiereaper's relay process has run so far (0 when there is none).

    The relay holds the pidfds of the oldest children once there are hundreds: its work is
    part of what zombiereaper costs, so the scaling benchmark adds it to the process's CPU.
    """
    engine = _engine.current()
    total = 0
    for pid in () if engine is None else engine.helper_pids():
        try:
            with open(f"/proc/{pid}/schedstat", encoding="ascii") as file:
                total += int(file.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def pidfds_open() -> int:
    """How many pidfds this process holds."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[pidfd]":
                count += 1
        except OSError:
            pass
    return count


def reaping_thread_id() -> int | None:
    """The native id of zombiereaper's reaping thread while a Reaper is installed, or None."""
    for thread in threading.enumerate():
        if thread.name == "zombiereaper" and thread.native_id is not None:
            return thread.native_id
    return None


def rss_bytes() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/statm", encoding="ascii") as file:
        resident_pages = int(file.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: every pidfd is one descriptor.

    Returns:
        The (soft, hard) limits now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- running children ---------------------------------------------------------------------------


def run_window(spawn: Callable[[], H], wait: Callable[[H], object], n: int, window: int) -> float:
    """Start ``n`` children with at most ``window`` alive, waiting for the oldest first.

    Returns:
        The wall-clock seconds it took, from the first spawn to the last wait.
    """
    pending: collections.deque[H] = collections.deque()
    start = time.perf_counter()
    for _ in range(n):
        if len(pending) >= window:
            wait(pending.popleft())
        pending.append(spawn())
    while pending:
        wait(pending.popleft())
    return time.perf_counter() - start


class ExitClock:
    """An ``on_exit`` callback that timestamps the exits of the pids it is told to expect.

    It runs on the reaping thread, right after the status is recorded, so its timestamp is
    the earliest moment a user's ``on_exit`` could have learned of the exit.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._expected: set[int] = set()
        self._times: dict[int, int] = {}

    def __call__(self, status: ExitStatus) -> None:
        stamp = now_ns()
        with self._cond:
            if status.pid in self._expected:
                self._expected.discard(status.pid)
                self._times[status.pid] = stamp
                self._cond.notify_all()

    def expect(self, pids: list[int]) -> None:
        """Start timestamping the exits of ``pids``."""
        with self._cond:
            self._expected.update(pids)

    def collect(self, pids: list[int], timeout: float) -> dict[int, int]:
        """Wait until every one of ``pids`` has exited, then hand over (and forget) their times.

        Returns:
            pid -> CLOCK_MONOTONIC ns of its ``on_exit``, for the pids that made it in time.
        """
        deadline = time.monotonic() + timeout
        wanted = set(pids)
        with self._cond:
            while not wanted.issubset(self._times):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            found = {pid: self._times.pop(pid) for pid in wanted if pid in self._times}
            self._expected.difference_update(wanted)
        return found


class IdlePool:
    """Idle ``sleep 3600`` children owned by one Reaper, grown and shrunk on demand."""

    def __init__(self, reaper: Reaper) -> None:
        self._reaper = reaper
        self.children: list[Child] = []

    def grow_to(self, size: int) -> None:
        """Spawn idle children until ``size`` are alive."""
        while len(self.children) < size:
            self.children.append(self._reaper.spawn(IDLE_ARGS, stdin=subprocess.DEVNULL))

    def clear(self) -> None:
        """Kill every idle child and wait until each one is reaped."""
        children, self.children = self.children, []
        for child in children:
            child.kill()
        for child in children:
            child.wait(timeout=60)


def probe_scopes(backend: str) -> tuple[list[str], dict[str, str]]:
    """Which scopes this zombiereaper has: (available, {missing scope: the error it gave}).

    Only building a Reaper is tried, which starts nothing.
    """
    from zombiereaper import Reaper

    available: list[str] = []
    missing: dict[str, str] = {}
    for scope in SCOPES:
        try:
            Reaper(scope=scope, backend=backend)  # type: ignore[arg-type]
        except ValueError as err:
            missing[scope] = str(err)
        else:
            available.append(scope)
    return available, missing


# --- leaving nothing behind ---------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def kill_and_reap_children() -> int:
    """SIGKILL every descendant of this process and reap every child.

    Returns:
        How many processes were still there (a clean run leaves none).
    """
    me = psutil.Process()
    try:
        direct = [proc.pid for proc in me.children(recursive=False)]
        descendants = [proc.pid for proc in me.children(recursive=True)]
    except psutil.Error:
        return 0
    for pid in descendants:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in direct:
        # ECHILD: a reaping thread (a Reaper's, asyncio's) took it first, which is as good.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return len(descendants)


@contextlib.contextmanager
def children_cleaned_up(report: Callable[[str], None]) -> Iterator[None]:
    """Kill and reap every child on the way out, also on Ctrl-C, SIGTERM or an error.

    SIGTERM is turned into KeyboardInterrupt so that every ``with`` block unwinds; Ctrl-C is
    ignored while the cleanup itself runs, so a second one cannot leave children behind.
    """
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            left = kill_and_reap_children()
            if left:
                report(f"killed and reaped {left} leftover child process(es)")
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
