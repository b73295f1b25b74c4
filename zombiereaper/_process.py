"""Every call that waits on, peeks at or signals a child: one home, and exact process identity.

A pid names a process only until that process is reaped; after that the kernel may give it to
a stranger. So a process is the same one only by its pidfd, or by its pid *and* its start
time (``/proc/PID/stat``, clock ticks since boot). :class:`ProcessRef` holds one of the two
from the moment it is opened, and every peek, reap and signal goes through it:

- with a pidfd: ``waitid(P_PIDFD)`` and ``pidfd_send_signal`` name exactly that process, reaped
  or not (a reaped one answers ECHILD or ESRCH, never a stranger's status);
- by pid and identity (the sigchld backend, a pidfd lent to the relay): an answer read by
  pid counts only if the process that has the pid is still this one afterwards; reaping and
  signalling open a pidfd for the moment and check the identity once it is open, so the call
  reaches the process that was checked. The identity is the pidfd's inode number where
  pidfds live on pidfs (Linux 6.9+: one number per process, never reused while the system
  runs; one ``fstat()`` of the pidfd reads it), else the start time. Where pidfds are
  missing the check comes right before the call, and the window left between the two is
  documented at :meth:`ProcessRef.send_signal`.
  Without pidfs, a child named when it is registered has its start time bounded rather than
  read (it started no later than the registration, and a process given its pid later started
  after it was reaped): the one case this cannot tell is a process given the pid within the
  same clock tick (10 ms) as the registration. A pidfd lent to the relay leaves the exact
  identity, read while the pidfd proved the pid.

The errnos, once for all the functions below:

- ECHILD (ChildProcessError) from waitid: no unreaped child of ours by that pid or pidfd;
  somebody reaped it (its owner's wait, or a stranger's waitpid(-1)).
- ESRCH (ProcessLookupError) from pidfd_open, kill, pidfd_send_signal: no such process (for a
  pidfd: it has been reaped).
- EMFILE/ENFILE/ENOMEM from pidfd_open: out of descriptors; callers fall back to the pid.
- EINVAL from pidfd_send_signal with PIDFD_SIGNAL_PROCESS_GROUP: a kernel before 6.9.
- EINTR from the raw waitid syscall (resource usage, below): a signal came; called again.
- ENOSYS from the raw waitid syscall: not this architecture's number after all; reaps go on
  through ``os.waitid``, without resource usage, from then on.

Reaping returns the child's resource usage too (:class:`Reaped`): ``os.waitid`` gives none and
``os.wait4`` names a child by pid only (a pid that may have been handed on), so reaps go
through the ``waitid`` system call itself, whose fifth argument is a ``struct rusage``, called
through ctypes on the architectures whose syscall number and struct layouts are known here
(:data:`_WAITID_SYSCALLS`); elsewhere the usage is None.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import select
import signal
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Final, NamedTuple, Self, TypeVar

from . import _fds, _linux
from ._status import RUSAGE_LAYOUT, pack_rusage, wait_status_from_waitid

if TYPE_CHECKING:
    import ctypes
    from collections.abc import Callable

T = TypeVar("T")

#: waitid options: read an exit without reaping, and reap one, never blocking.
PEEK: Final = os.WEXITED | os.WNOHANG | getattr(os, "WNOWAIT", 0)
REAP: Final = os.WEXITED | os.WNOHANG

#: pidfd_send_signal flag (Linux 6.9): signal the process group whose id is the pidfd's pid.
PIDFD_SIGNAL_PROCESS_GROUP: Final = 1 << 2

#: ioctl(pidfd, PIDFD_GET_INFO, struct pidfd_info): _IOWR(0xFF, 11, 64 bytes) (Linux 6.13).
PIDFD_GET_INFO: Final = 0xC040FF0B
#: pidfd_info.mask bit (Linux 6.15): exit_code holds the raw wait status of a reaped process.
PIDFD_INFO_EXIT: Final = 1 << 3
#: pidfd_open flag (Linux 6.9): a pidfd for one thread (O_EXCL's value).
PIDFD_THREAD: Final = os.O_EXCL
#: struct pidfd_info: u64 mask at 0, ..., s32 exit_code at 60, 64 bytes in all (VER0).
_PIDFD_INFO: Final = struct.Struct("=Q52xi")

#: pidfd_open failures that mean "out of descriptors or memory", not "no such process".
OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


#: The waitid system call's number, by machine (os.uname().machine), where this module knows
#: it and the 64-bit layouts of siginfo_t and struct rusage that it reads below.
_WAITID_SYSCALLS: Final = {"x86_64": 247, "aarch64": 95}
#: siginfo_t: 128 bytes, read as 32 C ints: int si_code at 8 (index 2); for SIGCHLD, int
#: si_pid at 16 (index 4) and si_status at 24 (index 6).
_SIGINFO_INTS: Final = 32
_SI_CODE: Final = 2
_SI_PID: Final = 4
_SI_STATUS: Final = 6


class ProcessGone(ChildProcessError):
    """The process a ProcessRef names is no longer an unreaped child of ours: it was reaped."""


class Reaped(NamedTuple):
    """What a reap returns: the raw wait status, and the child's resource usage if known."""

    status: int
    #: Its own and that of its descendants it waited for, packed as
    #: ``_status.RUSAGE_LAYOUT``; None where it cannot be read here.
    usage: bytes | None


