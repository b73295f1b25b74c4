"""The engine's end of the relay: the helper process that holds pidfds for us (see relay_main).

Every descriptor that crosses this end (the socket, pidfds sent and received) is tracked by
zombiereaper._fds in the same step that creates or receives it, so that a process forked at
any moment closes its copies: a forked child that kept the socket would keep the relay alive
after the engine closed its end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from .. import _fds
from . import relay_main
from .relay_main import EXITED, HELLO, LEND, PING, PONG, REFUSED

#: How long the relay may take to exit once its socket is closed, or once it is killed.
_EXIT_TIMEOUT = 1.0

#: Every relay process started here and not yet reaped.
_processes: set[subprocess.Popen[bytes]] = set()
#: The parent's relay processes, in a forked child: kept, never collected. Popen.__del__ would
#: warn about a process still running, and subprocess's cleanup would waitpid() a pid that is
#: not this process's child (and may one day be the pid of one of its own).
_ABANDONED: list[subprocess.Popen[bytes]] = []


def is_available() -> bool:
    """Whether a relay can be started: its script is a file and the interpreter is known."""
    return bool(sys.executable) and os.path.isfile(relay_main.__file__)


def _socket_from_fd(fd: int) -> socket.socket:
    return socket.socket(fileno=fd)


class Relay:
    """A running relay process and the socket to it; used from the reaping thread only."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._process = process
        self._sock = sock
        self._born = _fds.generation()
        #: Whether the relay has said hello: until then, lend it nothing.
        self.ready = False
        #: When the relay was last heard from (time.monotonic), and when last pinged.
        self.heard_at = time.monotonic()
        self.pinged_at: float | None = None

    @classmethod
    def start(cls) -> Relay:
        """Start a relay process.

        Raises:
            OSError: It could not be started (no interpreter, no process, no descriptor).
        """
        if not is_available():
            raise OSError(f"no relay: cannot run {relay_main.__file__!r} with {sys.executable!r}")
        with _fds.step():
            # Neither end on 0-2: ours for the reason in _fds.LOWEST; theirs would be
            # overwritten in the relay by the standard streams Popen gives it.
            ours, theirs = (
                _fds.above_stdio_object(end, _socket_from_fd)
                for end in socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            )
            _fds.track(ours.fileno(), ours.close)
            _fds.track(theirs.fileno(), theirs.close)
        born = _fds.generation()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", relay_main.__file__, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                cwd="/",
                # Out of the terminal's process group: a Ctrl-C meant for the application
                # must not take the relay down with it. It exits when our end closes.
                start_new_session=True,
            )
        except BaseException:
            _close_socket(ours, born)
            raise
        finally:
            _close_socket(theirs, born)
        _processes.add(process)
        ours.setblocking(False)
        return cls(process, ours)

    @property
    def pid(self) -> int:
        """The relay process's pid."""
        return self._process.pid

    def fileno(self) -> int:
        """The socket, readable when the relay has something to say (or has died)."""
        return self._sock.fileno()

    def lend(self, items: list[tuple[int, int]]) -> int:
        """Send (token, pidfd) pairs to the relay, without blocking.

        Returns:
            How many of ``items``, from the start, were sent. The caller still owns the
            descriptors: it closes those sent and takes the others back.
        """
        sent = 0
        for batch in relay_main.batches(items):
            tokens = [token for token, _ in batch]
            fds = [fd for _, fd in batch]
            try:
                relay_main.send_fds(
                    self._sock, relay_main.pack(LEND, tokens), fds, socket.MSG_DONTWAIT
                )
            except OSError:
                # Full (the relay is behind), or gone: what was not sent stays with us.
                break
            sent += len(batch)
        return sent

    def ping(self) -> None:
        """Ask the relay to answer (a pong counts as hearing from it)."""
        self.pinged_at = time.monotonic()
        try:
            self._sock.send(PING, socket.MSG_DONTWAIT)
        except OSError:
            pass  # full or gone: no answer will come, and that is what gets noticed

    def receive(self) -> tuple[list[tuple[int, int | None]], bool]:
        """Read what the relay sent, without blocking.

        Returns:
            The (token, pidfd) pairs handed back, pidfd None when the relay refused it or the
            descriptor could not be received (each pidfd tracked by zombiereaper._fds); and
            whether the relay is still there.
        """
        returned: list[tuple[int, int | None]] = []
        while True:
            try:
                with _fds.step():
                    message, received = relay_main.recv_fds(self._sock)
                    fds = [_fds.track(fd) for fd in received]
            except BlockingIOError:
                return returned, True
            except OSError:
                return returned, False
            self.heard_at = time.monotonic()
            born = _fds.generation()
            if not message:
                for fd in fds:
                    _fds.close(fd, born)
                return returned, False
            kind, tokens = relay_main.unpack(message)
            if kind == HELLO:
                self.ready = True
            if kind not in (EXITED, REFUSED, HELLO, PONG):
                tokens = []  # not ours to understand: a newer relay? take nothing from it
            if kind != EXITED:
                fds, extra = [], fds
                for fd in extra:
                    _fds.close(fd, born)
            # Fewer descriptors than tokens: we ran out of descriptors (MSG_CTRUNC) and the
            # kernel closed the rest.
            returned.extend(
                (token, fds[index] if index < len(fds) else None)
                for index, token in enumerate(tokens)
            )

    def close(self, *, kill: bool = False) -> int | None:
        """Close the socket, let the relay exit (or kill it) and reap it; return its status.

        The relay exits by itself once its socket closes. One that does not within
        :data:`_EXIT_TIMEOUT` (stopped, say), or that ``kill`` says is stuck, is killed: it
        holds nothing worth waiting for, and closing must never hang on it (issue 11, race 7).
        """
        _close_socket(self._sock, self._born)
        if kill:
            self._kill()
        try:
            code = self._process.wait(timeout=_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill()
            try:
                code = self._process.wait(timeout=_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                return None  # not even SIGKILL reached it yet: subprocess reaps it later
        _processes.discard(self._process)
        return code

    def _kill(self) -> None:
        try:
            self._process.kill()
        except ProcessLookupError:
            pass


def _close_socket(sock: socket.socket, born: int) -> None:
    with _fds.step():
        if born == _fds.generation():
            _fds.untrack(sock.fileno())
            sock.close()


def _abandon_after_fork() -> None:
    """In a forked child: the relays are the parent's (zombiereaper._fds closed the sockets)."""
    _ABANDONED.extend(_processes)
    _processes.clear()


os.register_at_fork(after_in_child=_abandon_after_fork)
