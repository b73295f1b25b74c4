"""``zombiereaper run``: a container init (PID 1).

It does what tini and dumb-init do (../shared/prior-art.md, "A PID-1 init must get these
right"): run one program as its child, hand it every signal, reap every orphan, and exit with
the program's status.

- Every catchable signal gets a handler, so that as PID 1 the kernel delivers it (it drops
  default-action signals sent to a namespace's init). The handler does nothing; the C-level
  wakeup fd (``signal.set_wakeup_fd``) writes the signal's number into a pipe, and the main
  loop reads it there: SIGCHLD means "reap", any other is forwarded. TSTP, TTIN and TTOU are
  forwarded like the others: the init itself never stops.
- The program starts with an empty signal mask, default dispositions (SIGPIPE and SIGXFSZ,
  which Python ignores for itself, included) and in its own process group, which takes the
  terminal's foreground when there is one. It is forked with every signal blocked and its
  handlers reset before they are unblocked, so that no signal meant for the init runs a handler
  in the child; no thread exists in this process, so Python may run between fork and exec.
- The init reaps with ``waitpid(-1)``, as tini does. That is right here, and only here: the
  init is the whole process, it runs no code of others that could wait for a child of its own,
  so every status it takes is its to take. The Reaper's care for other waiters (and its thread,
  its imports, its memory) would buy nothing: this module imports only what the loop needs,
  so that the init starts about as fast as Python does and stays small.
- Neither PID 1 nor a subreaper, the init never gets the program's orphans. Whether there will
  be any cannot be known in advance, so it warns only when it sees one go elsewhere
  (:class:`OrphanWatch`), never before the program has started.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from . import _linux

# `typing` costs the init as much as starting Python: type checkers treat any name
# TYPE_CHECKING as true, Python never imports what is under it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Final, TextIO

#: Exit statuses of the init itself, as shells and tini use them.
EXIT_NOT_FOUND: Final = 127
EXIT_CANNOT_EXECUTE: Final = 126
EXIT_STATUS_LOST: Final = 255

_NEVER_FORWARDED: Final = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD})

#: How often, in seconds, the init looks for the program's orphans that went to another process
#: (only while it is neither PID 1 nor a subreaper, and until it has found one).
ORPHAN_LOOK_INTERVAL: Final = 1.0

#: Said right after the start when the orphans cannot be looked for (no /proc).
_NO_SUBREAPER_WARNING: Final = (
    "warning: not PID 1 and not a subreaper: orphans will not come back to zombiereaper to be "
    "reaped (use -s/--subreaper)"
)


def forwarded_signals() -> list[signal.Signals | int]:
    """Every signal that can be caught here, but SIGCHLD."""
    return sorted((sig for sig in signal.valid_signals() if sig not in _NEVER_FORWARDED), key=int)


def parse_signal(text: str) -> int:
    """Parse a signal given as ``TERM``, ``SIGTERM`` or ``15`` (0 means none).

    Raises:
        ValueError: No such signal.
    """
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if number == 0 or number in {int(s) for s in signal.valid_signals()}:
            return number
        raise ValueError(f"no signal number {number} on this system")
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {text!r} (try TERM, SIGUSR1 or 15)") from None


class InitOptions:
    """What ``zombiereaper run`` was asked to do.

    Attributes:
        argv: The program and its arguments.
        group: Forward signals to the program's whole process group.
        subreaper: Become a subreaper when not PID 1.
        rewrite: Signal numbers to forward as another (0: drop).
        remap_exit: Exit codes of the program to exit 0 for.
        drain: Seconds to give the remaining descendants once the program has exited (None:
            no drain).
        verbose: How much to say (0: warnings only).
    """

    def __init__(
        self,
        argv: list[str],
        *,
        group: bool = False,
        subreaper: bool = False,
        rewrite: dict[int, int] | None = None,
        remap_exit: frozenset[int] = frozenset(),
        drain: float | None = None,
        verbose: int = 0,
    ) -> None:
        self.argv = argv
        self.group = group
        self.subreaper = subreaper
        self.rewrite = {} if rewrite is None else rewrite
        self.remap_exit = remap_exit
        self.drain = drain
        self.verbose = verbose

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"InitOptions({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InitOptions):
            return NotImplemented
        return vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass


class InitLog:
    """Where the init says what it does: stderr, prefixed; debug lines only with -v."""

    def __init__(self, verbose: int, stream: TextIO) -> None:
        self.verbose = verbose
        self._stream = stream

    def say(self, message: str) -> None:
        """Print ``message`` for the user."""
        print(f"zombiereaper: {message}", file=self._stream, flush=True)

    def debug(self, message: str) -> None:
        """Print ``message`` with -v only."""
        if self.verbose:
            self.say(message)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Handle a signal by doing nothing: the wakeup fd has already recorded it."""