# --- capabilities ------------------------------------------------------------------------------


@functools.cache
def can_peek() -> bool:
    """Whether waitid with WNOWAIT works here (not on macOS), to read an exit without reaping."""
    return hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


@functools.cache
def can_use_pidfd() -> bool:
    """Probe once whether pidfd_open, waitid(P_PIDFD) and pidfd_send_signal work here."""
    needed = (
        hasattr(os, "pidfd_open")
        and hasattr(os, "P_PIDFD")
        and can_peek()
        and hasattr(signal, "pidfd_send_signal")
    )
    if not needed:
        return False
    global _pidfd_dev
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:
        # ENOSYS on kernels before 5.3, EPERM under some seccomp profiles.
        return False
    try:
        _pidfd_dev = os.fstat(fd).st_dev
        # Linux 5.3 has pidfd_open but not waitid(P_PIDFD) (5.4): that gives EINVAL. On our
        # own pidfd a working waitid answers ECHILD: we are not our own child.
        os.waitid(os.P_PIDFD, fd, REAP)
    except ChildProcessError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


#: statfs f_type of pidfs (include/uapi/linux/magic.h), where pidfds live since Linux 6.9.
_PIDFS_MAGIC: Final = 0x50494446


@functools.cache
def can_identify_by_inode() -> bool:
    """Probe once whether a pidfd's inode number names its process for good (pidfs).

    On pidfs (Linux 6.9+) each process gets an inode number when its pid is allocated, a
    64-bit counter never reused while the system runs, and every pidfd for the process has
    it: one ``fstat()`` then tells a process from one that took its pid later, where reading
    the start time costs a /proc read, the dearest step of a reap by pid. Before 6.9 pidfds
    share one anonymous inode. Asked of the file system itself (``fstatfs``), not of the
    kernel's version, and only on the 64-bit systems whose ``struct statfs`` is known here.
    """
    if not can_use_pidfd() or _raw_waitid() is None:
        return False
    import ctypes  # noqa: PLC0415 - loaded already by _raw_waitid()

    fstatfs = ctypes.CDLL(None, use_errno=True).fstatfs
    buffer = ctypes.create_string_buffer(_STATFS_SIZE)  # struct statfs: f_type comes first

    def on_pidfs(fd: int) -> bool:
        if fstatfs(fd, buffer) != 0:
            return False
        magic: int = _STATFS_TYPE.unpack_from(buffer)[0]
        return magic == _PIDFS_MAGIC

    try:
        return _with_pidfd(os.getpid(), on_pidfs)
    except OSError:  # out of descriptors now: the start time will do
        return False


#: sizeof(struct statfs) on the 64-bit Linux systems of _WAITID_SYSCALLS (120), rounded up;
#: its first field is the file system's type (a long).
_STATFS_SIZE: Final = 128
_STATFS_TYPE: Final = struct.Struct("=q")


