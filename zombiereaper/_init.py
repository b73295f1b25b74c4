"""``zombiereaper run``: a container init (PID 1) on top of the all-scope Reaper.

It does what tini and dumb-init do (../shared/prior-art.md, "A PID-1 init must get these
right"): run one program as its child, hand it every signal, reap every orphan, and exit with
the program's status.

- Every catchable signal but SIGCHLD gets a handler, so that as PID 1 the kernel delivers it
  (it drops default-action signals sent to a namespace's init). The handler does nothing; the
  C-level wakeup fd (``signal.set_wakeup_fd``) writes the signal's number into a pipe, and the
  main loop forwards what it reads there. TSTP, TTIN and TTOU are forwarded like the others:
  the init itself never stops.
- The program is started before any thread exists, from a thread that blocks no signal:
  ``subprocess`` (fork and exec in C) gives it an empty signal mask, ``restore_signals`` puts
  SIGPIPE and SIGXFSZ (which Python ignores for itself) back to default, and exec resets every
  handled signal to default. It runs in its own process group, which takes the terminal's
  foreground when there is one.
- The all-scope Reaper (no grace: nothing else in this process waits for children) reaps the
  program through its Popen and every orphan that lands here; the program's exit is noticed
  through its own pidfd, so it ends the init even when it arrives in one SIGCHLD with others.
- Neither PID 1 nor a subreaper, the init never gets the program's orphans. Whether there will
  be any cannot be known in advance, so it warns only when it sees one go elsewhere
  (:class:`OrphanWatch`), never before the program has started.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TextIO

import psutil

from . import _linux
from ._child import on_settled
from ._reaper import Reaper
from ._zombies import printable

if TYPE_CHECKING:
    from types import FrameType

    from ._child import Child
    from ._status import ExitStatus

#: Exit statuses of the init itself, as shells and tini use them.
EXIT_NOT_FOUND: Final = 127
EXIT_CANNOT_EXECUTE: Final = 126
EXIT_STATUS_LOST: Final = 255

#: The byte the reaping thread writes into the wakeup pipe when the program has exited (signal
#: numbers, which Python writes there, are never 0).
_PROGRAM_EXITED: Final = b"\0"

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


@dataclass
class InitOptions:
    """What ``zombiereaper run`` was asked to do."""

    argv: list[str]
    group: bool = False
    subreaper: bool = False
    rewrite: dict[int, int] = field(default_factory=dict)
    remap_exit: frozenset[int] = frozenset()
    drain: float | None = None
    verbose: int = 0


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
    # Runs only while this process has no other thread (before the Reaper starts its own).
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
    # Whatever mask we were started with, the program must start with none (subprocess gives
    # it the mask of the thread that starts it), and a blocked signal could not be forwarded.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # Started with SIGCHLD ignored, the kernel would discard the program's status before the
    # Reaper is installed, and the program would inherit the setting.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    wake_read, wake_write = os.pipe()
    for fd in (wake_read, wake_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    for sig in forwarded_signals():
        try:
            signal.signal(sig, _ignore)
        except (OSError, ValueError):
            pass  # not catchable on this system
    look_for_orphans = _become_subreaper(options, log)

    program = options.argv[0]
    try:
        popen: subprocess.Popen[bytes] = subprocess.Popen(
            options.argv,
            process_group=0,
            restore_signals=True,
            close_fds=False,  # like tini: the program gets every descriptor the init got
            # No thread exists yet (the Reaper starts its own below): Python may run here.
            preexec_fn=_take_terminal if _owns_terminal_foreground() else None,  # noqa: PLW1509
        )
    except FileNotFoundError as err:
        # ENOENT: the program, or the interpreter its #! line names, does not exist.
        log.say(f"{program}: {err.strerror} (not found)")
        return EXIT_NOT_FOUND
    except OSError as err:
        log.say(f"{program}: cannot execute: {err.strerror}")
        return EXIT_CANNOT_EXECUTE
    log.debug(f"started {program} as pid {popen.pid}")
    orphans = _watch_orphans(popen.pid, log) if look_for_orphans else None

    def on_exit(status: ExitStatus) -> None:
        if status.pid != popen.pid:
            log.debug(f"reaped orphan: {status}")

    reaper = Reaper(scope="all", grace=0.0, on_exit=on_exit).install()
    try:
        child = reaper.watch(popen)
        # Called however the program ended, its status lost included: the loop must wake.
        on_settled(child, lambda _: os.write(wake_write, _PROGRAM_EXITED))
        _forward_until_exit(child, options, wake_read, log, orphans)
        if options.drain is not None:
            if orphans is not None:
                # The drain stops descendants only: say which processes it cannot reach, the
                # children that the program's own exit has just orphaned included.
                orphans.look()
            _drain(options.drain, log)
    finally:
        reaper.uninstall()
    return exit_status(child.status, options, log)


def _become_subreaper(options: InitOptions, log: InitLog) -> bool:
    """Make this process a subreaper if asked; return whether to look out for orphans.

    Orphans come back as PID 1, as a subreaper already (a parent may have set the flag: it
    survives exec) and with ``-s``; when ``-s`` fails, that has been said.
    """
    if os.getpid() == 1:
        return False
    if options.subreaper:
        try:
            _linux.set_child_subreaper(True)
        except OSError as err:
            log.say(f"cannot become a subreaper ({err.strerror}): orphans go to PID 1")
        return False
    return not (_linux.can_be_subreaper() and _linux.is_child_subreaper())


def _watch_orphans(program_pid: int, log: InitLog) -> OrphanWatch | None:
    if not _linux.can_list_children():
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
        self.warned = False

    def timeout(self) -> float | None:
        """Seconds until the next look is due, for ``select``; None when there is none to come."""
        if self.warned:
            return None
        return max(0.0, self._due - time.monotonic())

    def look_if_due(self) -> None:
        """Look if it is time to, while the program runs.

        The program's own exit orphans its children: that counts only before a drain (see
        :meth:`look`), since without one the init leaves them as a subreaper would.
        """
        if self.warned or time.monotonic() < self._due:
            return
        self._due = time.monotonic() + ORPHAN_LOOK_INTERVAL
        if not self._program_runs():
            return
        found = find_escaped_orphans(self._program)
        if found and self._program_runs():  # ran all along: its exit orphaned none of them
            self._warn(found)

    def look(self) -> None:
        """Look now, and warn about what is found (if no warning has been given yet)."""
        if not self.warned:
            found = find_escaped_orphans(self._program)
            if found:
                self._warn(found)

    def _program_runs(self) -> bool:
        try:
            stat = _linux.read_stat(self._program)
        except OSError:
            return False
        return stat is not None and stat.state not in ("Z", "X") and stat.ppid == os.getpid()

    def _warn(self, found: list[tuple[int, int]]) -> None:
        self.warned = True
        pid, parent = found[0]
        first = f"pid {pid} ({_process_name(pid)})"
        if len(found) == 1:
            who = f"{first} was"
        else:
            who = f"{len(found)} processes, {first} among them, were"
        self._log.say(
            f"warning: {who} orphaned and went to pid {parent} ({_process_name(parent)}): not "
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


def _process_name(pid: int) -> str:
    try:
        return printable(psutil.Process(pid).name())
    except psutil.Error:
        return "?"


def _forward_until_exit(
    child: Child, options: InitOptions, wake_read: int, log: InitLog, orphans: OrphanWatch | None
) -> None:
    while child.running:
        timeout = orphans.timeout() if orphans is not None else None
        ready, _, _ = select.select([wake_read], [], [], timeout)
        if orphans is not None:
            orphans.look_if_due()
        if not ready:
            continue
        try:
            received = os.read(wake_read, 4096)
        except BlockingIOError:
            continue
        for number in received:
            if number in (0, signal.SIGCHLD):
                continue
            target = options.rewrite.get(number, number)
            if target == 0:
                log.debug(f"dropped {_name(number)}")
                continue
            # After the program's exit this does nothing: it never reaches a recycled pid.
            child.send_signal(target, group=options.group)
            log.debug(f"forwarded {_name(number)} as {_name(target)} to pid {child.pid}")


def _drain(seconds: float, log: InitLog) -> None:
    """TERM every remaining descendant, wait up to ``seconds``, KILL the rest; the Reaper reaps."""
    descendants = _live_descendants()
    if not descendants:
        return
    log.debug(f"draining {len(descendants)} process(es): SIGTERM")
    for proc in descendants:
        try:
            proc.terminate()  # psutil checks pid and start time: never a recycled pid
            proc.resume()  # a stopped process could not act on SIGTERM (systemd does the same)
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + seconds
    while _live_descendants() and time.monotonic() < deadline:
        time.sleep(0.01)
    stubborn = _live_descendants()
    if stubborn:
        log.debug(f"{len(stubborn)} process(es) still ran after {seconds:g} s: SIGKILL")
    # Again and again: a descendant may fork between the listing and the kill.
    while stubborn:
        for proc in stubborn:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.01)
        stubborn = _live_descendants()


def _live_descendants() -> list[psutil.Process]:
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def exit_status(status: ExitStatus | None, options: InitOptions, log: InitLog) -> int:
    """The init's own exit status: the program's code, 128+N for signal N, remapped to 0."""
    if status is None:
        log.say("the program's exit status was taken by other code")
        return EXIT_STATUS_LOST
    code = status.shell_code
    log.debug(f"{options.argv[0]}: {status.outcome}")
    return 0 if code in options.remap_exit else code


def _name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