def _take_terminal() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A background group asking for the foreground gets SIGTTOU unless it ignores it.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, os.getpgrp())
    finally:
        signal.signal(signal.SIGTTOU, signal.SIG_DFL)


def _owns_terminal_foreground() -> bool:
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def run_init(options: InitOptions, stderr: TextIO | None = None) -> int:
    """Run ``options.argv`` as an init would, and return the exit status to exit with."""
    log = InitLog(options.verbose, stderr or sys.stderr)
    # Whatever mask we were started with, the program must start with none, and a blocked
    # signal could not be forwarded.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    # SIGCHLD too (started with it ignored, the kernel would discard the program's status):
    # its number in the pipe means "reap".
    for sig in (*forwarded_signals(), signal.SIGCHLD):
        try:
            signal.signal(sig, _ignore)
        except (OSError, ValueError):
            pass  # not catchable on this system
    look_for_orphans = _become_subreaper(options, log)

    program = options.argv[0]
    try:
        pid = start_program(options.argv, take_terminal=_owns_terminal_foreground())
    except FileNotFoundError as err:
        # ENOENT: the program, or the interpreter its #! line names, does not exist.
        log.say(f"{program}: {err.strerror} (not found)")
        return EXIT_NOT_FOUND
    except OSError as err:
        log.say(f"{program}: cannot execute: {err.strerror}")
        return EXIT_CANNOT_EXECUTE
    log.debug(f"started {program} as pid {pid}")
    orphans = _watch_orphans(pid, log) if look_for_orphans else None
    status = _forward_until_exit(pid, options, wake_read, log, orphans)
    if options.drain is not None:
        if orphans is not None:
            # The drain stops descendants only: say which processes it cannot reach, the
            # children that the program's own exit has just orphaned included.
            orphans.look()
        _drain(options.drain, log)
    _reap_exited(pid, log)  # the orphans that have exited meanwhile, before we go
    return exit_status(status, options, log)


def start_program(argv: list[str], *, take_terminal: bool = False) -> int:
    """Start ``argv`` (searched in PATH) as the init's program; return its pid.

    The program gets an empty signal mask, every disposition at its default, a process group
    of its own (the terminal's foreground with ``take_terminal``) and every descriptor of the
    init but the init's own pipes (which are close-on-exec).

    Raises:
        OSError: The program could not be executed (FileNotFoundError: it does not exist).
    """
    # exec's error comes back through this pipe; its end closes on a successful exec.
    error_read, error_write = os.pipe()
    # Blocked from before the fork until the child's handlers are reset: a signal meant for the
    # init must not run the init's handler in the child (which would write to the wakeup pipe).
    signal.pthread_sigmask(signal.SIG_SETMASK, signal.valid_signals())
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: it execs or exits
            _exec_program(argv, error_write, take_terminal)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.close(error_write)
    with os.fdopen(error_read, "rb") as pipe:
        error = pipe.read()
    if not error:
        return pid
    os.waitpid(pid, 0)  # the child exited at once: reap it before saying why
    number = int(error)
    raise OSError(number, os.strerror(number), argv[0])


def _exec_program(
    argv: list[str], error_write: int, take_terminal: bool
) -> None:  # pragma: no cover
    # In the forked child of a process without threads: Python may run until the exec.
    number = 0
    try:
        signal.set_wakeup_fd(-1)
        # Handled signals, and those Python ignores for itself (SIGPIPE, SIGXFSZ): exec would
        # keep an ignored signal ignored.
        for sig in signal.valid_signals():
            if signal.getsignal(sig) not in (signal.SIG_DFL, None):
                signal.signal(sig, signal.SIG_DFL)
        os.setpgid(0, 0)
        if take_terminal:
            _take_terminal()
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execvp(argv[0], argv)
    except OSError as err:
        number = err.errno or 0
    except BaseException:  # whatever it was, the child must exit, not return into the init
        pass
    try:
        os.write(error_write, str(number or 1).encode())
    finally:
        os._exit(EXIT_CANNOT_EXECUTE)