@functools.cache
def can_signal_group_by_pidfd() -> bool:
    """Probe once whether pidfd_send_signal takes PIDFD_SIGNAL_PROCESS_GROUP (Linux 6.9+)."""
    if not can_use_pidfd():
        return False
    fd = os.pidfd_open(os.getpid())
    try:
        # Signal 0 checks without sending; our own group exists, so only EINVAL can refuse.
        signal.pidfd_send_signal(fd, 0, None, PIDFD_SIGNAL_PROCESS_GROUP)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def exit_after_reap(fd: int) -> int | None:
    """The raw wait status that the kernel keeps for the process behind ``fd`` once reaped.

    Linux 6.15 keeps it on the pidfd whoever reaped the process (PIDFD_INFO_EXIT), so a
    status that another waiter took can still be read through a pidfd opened before.

    Returns:
        The raw status; None while the process is unreaped, or where the kernel keeps none
        (ENOTTY before 6.13, no PIDFD_INFO_EXIT in the answer before 6.15).
    """
    buffer = bytearray(_PIDFD_INFO.size)
    _PIDFD_INFO.pack_into(buffer, 0, PIDFD_INFO_EXIT, 0)
    try:
        fcntl.ioctl(fd, PIDFD_GET_INFO, buffer, True)
    except OSError:
        return None  # ENOTTY, EINVAL (an older pidfd_info), ESRCH: nothing kept
    mask, raw = _PIDFD_INFO.unpack(buffer)
    return raw if mask & PIDFD_INFO_EXIT else None


#: How long the probe gives an ended thread's pidfd to show its exit (the kernel releases the
#: thread a moment after it is joined; a kernel without PIDFD_INFO_EXIT never shows one).
_PROBE_PATIENCE: Final = 0.1


_recovery_probed: bool | None = None


def can_recover_stolen_status() -> bool:
    """Probe once whether a pidfd keeps its process's exit status after it was reaped.

    Linux 6.15+ does (PIDFD_INFO_EXIT): with the pidfd backend, a child whose status another
    waiter took is then reported with its exact status instead of StatusLostError. The probe
    starts no process: it asks the pidfd of a thread of its own (PIDFD_THREAD, 6.9) that has
    ended, which the kernel keeps the same way. Out of descriptors it says False without
    remembering it, and asks again next time.
    """
    global _recovery_probed  # a cache that must not keep an answer given out of descriptors
    if _recovery_probed is None:
        try:
            _recovery_probed = _probe_recovery()
        except OSError as err:
            if err.errno not in OUT_OF_DESCRIPTORS:
                raise
            return False
    return _recovery_probed


def _probe_recovery() -> bool:
    """The probe behind can_recover_stolen_status(); raises OSError out of descriptors."""
    if not can_use_pidfd():
        return False
    started = threading.Event()
    release = threading.Event()
    tid: list[int] = []

    def target() -> None:
        tid.append(threading.get_native_id())
        started.set()
        release.wait()

    thread = threading.Thread(target=target, name="zombiereaper-probe", daemon=True)
    thread.start()
    started.wait()
    try:
        with _fds.step():
            fd = _fds.track(os.pidfd_open(tid[0], PIDFD_THREAD))
    except OSError as err:
        if err.errno in OUT_OF_DESCRIPTORS:
            raise
        return False  # EINVAL before Linux 6.9: no thread pidfds, and no exit info (6.15)
    finally:
        release.set()
        thread.join()
    born = _fds.generation()
    try:
        select.select([fd], [], [], _PROBE_PATIENCE)  # readable once the thread has exited
        deadline = time.monotonic() + _PROBE_PATIENCE
        while exit_after_reap(fd) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True
    finally:
        _fds.close(fd, born)


# --- plain calls by pid ------------------------------------------------------------------


def _status(result: os.waitid_result | None) -> int | None:
    if result is None:
        return None
    return wait_status_from_waitid(result.si_code, result.si_status)


def peek_pid(pid: int) -> int | None:
    """The raw wait status of the exited child ``pid``, not reaped; None while it runs.

    Whatever process has the pid now answers: callers that need *a given* process use a
    :class:`ProcessRef`.

    Raises:
        ChildProcessError: No unreaped child of ours has this pid.
    """
    return _status(os.waitid(os.P_PID, pid, PEEK))


def reap_pid(pid: int) -> Reaped | None:
    """Reap the child ``pid`` if it has exited (whatever process has the pid now).

    Raises:
        ChildProcessError: No unreaped child of ours has this pid.
    """
    if not can_peek():
        reaped, raw, usage = os.wait4(pid, os.WNOHANG)  # no waitid: no pidfd either
        return Reaped(raw, pack_rusage(usage)) if reaped else None
    return _waitid(os.P_PID, pid, REAP)


def peek_pid_with_usage(pid: int) -> Reaped | None:
    """:func:`peek_pid`, and the child's resource usage (the kernel fills it without reaping).

    Costs three times a plain peek: for records made before the reap, not for polling.

    Raises:
        ChildProcessError: No unreaped child of ours has this pid.
    """
    return _waitid(os.P_PID, pid, PEEK)


