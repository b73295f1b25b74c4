"""The relay: a small helper process that holds the pidfds of long-lived children for us.

Every fork copies the forking process's whole descriptor table, and the new child closes
those descriptors again before it execs: with a pidfd open for each of 4,000 children, every
``Popen`` in the process pays for a 4,000-entry table, twice (the benchmark measured bare
``Popen`` + ``wait`` 1.7x to 2.1x slower). Linux has no close-on-fork flag, so the only way
to keep the descriptors out of that copy is to keep them out of the process.

So, once the engine holds more than a few hundred pidfds, it lends the oldest ones (the
children likeliest to live long) to the relay, a fresh ``python -I -S`` running :func:`main`
that never forks. The relay watches them with epoll and, when one turns readable (its child
exited), gives the descriptor back. The engine then reaps the child through that pidfd, as
if it had never left. While a pidfd is away, the child is reaped by pid (under its owner's
rules, as the sigchld backend does) if anyone asks before the relay answers.

Both ends of the protocol live here. The socket is a ``SOCK_SEQPACKET`` pair, so each
message arrives whole: a kind byte, then tokens (the engine's numbers for the lent children)
as native 64-bit integers, with the descriptors, in the same order, as SCM_RIGHTS.

- relay -> engine ``H``: hello, once it runs: nothing is lent before (a ``sys.executable``
  that is not Python, as under uWSGI, never says it).
- engine -> relay ``L``: lend these pidfds.
- relay -> engine ``X``: these children exited; here are their pidfds back.
- relay -> engine ``R``: refused (the relay is out of descriptors): these pidfds are gone.

The relay exits when the engine closes its end, or when the process that started it dies.
A process forked from ours closes its copies of every relay socket at once (an at-fork hook
here), or the relay would never see that end close.
"""

from __future__ import annotations

import array
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Final

#: SCM_RIGHTS carries at most 253 descriptors a message (SCM_MAX_FD).
BATCH: Final = 250

HELLO: Final = b"H"
LEND: Final = b"L"
EXITED: Final = b"X"
REFUSED: Final = b"R"

_TOKEN: Final = "Q"
_TOKEN_SIZE: Final = array.array(_TOKEN).itemsize
_MESSAGE_SIZE: Final = 1 + BATCH * _TOKEN_SIZE
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(BATCH * array.array("i").itemsize)
#: Received descriptors are close-on-exec at once: no exec anywhere may inherit one.
_RECV_FLAGS: Final = getattr(socket, "MSG_CMSG_CLOEXEC", 0) | socket.MSG_DONTWAIT

#: Every relay socket open in this process, and every relay process we started: what a
#: forked child must drop (see _drop_after_fork). _fork_lock makes creating a socket pair and
#: noting it one step, as far as a fork is concerned.
_sockets: set[socket.socket] = set()
_processes: set[subprocess.Popen[bytes]] = set()
_fork_lock = threading.Lock()
#: The parent's relay processes, in a forked child: kept, never collected (see
#: _drop_after_fork).
_ABANDONED: list[subprocess.Popen[bytes]] = []

#: How long the relay gets to exit after its socket is closed before it is killed.
_CLOSE_TIMEOUT: Final = 5.0


def _pack(kind: bytes, tokens: list[int]) -> bytes:
    return kind + array.array(_TOKEN, tokens).tobytes()


def _unpack(message: bytes) -> tuple[bytes, list[int]]:
    tokens = array.array(_TOKEN)
    tokens.frombytes(message[1:])
    return message[:1], tokens.tolist()


# Not socket.send_fds() and socket.recv_fds(): they drop their ``flags`` (CPython 3.11 to
# 3.13), and MSG_DONTWAIT and MSG_CMSG_CLOEXEC matter here.


def _send_fds(sock: socket.socket, message: bytes, fds: list[int], flags: int = 0) -> None:
    sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], flags)