def _become_subreaper(options: InitOptions, log: InitLog) -> bool:
    """Make this process a subreaper if asked; return whether to look out for orphans.

    Orphans come back as PID 1 and with ``-s`` (when ``-s`` fails, that has been said). They
    also come back to a subreaper already (a parent may have set the flag: it survives exec),
    which :func:`_is_subreaper_already` tells: that is asked by the first look, not here,
    since asking loads ctypes, which would slow down every start (and the first look comes
    only after a second, if the program still runs).
    """
    if os.getpid() == 1:
        return False
    if options.subreaper:
        try:
            _linux.set_child_subreaper(True)
        except OSError as err:
            log.say(f"cannot become a subreaper ({err.strerror}): orphans go to PID 1")
        return False
    return True


def _is_subreaper_already() -> bool:
    return _linux.can_be_subreaper() and _linux.is_child_subreaper()


def _watch_orphans(program_pid: int, log: InitLog) -> OrphanWatch | None:
    if not _linux.can_list_children():
        if not _is_subreaper_already():
            log.say(_NO_SUBREAPER_WARNING)  # cannot look: say that it may happen, once
        return None
    return OrphanWatch(program_pid, log)


class OrphanWatch:
    """Looks for the program's orphans that went to another process, and warns once.

    Neither PID 1 nor a subreaper, the init never gets the orphans among the program's
    descendants: the kernel hands each to PID 1 or to a subreaper higher up, and the init can
    neither reap, report nor drain it. An orphan is seen as a process of the program's process
    group (the program's pid, which every descendant keeps unless it moves to a group or session
    of its own, as a daemon does) whose parent no longer leads back to the init. Looking costs a
    ``getpgid()`` per process of the system and a read of /proc/PID/stat per process of the
    group: it is done every :data:`ORPHAN_LOOK_INTERVAL` seconds while the program runs, and once
    more before a drain, until the first orphan is found.
    """

    def __init__(self, program_pid: int, log: InitLog) -> None:
        self._program = program_pid
        self._log = log
        self._due = time.monotonic() + ORPHAN_LOOK_INTERVAL
        #: True once there is nothing more to look for: a warning was given, or this process
        #: turned out to be a subreaper already.
        self.done = False

    def timeout(self) -> float | None:
        """Seconds until the next look is due, for ``select``; None when there is none to come."""
        if self.done:
            return None
        return max(0.0, self._due - time.monotonic())

    def look_if_due(self) -> None:
        """Look if it is time to, while the program runs.

        The program's own exit orphans its children: that counts only before a drain (see
        :meth:`look`), since without one the init leaves them as a subreaper would.
        """
        if self.done or time.monotonic() < self._due:
            return
        self._due = time.monotonic() + ORPHAN_LOOK_INTERVAL
        if not self._program_runs() or self._comes_back_anyway():
            return
        found = find_escaped_orphans(self._program)
        if found and self._program_runs():  # ran all along: its exit orphaned none of them
            self._warn(found)

    def look(self) -> None:
        """Look now, and warn about what is found (if no warning has been given yet)."""
        if not self.done and not self._comes_back_anyway():
            found = find_escaped_orphans(self._program)
            if found:
                self._warn(found)

    def _comes_back_anyway(self) -> bool:
        """Whether orphans come back here after all: this process is a subreaper already."""
        if _is_subreaper_already():
            self.done = True
        return self.done

    def _program_runs(self) -> bool:
        try:
            stat = _linux.read_stat(self._program)
        except OSError:
            return False
        return stat is not None and stat.state not in ("Z", "X") and stat.ppid == os.getpid()

    def _warn(self, found: list[tuple[int, int]]) -> None:
        self.done = True
        pid, parent = found[0]
        first = f"pid {pid} ({_linux.read_name(pid)})"
        if len(found) == 1:
            who = f"{first} was"
        else:
            who = f"{len(found)} processes, {first} among them, were"
        self._log.say(
            f"warning: {who} orphaned and went to pid {parent} ({_linux.read_name(parent)}): not "
            "PID 1 and not a subreaper, zombiereaper can neither reap nor drain the program's "
            "orphans (use -s/--subreaper)"
        )


def find_escaped_orphans(pgid: int) -> list[tuple[int, int]]:
    """The processes of group ``pgid`` whose line of parents no longer leads to this process.

    Returns:
        ``(pid, parent)`` pairs, by pid: each process and the parent it has now.
    """
    # Whether a pid's line of parents leads here, learnt along the way (0: the top, reached).
    leads_here: dict[int, bool] = {os.getpid(): True, 0: False}
    found = []
    try:
        pids = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return []
    for pid in pids:
        try:
            if os.getpgid(pid) != pgid:
                continue
            stat = _linux.read_stat(pid)
            if stat is not None and _leads_here(stat, leads_here) is False:
                found.append((pid, stat.ppid))
        except OSError:
            continue  # gone meanwhile (ESRCH), or out of descriptors: the next look tells
    return found