def has_zombie_child() -> bool:
    """Whether this process has any child that has exited and not been reaped."""
    return exited_child() is not None


def exited_child() -> int | None:
    """The pid of a child of this process that has exited and is not reaped yet, if any.

    Nothing is reaped: ``waitid(P_ALL)`` with WNOWAIT only looks. It cannot enumerate: it
    names the same child every time until that one is reaped (prior art, pitfall 2), so a
    caller that will not reap it learns nothing of the others; /proc lists them all
    (zombiereaper._linux).
    """
    try:
        result = os.waitid(os.P_ALL, 0, PEEK)
    except ChildProcessError:
        return None  # no children at all
    return None if result is None else result.si_pid


def open_pidfd(pid: int) -> int:
    """Open a pidfd for ``pid``, tracked so that a forked child closes it.

    Raises:
        ProcessLookupError: No process has this pid.
        OSError: EMFILE/ENFILE/ENOMEM (see OUT_OF_DESCRIPTORS), or pidfds are unsupported.
    """
    with _fds.step():
        # Above 0-2, and never a stream that the program dup2()s back meanwhile.
        return _fds.track(_linux.open_above_stdio(lambda: os.pidfd_open(pid), _is_pidfd))


def _with_pidfd(pid: int, use: Callable[[int], T]) -> T:
    """``use(fd)`` with a pidfd for ``pid`` open just for the call.

    Opened, used and closed within one descriptor step (no fork falls in between), so it is
    not tracked; ``use`` must not block, nor open or close descriptors through
    zombiereaper._fds (its lock is held).

    Raises:
        ProcessLookupError: No process has this pid.
        OSError: EMFILE/ENFILE/ENOMEM (see OUT_OF_DESCRIPTORS), or what ``use`` raises.
    """
    with _fds.step():
        # Above 0-2, and never a stream that the program dup2()s back meanwhile.
        fd = _linux.open_above_stdio(lambda: os.pidfd_open(pid), _is_pidfd)
        try:
            return use(fd)
        finally:
            _linux.close_if_ours(fd, _is_pidfd)


def _is_pidfd(fd: int) -> bool:
    """Whether ``fd`` is a pidfd (the program's streams never are)."""
    return _linux.on_device(fd, _pidfd_device())


def _pidfd_device() -> int | None:
    # Every pidfd has the same device: pidfs (Linux 6.9+), the anonymous inodes before. Noted
    # by the probe of can_use_pidfd(), which runs before any Reaper does.
    if _pidfd_dev is None:
        can_use_pidfd()
    return _pidfd_dev


#: The device of every pidfd (see _pidfd_device), noted by the probe.
_pidfd_dev: int | None = None


def peek_pidfd(fd: int) -> int | None:
    """The raw wait status behind a pidfd if its process has exited, not reaped.

    Raises:
        ChildProcessError: The pidfd names no unreaped child of ours (any more).
    """
    return _status(os.waitid(os.P_PIDFD, fd, PEEK))


def reap_pidfd(fd: int) -> Reaped | None:
    """Reap the process behind a pidfd if it has exited.

    Raises:
        ChildProcessError: The pidfd names no unreaped child of ours (any more).
    """
    return _waitid(os.P_PIDFD, fd, REAP)


def _waitid(idtype: int, ident: int, options: int) -> Reaped | None:
    """``waitid(idtype, ident, options)``, with the resource usage where it can."""
    call = _raw_waitid()
    if call is not None and call.works:
        try:
            return call.wait(idtype, ident, options)
        except OSError as err:
            if err.errno != errno.ENOSYS:
                raise
            call.works = False  # not this machine's number after all: without usage, then
    raw = _status(os.waitid(idtype, ident, options))
    return None if raw is None else Reaped(raw, None)


