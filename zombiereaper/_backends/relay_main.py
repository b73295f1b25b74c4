"""The relay process, and the protocol both ends speak (standard library only: it runs as a script).

Every fork copies the forking process's whole descriptor table, and the new child closes
those descriptors again before it execs: with a pidfd open for each of 4,000 children, every
``Popen`` in the process pays for a 4,000-entry table, twice (the benchmark measured bare
``Popen`` + ``wait`` 1.7x to 2.1x slower). Linux has no close-on-fork flag, so the only way
to keep the descriptors out of that copy is to keep them out of the process.

So, once the engine holds more than a few hundred pidfds, it lends the oldest ones (the
children likeliest to live long) to the relay, a fresh ``python -I -S`` running :func:`main`
that never forks. The relay watches them with epoll and, when one turns readable (its child
exited), gives the descriptor back (zombiereaper._backends.pidfd has the engine's side).

The socket is a ``SOCK_SEQPACKET`` pair, so each message arrives whole: a kind byte, then
tokens (the engine's numbers for the lent children) as native 64-bit integers, with the
descriptors, in the same order, as SCM_RIGHTS.

- relay -> engine ``H``: hello, once it runs: nothing is lent before (a ``sys.executable``
  that is not Python, as under uWSGI, never says it).
- engine -> relay ``L``: lend these pidfds.
- relay -> engine ``X``: these children exited; here are their pidfds back.
- relay -> engine ``R``: refused (the relay is out of descriptors): these pidfds are gone.
- engine -> relay ``P``: ping; relay -> engine ``O``: pong. A relay that does not answer in
  time (SIGSTOPped, say) is declared stuck and killed (issue 11, race 7).

The relay exits when the engine closes its end, or when the process that started it dies.
"""

from __future__ import annotations

import array
import os
import resource
import select
import signal
import socket
import sys
from typing import Final

#: SCM_RIGHTS carries at most 253 descriptors a message (SCM_MAX_FD).
BATCH: Final = 250

HELLO: Final = b"H"
LEND: Final = b"L"
EXITED: Final = b"X"
REFUSED: Final = b"R"
PING: Final = b"P"
PONG: Final = b"O"

_TOKEN: Final = "Q"
_TOKEN_SIZE: Final = array.array(_TOKEN).itemsize
MESSAGE_SIZE: Final = 1 + BATCH * _TOKEN_SIZE
ANCILLARY_SIZE: Final = socket.CMSG_SPACE(BATCH * array.array("i").itemsize)
#: Received descriptors are close-on-exec at once: no exec anywhere may inherit one.
RECV_FLAGS: Final = getattr(socket, "MSG_CMSG_CLOEXEC", 0) | socket.MSG_DONTWAIT


def pack(kind: bytes, tokens: list[int]) -> bytes:
    """One message: its kind and tokens."""
    return kind + array.array(_TOKEN, tokens).tobytes()


def unpack(message: bytes) -> tuple[bytes, list[int]]:
    """The kind and tokens of a message."""
    tokens = array.array(_TOKEN)
    tokens.frombytes(message[1:])
    return message[:1], tokens.tolist()


# Not socket.send_fds() and socket.recv_fds(): they drop their ``flags`` (CPython 3.11 to
# 3.13), and MSG_DONTWAIT and MSG_CMSG_CLOEXEC matter here.


def send_fds(sock: socket.socket, message: bytes, fds: list[int], flags: int = 0) -> None:
    """Send ``message`` with ``fds`` attached (SCM_RIGHTS)."""
    sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], flags)


def recv_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and its descriptors, without blocking (BlockingIOError when none)."""
    message, ancillary, _, _ = sock.recvmsg(MESSAGE_SIZE, ANCILLARY_SIZE, RECV_FLAGS)
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return message, fds.tolist()


def batches(items: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """``items`` cut into messages of at most BATCH descriptors."""
    return [items[start : start + BATCH] for start in range(0, len(items), BATCH)]


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
        for batch in batches(exited):
            tokens = [token for token, _ in batch]
            send_fds(ctl, pack(EXITED, tokens), [fd for _, fd in batch])
            for _, fd in batch:
                os.close(fd)


def _take(ctl: socket.socket, epoll: select.epoll, held: dict[int, int]) -> bool:
    """Take every message the engine sent; False once it has closed its end."""
    while True:
        try:
            message, fds = recv_fds(ctl)
        except BlockingIOError:
            return True
        if not message:
            return False
        kind, tokens = unpack(message)
        if kind == PING:
            ctl.send(PONG)
            continue
        for token, fd in zip(tokens, fds, strict=False):
            held[fd] = token
            epoll.register(fd, select.EPOLLIN)
        refused = tokens[len(fds) :]
        if refused:
            # Out of descriptors here: the kernel closed those, the engine must watch them.
            ctl.send(pack(REFUSED, refused))


def _raise_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