def _leads_here(stat: _linux.ProcStat, known: dict[int, bool]) -> bool | None:
    """Whether the line of parents of ``stat``'s process leads here; None if unsure.

    Args:
        stat: The process.
        known: Whether the line of parents of a pid leads here, for the pids known so far;
            the parents met on the way are added.

    Raises:
        OSError: A /proc file could not be read.
    """
    line: list[int] = []
    child = stat
    while child.ppid not in known:
        parent = _linux.read_stat(child.ppid)
        # Gone, or its pid reused (a parent starts before its child): the next look tells.
        if parent is None or parent.start_time > child.start_time or len(line) > 4096:
            return None
        line.append(parent.pid)
        child = parent
    verdict = known[child.ppid]
    known.update(dict.fromkeys(line, verdict))
    return verdict


def _forward_until_exit(
    pid: int, options: InitOptions, wake_read: int, log: InitLog, orphans: OrphanWatch | None
) -> int:
    """Forward signals to the program until it exits; reap orphans meanwhile.

    Returns:
        The program's wait status.
    """
    while True:
        timeout = orphans.timeout() if orphans is not None else None
        select.select([wake_read], [], [], timeout)
        if orphans is not None:
            orphans.look_if_due()
        try:
            received = os.read(wake_read, 4096)
        except BlockingIOError:
            received = b""
        # Reaped before anything is forwarded, and only here: until this thread has reaped the
        # program, its pid (and its group's id) cannot name another process.
        status = _reap_exited(pid, log)
        if status is not None:
            return status
        for number in received:
            if number == signal.SIGCHLD:
                continue
            target = options.rewrite.get(number, number)
            if target == 0:
                log.debug(f"dropped {_name(number)}")
                continue
            if options.group:
                os.killpg(pid, target)
            else:
                os.kill(pid, target)
            log.debug(f"forwarded {_name(number)} as {_name(target)} to pid {pid}")


def _reap_exited(program: int, log: InitLog) -> int | None:
    """Reap every child that has exited; return the program's wait status if it was one."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == program:
            found = status
        else:
            log.debug(f"reaped orphan: pid {pid} {describe_wait_status(status)}")


def _drain(seconds: float, log: InitLog) -> None:
    """Stop every remaining descendant as a tree (see zombiereaper._tree); reaped after.

    Frozen first, so that none escapes by forking; then SIGTERM and SIGCONT (a stopped
    process could not act on SIGTERM: systemd does the same), up to ``seconds`` to end, and
    SIGKILL for the rest. Each process is held and signalled through a pidfd: never a
    recycled pid.
    """
    from . import _tree  # noqa: PLC0415 - only a drain needs it

    if not _tree.can_stop_trees():
        log.say("cannot drain: stopping the remaining processes needs pidfds (Linux 5.4+)")
        return
    stopping = _tree.TreeStop(None)
    try:
        stopping.terminate()
        if not stopping.members:
            return
        log.debug(f"draining {len(stopping.members)} process(es): SIGTERM")
        if not stopping.wait(time.monotonic() + seconds):
            killed = stopping.kill()
            log.debug(f"{len(killed)} process(es) still ran after {seconds:g} s: SIGKILL")
            stopping.wait(None)
    finally:
        stopping.close()


def exit_status(wait_status: int, options: InitOptions, log: InitLog) -> int:
    """The init's own exit status: the program's code, 128+N for signal N, remapped to 0."""
    code = os.waitstatus_to_exitcode(wait_status)
    if code < 0:
        code = 128 - code
    log.debug(f"{options.argv[0]}: {describe_wait_status(wait_status)}")
    return 0 if code in options.remap_exit else code


def describe_wait_status(wait_status: int) -> str:
    """How a process ended, in the words of :attr:`ExitStatus.outcome`."""
    if os.WIFSIGNALED(wait_status):
        dumped = " (core dumped)" if os.WCOREDUMP(wait_status) else ""
        return f"killed by {_name(os.WTERMSIG(wait_status))}{dumped}"
    return f"exited with code {os.waitstatus_to_exitcode(wait_status)}"


def _name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