def _recv_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and its descriptors, without blocking (BlockingIOError when none)."""
    message, ancillary, _, _ = sock.recvmsg(_MESSAGE_SIZE, _ANCILLARY_SIZE, _RECV_FLAGS)
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return message, fds.tolist()


def _batches(items: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    return [items[start : start + BATCH] for start in range(0, len(items), BATCH)]


def is_available() -> bool:
    """Whether a relay can be started: this module is a file and the interpreter is known."""
    return bool(sys.executable) and os.path.isfile(__file__)


class Relay:
    """The engine's end: a running relay process and the socket to it.

    Used from the reaping thread only.
    """

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._process = process
        self._sock = sock
        #: Whether the relay has said hello: until then, lend it nothing.
        self.ready = False

    @classmethod
    def start(cls) -> Relay:
        """Start a relay process.

        Raises:
            OSError: It could not be started (no interpreter, no process, no descriptor).
        """
        if not is_available():
            raise OSError(f"no relay: cannot run {__file__!r} with {sys.executable!r}")
        with _fork_lock:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            _sockets.update((ours, theirs))
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                cwd="/",
                # Out of the terminal's process group: a Ctrl-C meant for the application
                # must not take the relay down with it. It exits when our end closes.
                start_new_session=True,
            )
        except BaseException:
            _close_socket(ours)
            raise
        finally:
            _close_socket(theirs)
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
        for batch in _batches(items):
            tokens = [token for token, _ in batch]
            fds = [fd for _, fd in batch]
            try:
                _send_fds(self._sock, _pack(LEND, tokens), fds, socket.MSG_DONTWAIT)
            except OSError:
                # Full (the relay is behind), or gone: what was not sent stays with us.
                break
            sent += len(batch)
        return sent

    def receive(self) -> tuple[list[tuple[int, int | None]], bool]:
        """Read what the relay sent, without blocking.

        Returns:
            The (token, pidfd) pairs handed back, pidfd None when the relay refused it or
            the descriptor could not be received; and whether the relay is still there.
        """
        returned: list[tuple[int, int | None]] = []
        while True:
            try:
                message, fds = _recv_fds(self._sock)
            except BlockingIOError:
                return returned, True
            except OSError:
                return returned, False
            if not message:
                for fd in fds:
                    os.close(fd)
                return returned, False
            kind, tokens = _unpack(message)
            if kind == HELLO:
                self.ready = True
            if kind != EXITED:
                fds, extra = [], fds
                for fd in extra:
                    os.close(fd)
            # Fewer descriptors than tokens: we ran out of descriptors (MSG_CTRUNC) and the
            # kernel closed the rest.
            returned.extend(
                (token, fds[index] if index < len(fds) else None)
                for index, token in enumerate(tokens)
            )

    def close(self, *, kill: bool = False) -> int | None:
        """Close the socket, wait for the relay to exit and reap it; return its exit code.

        ``kill`` kills it first: a relay that never said hello may not be ours to trust.
        """
        _close_socket(self._sock)
        if kill:
            self._process.kill()
        try:
            code = self._process.wait(timeout=_CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        _processes.discard(self._process)
        return code


def _close_socket(sock: socket.socket) -> None:
    with _fork_lock:
        _sockets.discard(sock)
        sock.close()


def _drop_after_fork() -> None:
    """In a forked child: close our copies of the relay sockets; the relays are the parent's."""
    global _fork_lock
    _fork_lock = threading.Lock()  # the forking thread's copy may have been held by another
    for sock in _sockets:
        sock.close()
    _sockets.clear()
    # Kept, never collected: Popen.__del__ would warn about a process still running, and
    # subprocess's cleanup would waitpid() a pid that is not this process's child (and may one
    # day be the pid of one of its own).
    _ABANDONED.extend(_processes)
    _processes.clear()


# Named functions, not the bound methods: _drop_after_fork replaces the lock in the child.
def _before_fork() -> None:
    _fork_lock.acquire()


def _after_fork_in_parent() -> None:
    _fork_lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_drop_after_fork,
    )


# --- the relay process ---------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """Run the relay on the socket descriptor given in ``argv[1]`` until it closes."""
    ctl = socket.socket(fileno=int(argv[1]))
    # Started from the reaping thread, it inherits that thread's signal mask: a relay that
    # cannot be stopped by SIGTERM would surprise whoever tries.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # Nor the dispositions it ignores (nohup's SIGHUP, a service's SIGTERM).
    for number in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)
    _raise_descriptor_limit()
    try:
        ctl.send(HELLO)
        _relay(ctl)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the engine closed its end while we were answering: nobody is left to tell
    return 0


def _relay(ctl: socket.socket) -> None:
    epoll = select.epoll()
    epoll.register(ctl.fileno(), select.EPOLLIN)
    held: dict[int, int] = {}
    while True:
        exited: list[tuple[int, int]] = []
        for fd, _ in epoll.poll():
            if fd == ctl.fileno():
                if not _take(ctl, epoll, held):
                    return
                continue
            token = held.pop(fd, None)
            if token is not None:
                epoll.unregister(fd)
                exited.append((token, fd))
        for batch in _batches(exited):
            tokens = [token for token, _ in batch]
            _send_fds(ctl, _pack(EXITED, tokens), [fd for _, fd in batch])
            for _, fd in batch:
                os.close(fd)


def _take(ctl: socket.socket, epoll: select.epoll, held: dict[int, int]) -> bool:
    """Take every pidfd the engine sent; False once it has closed its end."""
    while True:
        try:
            message, fds = _recv_fds(ctl)
        except BlockingIOError:
            return True
        if not message:
            return False
        _, tokens = _unpack(message)
        for token, fd in zip(tokens, fds, strict=False):
            held[fd] = token
            epoll.register(fd, select.EPOLLIN)
        refused = tokens[len(fds) :]
        if refused:
            # Out of descriptors here: the kernel closed those, the engine must watch them.
            ctl.send(_pack(REFUSED, refused))


def _raise_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