class _RawWaitid:
    """The waitid system call through ctypes, which fills a struct rusage too."""

    def __init__(self, number: int) -> None:
        import ctypes  # noqa: PLC0415 - only reaps need it

        # Two handles on syscall(). The one called first does not copy errno for us: that
        # copy (a thread-local looked up by name) weighed on every cache-cold reap, and a
        # reap that fails changed nothing (ECHILD, ENOSYS; EINTR, which WNOHANG never
        # waits for), so it is simply made again through the other, which keeps errno. (By
        # pid, the second call answers for whatever process has the pid then, as the first
        # would have a moment later: callers of a reap by pid check the identity anyway.)
        self._syscall = ctypes.CDLL(None).syscall
        self._syscall_keeping_errno = ctypes.CDLL(None, use_errno=True).syscall
        for call in (self._syscall, self._syscall_keeping_errno):
            call.restype = ctypes.c_long
        # No argtypes: converting through them was a fifth of a reap's time (it runs cache-cold,
        # right after the exit wakes the thread). Each argument is a buffer, passed as its
        # address, or an int below 2**31, passed as a C int that libffi sign-extends to the
        # 64-bit register syscall() reads (x86-64 and Arm64 alike): exact for these numbers.
        self._get_errno = ctypes.get_errno
        self._new_siginfo = ctypes.c_int * _SIGINFO_INTS  # read by index, no struct unpacking
        self._new_usage = ctypes.c_char * RUSAGE_LAYOUT.size
        self._number = number
        #: Spare (siginfo_t, struct rusage) buffer pairs. A call takes one out while in use:
        #: another thread, or a signal handler that reaps on this one meanwhile, gets another.
        self._spare: list[tuple[ctypes.Array[ctypes.c_int], ctypes.Array[ctypes.c_char]]] = []
        #: False once the kernel said ENOSYS.
        self.works = True

    def wait(self, idtype: int, ident: int, options: int) -> Reaped | None:
        """Wait as :func:`_waitid` does.

        Raises:
            OSError: ECHILD (a ChildProcessError) or ENOSYS, as ``os.waitid`` would.
        """
        # Reused: Linux writes si_pid on every successful call (0 when no child was
        # waitable), and the usage only when one was, which is the only time it is read.
        spare = self._spare
        try:
            pair = spare.pop()
        except IndexError:
            pair = (self._new_siginfo(), self._new_usage())
        info, usage = pair
        try:
            if self._syscall(self._number, idtype, ident, info, options, usage):
                self._wait_keeping_errno(idtype, ident, info, options, usage)
            pid = info[_SI_PID]
            if not pid:
                return None
            # Kept as the kernel wrote it: unpacked only if someone reads it.
            return Reaped(wait_status_from_waitid(info[_SI_CODE], info[_SI_STATUS]), usage.raw)
        finally:
            spare.append(pair)

    def _wait_keeping_errno(
        self,
        idtype: int,
        ident: int,
        info: ctypes.Array[ctypes.c_int],
        options: int,
        usage: ctypes.Array[ctypes.c_char],
    ) -> None:
        """The call again, after a failure, through the handle that keeps errno.

        Raises:
            OSError: Unless it succeeds this time (a signal interrupted the first).
        """
        while self._syscall_keeping_errno(self._number, idtype, ident, info, options, usage):
            number = self._get_errno()
            if number != errno.EINTR:
                raise OSError(number, os.strerror(number))


@functools.cache
def _raw_waitid() -> _RawWaitid | None:
    """The raw waitid call; None where this module does not know this machine's."""
    # Linux's numbers and 64-bit layouts: another system on the same machine (macOS on
    # x86-64) has other numbers, and another call behind 247; so has a 32-bit Python on a
    # 64-bit kernel (a 32-bit container), which uname() still calls x86_64.
    number = _WAITID_SYSCALLS.get(os.uname().machine) if sys.platform == "linux" else None
    if number is None or sys.maxsize < 2**63 - 1:
        return None
    try:
        return _RawWaitid(number)
    except (ImportError, OSError, AttributeError):  # no ctypes, no libc, no syscall()
        return None


def start_time(pid: int) -> int | None:
    """The start time of whatever process has ``pid`` now (None: none, or no /proc).

    Raises:
        OSError: /proc could not be read (EMFILE: out of descriptors): it cannot be told.
    """
    return _linux.read_start_time(pid)


def send_signal_checked(
    pid: int, sig: int, still_ours: Callable[[], bool], *, group: bool = False
) -> bool:
    """Signal ``pid`` (``group``: its group) only if ``still_ours()``, asked with a pidfd open.

    True from the check, with the pidfd opened before it, means the pidfd names the process
    the check was about, so the signal cannot reach one that took the pid since.

    Returns:
        Whether the signal was sent.
    """
    return _checked(
        pid,
        lambda _fd, _strict: still_ours(),
        lambda fd: signal_pidfd(fd, pid, sig, group),
        lambda: _kill(pid, sig, group=group),
        False,
    )


