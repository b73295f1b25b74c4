"""Linux specifics: the child subreaper flag (prctl) and readers of /proc.

Everything here answers a capability question or reads the kernel's view of processes; the
rest of the library asks these functions and never checks the platform name itself.
"""

from __future__ import annotations

import functools
import os
import time

# The init imports this module: `typing`, `dataclasses` and `ctypes` would each cost it about
# as much as starting Python (type checkers treat any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from collections.abc import Callable, Container
    from typing import Final

_PR_SET_CHILD_SUBREAPER: Final = 36
_PR_GET_CHILD_SUBREAPER: Final = 37


class ProcStat:
    """The fields of /proc/PID/stat that reaping needs.

    Attributes:
        pid: The process id.
        state: One letter: R, S, D, Z (zombie), T, t, X...
        ppid: The parent's pid.
        start_time: When the process started, in clock ticks since boot: with the pid, it
            names one process for good, even after the pid is reused.
    """

    __slots__ = ("pid", "ppid", "start_time", "state")

    def __init__(self, *, pid: int, state: str, ppid: int, start_time: int) -> None:
        self.pid: Final = pid
        self.state: Final = state
        self.ppid: Final = ppid
        self.start_time: Final = start_time

    def __repr__(self) -> str:
        return (
            f"ProcStat(pid={self.pid}, state={self.state!r}, ppid={self.ppid}, "
            f"start_time={self.start_time})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProcStat):
            return NotImplemented
        return (self.pid, self.state, self.ppid, self.start_time) == (
            other.pid,
            other.state,
            other.ppid,
            other.start_time,
        )

    def __hash__(self) -> int:
        return hash((self.pid, self.state, self.ppid, self.start_time))

    @property
    def key(self) -> tuple[int, int]:
        """(pid, start_time): a name that a reused pid cannot take."""
        return self.pid, self.start_time


def parse_stat(text: str) -> ProcStat:
    """Parse the content of /proc/PID/stat.

    The command name sits in parentheses and may itself hold spaces and parentheses, so the
    fields are counted from the last ``)``.

    Raises:
        ValueError: The text is not a stat line.
    """
    head, sep, tail = text.rpartition(")")
    if not sep:
        raise ValueError(f"not a /proc/PID/stat line: {text[:80]!r}")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    # After the name: state(3) ppid(4) ... starttime(22), so index = field number - 3.
    return ProcStat(pid=pid, state=fields[0], ppid=int(fields[1]), start_time=int(fields[19]))


def _read_stat_line(pid: int) -> bytes | None:
    """The bytes of /proc/PID/stat, or None if no such process exists (or /proc is missing).

    Raises:
        OSError: The file exists but could not be read (EMFILE: out of descriptors).
    """
    try:
        return read_proc_file(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: gone between open and read
        return None


#: Attempts at opening a descriptor whose number a standard stream keeps taking over.
_LOW_NUMBER_ATTEMPTS: Final = 5

#: More than a /proc/PID/stat line can hold (52 numbers and a short name: a few hundred bytes).
_STAT_SIZE: Final = 4096


def read_proc_file(path: str, size: int = _STAT_SIZE) -> bytes:
    """One read of the /proc file ``path`` (a stat line, a name: one page at most).

    os.open and one read, not open(): a text file object costs 4 times as much, and this is
    read for every exit that the sigchld backend reaps by pid. Opened above the standard
    streams' numbers (see :func:`open_above_stdio`).

    Raises:
        OSError: As os.open and os.read (FileNotFoundError, ProcessLookupError: no such
            process); EAGAIN if a standard stream took the number over every time.
    """
    fd = open_above_stdio(lambda: os.open(path, os.O_RDONLY | os.O_CLOEXEC), _is_proc_file)
    try:
        return os.read(fd, size)
    finally:
        close_if_ours(fd, _is_proc_file)


def open_above_stdio(open_once: Callable[[], int], is_ours: Callable[[int], bool]) -> int:
    """``open_once()``'s descriptor, moved above 0-2 if it got one of those numbers.

    While the program has a standard stream closed, what we open gets its number, and the
    program may dup2() its stream back onto it at any moment: the dup2() closes what we
    opened, and our read and close would then read and close the program's stream (a status
    reported lost, a stdout gone). So a low number is copied above 2, the copy is kept only
    if ``is_ours`` says that it is what we opened (a /proc file, a pidfd: never a stream), and
    the low number is closed only while it still is. Out of descriptors for the copy, the low
    number itself is returned if it is still ours (the caller closes it the same checked way).

    Raises:
        OSError: As ``open_once``; EAGAIN if a standard stream took the number over every time.
    """
    for _ in range(_LOW_NUMBER_ATTEMPTS):
        fd = open_once()
        if fd > 2:  # above the standard streams: the common case
            return fd
        copy = copy_above_stdio(fd)
        if copy is None:
            if is_ours(fd):
                return fd
            continue
        if not is_ours(copy):
            os.close(copy)  # the program's stream: its dup2() closed what we opened
            continue
        # The program's stream is never one of ours. (Left: a dup2() between this check and
        # the close, a window of a few hundred nanoseconds.)
        if is_ours(fd):
            os.close(fd)
        return copy
    raise BlockingIOError("a standard stream took the descriptor's number over each time")


def copy_above_stdio(fd: int) -> int | None:
    """A close-on-exec duplicate of ``fd`` numbered 3 or more (None: out of descriptors)."""
    # Imported already by zombiereaper._fds (an import now would open files on 0-2 itself);
    # here only for a caller that has not imported it.
    import fcntl  # noqa: PLC0415

    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError:
        return None


def close_if_ours(fd: int, is_ours: Callable[[int], bool]) -> None:
    """Close what :func:`open_above_stdio` returned, unless the program has taken it over.

    Only a number below 3 (there was no room for a copy) can have been: it is closed only
    while ``is_ours`` still says it is what we opened.
    """
    if fd > 2 or is_ours(fd):
        os.close(fd)


def on_device(fd: int, device: int | None) -> bool:
    """Whether ``fd`` is open on a file of ``device`` (an ``is_ours`` for the two above)."""
    try:
        return os.fstat(fd).st_dev == device
    except OSError:
        return False


def _is_proc_file(fd: int) -> bool:
    return on_device(fd, _proc_device())


@functools.cache
def _proc_device() -> int | None:
    try:
        return os.stat("/proc").st_dev
    except OSError:
        return None


def read_start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), or None if no such process exists.

    :func:`read_stat` for the one field that tells a process from one that took its pid
    later, without building a ProcStat: this is read for every exit that the sigchld
    backend reaps by pid.

    Raises:
        OSError: The file exists but could not be read (EMFILE: out of descriptors).
    """
    data = _read_stat_line(pid)
    if data is None:
        return None
    # Fields counted from the last ")", as in parse_stat(): starttime is field 22.
    fields = data[data.rfind(b")") + 1 :].split(None, 20)
    try:
        return int(fields[19])
    except (ValueError, IndexError):
        return None


def read_stat(pid: int) -> ProcStat | None:
    """The stat fields of ``pid``, or None if no such process exists (or /proc is missing).

    Raises:
        OSError: The file exists but could not be read (EMFILE: out of descriptors).
    """
    data = _read_stat_line(pid)
    if data is None:
        return None
    try:
        return parse_stat(data.decode("utf-8", "replace"))
    except (ValueError, IndexError):
        return None


#: How printable() writes the control characters that have a short escape in Python.
_SHORT_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    r"""``text`` with every character that a terminal would not show as itself escaped.

    Any process can put newlines, escape sequences (``\x1b[2J``) or invisible characters in its
    command line and name: written raw, they would forge lines of the listing or drive the
    terminal. They become ``\n``, ``\x1b``, ``\u202e`` as in a Python string; an undecodable
    byte (read from /proc as a lone surrogate) becomes ``\xff``. A backslash stays as it is.
    """
    if text.isprintable():
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape: the byte it stands for
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def read_name(pid: int) -> str:
    """The command name of ``pid`` (/proc/PID/comm, as ``ps`` shows it), made :func:`printable`.

    "?" when it cannot be read (gone, no /proc, out of descriptors).
    """
    try:
        data = read_proc_file(f"/proc/{pid}/comm")
    except OSError:
        return "?"
    return printable(os.fsdecode(data.rstrip(b"\n"))) or "?"


@functools.cache
def _clock_ticks_per_second() -> int:
    return os.sysconf("SC_CLK_TCK")


def boot_ticks() -> int:
    """Now, in the unit of a process's start time: clock ticks since boot, rounded down.

    A process forked after this call has a start time >= the value returned.
    """
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)  # boot time: Linux's
    return int(time.clock_gettime(clock) * _clock_ticks_per_second())


def _children_files() -> list[str]:
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    return [f"/proc/self/task/{task}/children" for task in tasks]


@functools.cache
def has_proc() -> bool:
    """Whether a Linux /proc of this process's PID namespace is mounted.

    A stat(), which needs no descriptor: this is asked while registering a child, which may
    happen out of descriptors.
    """
    return os.path.exists(f"/proc/{os.getpid()}/stat")


def can_list_children() -> bool:
    """Whether this process's children can be listed through /proc (a Linux /proc is mounted)."""
    return has_proc()


@functools.cache
def has_proc_children() -> bool:
    """Whether the kernel lists children in /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN)."""
    return any(os.path.exists(path) for path in _children_files())


def child_pids() -> list[int]:
    """The pids of this process's children, from /proc.

    Reads /proc/self/task/*/children where the kernel has them, else scans the parent pid of
    every process in /proc/*/stat.
    """
    if has_proc_children():
        pids: list[int] = []
        for path in _children_files():
            try:
                with open(path, encoding="ascii") as file:
                    pids.extend(int(word) for word in file.read().split())
            except OSError:
                continue
        return pids
    me = os.getpid()
    found = []
    for stat in _all_stats():
        if stat.ppid == me:
            found.append(stat.pid)
    return found


def _all_stats() -> list[ProcStat]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    stats = []
    for name in names:
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                stats.append(stat)
    return stats


def zombie_children(skip: Container[int] = frozenset()) -> list[ProcStat]:
    """This process's children that are zombies, each named by pid and start time.

    Args:
        skip: Pids not to look at (their /proc files are not even read).
    """
    me = os.getpid()
    zombies = []
    for pid in child_pids():
        if pid in skip:
            continue
        stat = read_stat(pid)
        if stat is not None and stat.state == "Z" and stat.ppid == me:
            zombies.append(stat)
    return zombies


def pidfd_targets(exclude: frozenset[int] = frozenset()) -> set[int]:
    """The pids for which this process holds a pidfd (other than the descriptors in ``exclude``).

    asyncio's pidfd child watcher (3.12+), among others, holds one for each child it waits for:
    /proc/self/fdinfo tells which pid each pidfd names.
    """
    targets: set[int] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return targets
    for name in fds:
        fd = int(name)
        if fd in exclude:
            continue
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:[pidfd]":
                continue
            with open(f"/proc/self/fdinfo/{name}", encoding="ascii") as file:
                for line in file:
                    if line.startswith("Pid:"):
                        targets.add(int(line.split()[1]))
        except (OSError, ValueError):
            continue
    return targets


@functools.cache
def _libc() -> ctypes.CDLL | None:
    import ctypes  # noqa: PLC0415 - only prctl needs it, and it costs the init a third more

    # The symbols of this process, libc's among them: ctypes.util.find_library("c") would run
    # ldconfig or a compiler to find the same library.
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _prctl(option: int, arg: int) -> int:
    import ctypes  # noqa: PLC0415 - see _libc

    libc = _libc()
    if libc is None or not hasattr(libc, "prctl"):
        raise OSError(0, "this C library has no prctl()")
    result = ctypes.c_int(0)
    argument = ctypes.byref(result) if option == _PR_GET_CHILD_SUBREAPER else ctypes.c_ulong(arg)
    if libc.prctl(ctypes.c_int(option), argument, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result.value


def is_child_subreaper() -> bool:
    """Whether this process is a child subreaper.

    Raises:
        OSError: The system has no such flag (not Linux 3.4+).
    """
    return bool(_prctl(_PR_GET_CHILD_SUBREAPER, 0))


def set_child_subreaper(on: bool) -> None:
    """Make this process a child subreaper (orphaned descendants come back to it), or not.

    Raises:
        OSError: The system has no such flag (not Linux 3.4+).
    """
    _prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0)


@functools.cache
def can_be_subreaper() -> bool:
    """Whether PR_SET_CHILD_SUBREAPER works here."""
    try:
        is_child_subreaper()
    except OSError:
        return False
    return True


def set_kernel_disposition(signum: int, ignore: bool) -> None:
    """Set ``signum`` to SIG_IGN or SIG_DFL in the kernel only, through libc's ``signal()``.

    Python's own table of handlers is left as it is: the caller sets it afterwards with
    ``signal.signal``. Where there is no C library to call, nothing is done.
    """
    import ctypes  # noqa: PLC0415 - see _libc

    libc = _libc()
    if libc is None or not hasattr(libc, "signal"):
        return
    function = libc.signal
    function.argtypes = [ctypes.c_int, ctypes.c_void_p]
    function.restype = ctypes.c_void_p
    # SIG_DFL is 0 and SIG_IGN is 1 in every C library Python runs on.
    function(signum, 1 if ignore else 0)


def threads_handling(signum: int) -> list[int]:
    """The other threads of this process that may be inside a handler of ``signum`` now.

    While a thread runs a handler, the kernel adds the signal to its blocked mask (handlers
    installed without SA_NODEFER, as CPython's are); one that is runnable with the signal
    blocked is taken to be in the handler, or about to run it. A thread that keeps the signal
    blocked and computes looks the same (the caller bounds its wait). Empty without /proc.
    """
    import threading  # noqa: PLC0415 - the init imports this module and needs no threads

    me = threading.get_native_id()
    bit = 1 << (signum - 1)
    found = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    for name in tasks:
        if int(name) == me:
            continue
        try:
            with open(f"/proc/self/task/{name}/status", "rb") as file:
                text = file.read()
        except OSError:
            continue  # the thread ended
        state = blocked = b""
        for line in text.splitlines():
            if line.startswith(b"State:"):
                state = line.split()[1]
            elif line.startswith(b"SigBlk:"):
                blocked = line.split()[1]
        if state == b"R" and blocked and int(blocked, 16) & bit:
            found.append(int(name))
    return found