def _checked(
    pid: int,
    still_ours: Callable[[int | None, bool], bool],
    through_pidfd: Callable[[int], T],
    by_pid: Callable[[], T],
    gone: T,
) -> T:
    """``through_pidfd(fd)`` with a pidfd for ``pid`` opened before ``still_ours`` said yes.

    The pidfd was opened first: if the check then says the pid is still the process we mean,
    the pidfd names that process, and the call cannot reach one that took the pid since.
    ``gone`` when the check says no (or there is no such process). ``still_ours(fd,
    strict)`` gets that pidfd (None without one), and may raise EMFILE when ``strict`` (it
    may read /proc); out of descriptors, all of it runs again with the reserve freed. Without
    pidfds at all, or when even that fails, the check comes right before ``by_pid()``: the
    window left is the process being reaped by another waiter and its pid handed to a new
    one between the two calls.
    """

    def exact() -> T:
        if not can_use_pidfd():
            return degraded()
        try:
            return _with_pidfd(pid, lambda fd: through_pidfd(fd) if still_ours(fd, True) else gone)
        except ProcessLookupError:
            return gone

    def degraded() -> T:
        return by_pid() if still_ours(None, False) else gone

    return _with_room(exact, degraded)


def _with_room(action: Callable[[], T], degraded: Callable[[], T]) -> T:
    """``action()``; out of descriptors, again with the reserve freed, else ``degraded()``."""
    try:
        return action()
    except OSError as err:
        if err.errno not in OUT_OF_DESCRIPTORS:
            raise
    with _fds.reserve_freed() as freed:
        if freed:
            try:
                return action()
            except OSError as err:
                if err.errno not in OUT_OF_DESCRIPTORS:
                    raise
    return degraded()


def signal_pidfd(fd: int, pid: int, sig: int, group: bool = False) -> bool:
    """Signal the process behind ``fd`` (``group``: the process group it leads).

    Returns:
        False when it has been reaped (ESRCH), or, for a group before Linux 6.9, when it is
        no longer our unreaped child.
    """
    try:
        if not group:
            signal.pidfd_send_signal(fd, sig)
            return True
        if can_signal_group_by_pidfd():
            signal.pidfd_send_signal(fd, sig, None, PIDFD_SIGNAL_PROCESS_GROUP)
            return True
        # Before 6.9: by group id, while the leader is unreaped (so the id is its own).
        try:
            peek_pidfd(fd)
        except ChildProcessError:
            return False
        return _kill(pid, sig, group=True)
    except ProcessLookupError:
        return False


def _kill(pid: int, sig: int, *, group: bool = False) -> bool:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


# --- one process, named exactly ----------------------------------------------------------


class ProcessRef:
    """One child of ours, named by its pidfd, or by its pid and its pidfs inode or start time.

    Not thread-safe: its owner (a Watch) uses it under its own lock. Open with :meth:`open`.

    Attributes:
        pid: The child's pid.
    """

    __slots__ = ("_born", "_born_by", "_fd", "_ino", "_lent", "_start", "pid")

    def __init__(
        self,
        pid: int,
        fd: int | None,
        start: int | None,
        *,
        born_by: int | None = None,
        ino: int | None = None,
    ) -> None:
        self.pid = pid
        self._fd = fd
        #: Its pidfs inode number (see can_identify_by_inode), read through a pidfd that
        #: named this process...
        self._ino = ino
        #: ...or its exact start time (read while a pidfd proved the pid was this process)...
        self._start = start
        #: ...or a bound: it started no later than this (boot ticks, like a start time).
        self._born_by = born_by
        self._born = _fds.generation()
        #: The pidfd is at the relay (lend() gave it up, and it has not come back yet).
        self._lent = False

    @classmethod
    def open(cls, pid: int, *, pidfd: bool) -> Self:
        """Name the unreaped child ``pid``: by a pidfd if ``pidfd``, else by pid and identity.

        The caller makes sure that ``pid`` still names the child it means (it has just
        started it, or holds the lock of the child's only other waiter): a reaped child's pid
        may name a stranger by now.

        Raises:
            ChildProcessError: ``pid`` is not an unreaped child of ours.
            OSError: ``pidfd`` and descriptors have run out (EMFILE...): the caller falls back.
        """
        if pidfd:
            try:
                fd = open_pidfd(pid)
            except ProcessLookupError:
                raise ChildProcessError(f"no process has pid {pid}") from None
            ref = cls(pid, fd, None)
            try:
                peek_pidfd(fd)  # ECHILD: it names no child of ours (reaped and reused?)
            except BaseException:
                ref.close()
                raise
            return ref
        if can_identify_by_inode():
            try:
                # ECHILD: it names no child of ours (reaped and reused?).
                ino = _with_pidfd(pid, _inode_of_child)
            except ProcessLookupError:
                raise ChildProcessError(f"no process has pid {pid}") from None
            except OSError as err:
                if err.errno not in OUT_OF_DESCRIPTORS:
                    raise
            else:
                return cls(pid, None, None, ino=ino)
        # No /proc read here: reading a child's stat while it execs costs more than the
        # whole registration otherwise (the sigchld backend's throughput fell by a fifth).
        # Its start time is bounded instead: it is running or a zombie now, so it started no
        # later than now, and a process given its pid later starts after it was reaped.
        if can_peek():
            peek_pid(pid)  # ECHILD: no unreaped child of ours has this pid
        born_by = _linux.boot_ticks() if _linux.has_proc() else None
        return cls(pid, None, None, born_by=born_by)

    # --- identity -------------------------------------------------------------------------

    @property
    def fileno(self) -> int | None:
        """The pidfd, readable once the process has exited; None when named by start time."""
        return self._fd

    def _is_same(self, fd: int | None, strict: bool) -> bool:
        """Whether the process that has the pid now is this one (``fd``: a pidfd for the pid).

        By inode number, read through ``fd``; else by start time.

        Raises:
            OSError: EMFILE/ENFILE when ``strict`` and /proc cannot be read; not ``strict``,
                the pid is all there is then (and True).
        """
        if self._ino is not None:
            # Without a pidfd (out of descriptors), the pid is all there is (True).
            return fd is None or os.fstat(fd).st_ino == self._ino
        if self._start is None and self._born_by is None:
            return True  # no /proc here: a pid is all there is (documented window)
        try:
            start = start_time(self.pid)
            if self._start is not None:
                return start == self._start
            # Started by the bound: this process, as a process given the pid later started
            # after this one was reaped, after the bound was taken (but for one clock tick:
            # started within the very tick the bound was taken, it is taken for this one).
            assert self._born_by is not None
            return start is not None and start <= self._born_by
        except OSError as err:
            if strict or err.errno not in OUT_OF_DESCRIPTORS:
                raise
            return True

    def _is_same_now(self) -> bool:
        """:meth:`_is_same`, with a pidfd opened for it when the identity is an inode number."""
        if self._ino is None:
            return self._is_same(None, True)
        try:
            return _with_pidfd(self.pid, lambda fd: self._is_same(fd, True))
        except ProcessLookupError:
            return False

    def _is_same_with_room(self) -> bool:
        return _with_room(self._is_same_now, lambda: self._is_same(None, False))

    # --- reading and reaping ------------------------------------------------------------------

    def peek(self, *, exact: bool = True) -> int | None:
        """The raw wait status if it has exited, not reaped; None while it runs.

        Args:
            exact: Named by pid, check that the exit read is this process's (a /proc read).
                Not ``exact``, the answer is only "the process that has the pid now exited":
                for a caller that reaps next through :meth:`reap`, which checks anyway.

        Raises:
            ProcessGone: It has been reaped (by its owner, or a stranger's waitpid).
        """
        if self._fd is not None:
            try:
                return peek_pidfd(self._fd)
            except ChildProcessError:
                raise ProcessGone(self.pid) from None
        try:
            raw = peek_pid(self.pid)
        except ChildProcessError:
            raise ProcessGone(self.pid) from None
        # "Running" needs no identity: had it been reaped and its pid reused by another child
        # of ours, that one's exit is what shows up here, and is checked then. An exit counts
        # only if this process still has the pid after the read: it had it before (since it
        # was opened), so it had it at the read.
        if raw is not None and exact and not self._is_same_with_room():
            raise ProcessGone(self.pid)
        return raw

    def reap(self) -> Reaped | None:
        """Reap it if it has exited, and return its raw wait status and usage; None while it runs.

        Raises:
            ProcessGone: It has been reaped already (by its owner, or a stranger's waitpid).
        """
        try:
            if self._fd is not None:
                return reap_pidfd(self._fd)
            gone: Reaped | _Gone | None = _GONE
            raw = _checked(self.pid, self._is_same, reap_pidfd, lambda: reap_pid(self.pid), gone)
        except ChildProcessError:
            raise ProcessGone(self.pid) from None
        if isinstance(raw, _Gone):
            raise ProcessGone(self.pid)
        return raw

    def recover(self) -> int | Away | None:
        """The raw wait status of this process after another waiter reaped it, if kept.

        Only through a pidfd held since before the reap, on a kernel that keeps the status
        (see :func:`can_recover_stolen_status`); None otherwise, and while it is unreaped.
        AWAY while the pidfd is lent to the relay: it comes back once the process has exited
        (or the relay is declared gone, and then there is nothing to read), so ask again then.
        """
        if not can_recover_stolen_status():
            return None
        if self._fd is None:
            return AWAY if self._lent else None
        return exit_after_reap(self._fd)

    # --- signals --------------------------------------------------------------------------

    def send_signal(self, sig: int, *, group: bool = False) -> bool:
        """Send ``sig`` to this process (``group``: to the process group it leads).

        Never reaches a process that took the pid: through the pidfd; or through a pidfd
        opened for the call and checked against the start time. For a group the kernel's
        PIDFD_SIGNAL_PROCESS_GROUP (6.9+) is exact even once the leader is reaped; before
        6.9 the group is signalled by id only while the leader is provably unreaped (its
        pid, hence the group id, cannot be reused then), so the caller holds whatever lock
        keeps other waiters from reaping it. Without pidfds the check comes right before
        ``kill``: the window left is the process being reaped by another waiter and its pid
        reused between the two calls.

        Returns:
            Whether a signal was sent (False: the process is gone).
        """
        if self._fd is not None:
            return signal_pidfd(self._fd, self.pid, sig, group)

        def still_ours(fd: int | None, strict: bool) -> bool:
            # A group by id (no pidfd): only while the leader is unreaped keeps the id its own.
            return self._is_same(fd, strict) and (not group or self._is_unreaped_child())

        return _checked(
            self.pid,
            still_ours,
            lambda fd: signal_pidfd(fd, self.pid, sig, group),
            lambda: _kill(self.pid, sig, group=group),
            False,
        )

    def _is_unreaped_child(self) -> bool:
        if not can_peek():
            return True  # nothing better to ask on this system
        try:
            peek_pid(self.pid)
        except ChildProcessError:
            return False
        return True

    # --- handing the pidfd over (the relay) -------------------------------------------------

    def lend(self) -> int | None:
        """Give up the pidfd, going on by pid and identity; return the pidfd (still tracked).

        The identity is the pidfd's inode number (pidfs), or the start time, read while the
        pidfd proves that the pid is still this running process. None, and nothing changes,
        when that cannot be proven: it has exited or been reaped (settle it instead), or
        there is no /proc.
        """
        fd = self._fd
        if fd is None:
            return None
        ino = start = None
        try:
            if can_identify_by_inode():
                ino = os.fstat(fd).st_ino
            else:
                start = start_time(self.pid)
                if start is None:
                    return None
            if peek_pidfd(fd) is not None:
                return None
        except OSError:  # ECHILD: reaped; EMFILE: /proc unreadable
            return None
        # Running at the peek, after the read: the read was of this process.
        self._fd, self._ino, self._start, self._lent = None, ino, start, True
        return fd

    def take_back(self, fd: int | None) -> None:
        """Own a pidfd for this process again (the relay returned it, under another number).

        None: it will never come back (the relay is gone, or had no room to send it); the
        process stays named by pid and start time.
        """
        self._lent = False
        if fd is not None:
            self._fd = fd
            self._born = _fds.generation()

    def close(self) -> None:
        """Close the pidfd (if one is held); the ref still names the process by pid."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _fds.close(fd, self._born)

    def __repr__(self) -> str:
        if self._fd is not None:
            how = f"pidfd {self._fd}"
        elif self._ino is not None:
            how = f"inode {self._ino}"
        elif self._start is not None:
            how = f"start time {self._start}"
        else:
            how = f"started by {self._born_by}"
        return f"<ProcessRef pid={self.pid} {how}>"


def _inode_of_child(fd: int) -> int:
    """The inode number of the pidfd ``fd``, if it names an unreaped child of ours.

    Raises:
        ChildProcessError: It names no unreaped child of ours.
    """
    peek_pidfd(fd)
    return os.fstat(fd).st_ino


class Away:
    """The marker for "its pidfd is at the relay: ask again once it is back" (see recover)."""

    def __repr__(self) -> str:
        return "AWAY"


AWAY: Final = Away()


class _Gone:
    """The marker for "the process checked is not the one named" (see _checked)."""


_GONE: Final = _Gone()
