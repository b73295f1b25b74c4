"""ExitStatus, the immutable record of one reaped child, and the decoding of raw wait statuses."""

from __future__ import annotations

import numbers
import os
import signal as _signal
import struct
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import resource

# The "core dumped" bit of a wait status word, as WCOREDUMP tests it on Linux and the BSDs.
_CORE_FLAG: Final = 0x80

#: Bytes in a unit of ru_maxrss: Linux counts kibibytes, macOS bytes.
_MAX_RSS_UNIT: Final = 1 if sys.platform == "darwin" else 1024

#: struct rusage as the kernel fills it on 64-bit Linux: ru_utime and ru_stime as (seconds,
#: microseconds), then 14 longs. Reaps give the usage in these bytes.
RUSAGE_LAYOUT: Final = struct.Struct("=18q")

#: How a record keeps those bytes: reordered so that the fields that Linux leaves 0 (ixrss,
#: idrss, isrss, nswap, msgsnd, msgrcv, nsignals) and the often-0 block counts come last,
#: then stripped of their trailing zero bytes. About 90 bytes a record where the bytes would
#: take 177, and a ``resource.struct_rusage`` with its numbers about 340: a registry keeps
#: 10,000 records. The (start, end) byte ranges of RUSAGE_LAYOUT, in the kept order:
_KEPT_ORDER: Final = ((0, 40), (64, 80), (128, 144), (88, 104), (40, 64), (80, 88), (104, 128))


def _compact(usage: bytes) -> bytes:
    # _KEPT_ORDER written out: once per reap, on the reaping thread.
    u = usage
    kept = b"".join(
        (u[0:40], u[64:80], u[128:144], u[88:104], u[40:64], u[80:88], u[104:128])
    ).rstrip(b"\0")
    # Never RUSAGE_LAYOUT.size long, the length of the bytes as a reap gave them (see
    # compact_usage): one byte more in the one case where no zero could be stripped.
    return kept if len(kept) < RUSAGE_LAYOUT.size else kept + b"\1"


def _expand(kept: bytes) -> bytes:
    if len(kept) == RUSAGE_LAYOUT.size:
        return kept  # as the reap gave it: not compacted yet
    full = kept[: RUSAGE_LAYOUT.size].ljust(RUSAGE_LAYOUT.size, b"\0")
    at, pieces = 0, {}
    for start, end in _KEPT_ORDER:
        pieces[start] = full[at : at + end - start]
        at += end - start
    return b"".join(pieces[start] for start in sorted(pieces))


# eq=False: equality and hashing are the returncode's, written out below.
@dataclass(frozen=True, slots=True, repr=False, eq=False)
class ExitStatus:
    """How one child ended: an immutable record, decoded from the kernel's wait status.

    Build one with :func:`decode_wait_status` (from a raw ``waitpid`` status word) or
    :meth:`from_returncode`; every other attribute is derived from ``wait_status``.

    A record compares, hashes and converts like its :attr:`returncode`, the number that
    ``Popen.wait()`` returns: ``status == 3``, ``status != 0``, ``int(status)``,
    ``{3: "usage"}[status]``, and two records are equal when their return codes are (whatever
    their pids). ``bool(status)`` is True when the return code is not 0, as for the int; test
    :attr:`success` instead, and ``status is None`` for "no status yet". Ordering (``<``) is
    not supported.

    Attributes:
        pid: The pid that the child had.
        wait_status: The raw status word, as ``os.waitpid`` returns it.
    """

    pid: int
    wait_status: int
    #: The usage as :func:`_compact` keeps it (or, until :func:`compact_usage`, as a reap
    #: gave it), or None; read through :attr:`rusage`.
    _usage: bytes | None = field(default=None, kw_only=True)

    @classmethod
    def from_returncode(cls, pid: int, returncode: int) -> ExitStatus:
        """Build the record from a ``subprocess``-style return code (-N for signal N).

        Used when another waiter (a ``Popen.wait()``) reaped the child first and only its
        return code is left; such a record never says ``core_dumped``.

        Raises:
            ValueError: ``returncode`` is neither an exit code (0 to 255) nor a signal (-1 to -126).
        """
        if not -127 <= returncode <= 255 or returncode == -127:
            raise ValueError(
                f"returncode must be an exit code 0..255 or a signal -1..-126, got {returncode}"
            )
        raw = -returncode if returncode < 0 else returncode << 8
        return cls(pid, raw)

    @property
    def exit_code(self) -> int | None:
        """The code the child passed to ``exit()``, or None when a signal killed it."""
        if os.WIFEXITED(self.wait_status):
            return os.WEXITSTATUS(self.wait_status)
        return None

    @property
    def signal_number(self) -> int | None:
        """The number of the signal that killed the child, or None when it exited by itself."""
        if os.WIFSIGNALED(self.wait_status):
            return os.WTERMSIG(self.wait_status)
        return None

    @property
    def signal(self) -> _signal.Signals | None:
        """The signal that killed the child, or None when it exited by itself.

        A real-time signal that the :class:`signal.Signals` enum does not name (SIGRTMIN + 3,
        say) gives None here too; :attr:`signal_number` always has the number.
        """
        number = self.signal_number
        if number is None:
            return None
        try:
            return _signal.Signals(number)
        except ValueError:
            return None

    @property
    def core_dumped(self) -> bool:
        """Whether the kernel wrote a core dump when the signal killed the child."""
        return os.WIFSIGNALED(self.wait_status) and bool(self.wait_status & _CORE_FLAG)

    @property
    def rusage(self) -> resource.struct_rusage | None:
        """The resources the child used (and its descendants that it waited for).

        As ``os.wait4`` gives them; None where the Reaper did not reap the child itself
        (another waiter did, such as the child's own ``Popen.wait()``, or the status was
        recovered after another waiter took it). Not part of equality.
        """
        usage = self._usage
        return None if usage is None else unpack_rusage(_expand(usage))

    def _usage_fields(self) -> tuple[int, ...] | None:
        """The usage's 18 numbers in :data:`RUSAGE_LAYOUT`'s order, or None."""
        usage = self._usage
        return None if usage is None else RUSAGE_LAYOUT.unpack(_expand(usage))

    @property
    def user_time(self) -> float | None:
        """Seconds of CPU time the child spent in user mode (None: see :attr:`rusage`)."""
        fields = self._usage_fields()
        return None if fields is None else float(fields[0] + fields[1] * 1e-6)

    @property
    def system_time(self) -> float | None:
        """Seconds of CPU time the kernel spent for the child (None: see :attr:`rusage`)."""
        fields = self._usage_fields()
        return None if fields is None else float(fields[2] + fields[3] * 1e-6)

    @property
    def max_rss(self) -> int | None:
        """The child's peak resident memory, in bytes (None: see :attr:`rusage`).

        The kernel's figure (``ru_maxrss``, which Linux gives in KiB) turned into bytes. A
        child that Python forked before it ran its program counts the memory it had then.
        """
        fields = self._usage_fields()
        return None if fields is None else int(fields[4]) * _MAX_RSS_UNIT

    @property
    def returncode(self) -> int:
        """The exit code, or -N when signal N killed the child (``subprocess``'s convention)."""
        number = self.signal_number
        if number is not None:
            return -number
        return os.WEXITSTATUS(self.wait_status)

    @property
    def shell_code(self) -> int:
        """The exit code, or 128 + N for signal N (``$?`` in a shell, tini's exit code)."""
        number = self.signal_number
        if number is not None:
            return 128 + number
        return os.WEXITSTATUS(self.wait_status)

    @property
    def success(self) -> bool:
        """True when the child exited with code 0."""
        return self.returncode == 0

    @property
    def outcome(self) -> str:
        """How the child ended, in words, as ``"exited with code 3"`` or ``"killed by SIGKILL"``."""
        number = self.signal_number
        if number is None:
            return f"exited with code {self.returncode}"
        sig = self.signal
        name = sig.name if sig is not None else f"signal {number}"
        dumped = " (core dumped)" if self.core_dumped else ""
        return f"killed by {name}{dumped}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ExitStatus):
            return self.returncode == other.returncode
        if isinstance(other, numbers.Number):
            # The int's own comparison, so that 3.0 and Fraction(3) are equal to it as well
            # (typeshed's Number declares no comparison at all).
            return self.returncode == other  # type: ignore[comparison-overlap]
        return NotImplemented

    def __hash__(self) -> int:
        # Equal to the hash of every number that compares equal (Python's numeric hashing).
        return hash(self.returncode)

    def __int__(self) -> int:
        return self.returncode

    def __index__(self) -> int:
        return self.returncode

    def __bool__(self) -> bool:
        # Both habits are common and they disagree: `if popen.wait():` means "it failed",
        # `if reaper.status(pid):` means "it has ended". Either answer would silently break
        # the other, so neither is given.
        raise TypeError(
            f"{self!r} has no truth value: test `status.success` (exited 0), "
            "`status != 0`, or `status is not None` (it has ended)"
        )

    def describe(self) -> str:
        """Say in words how the child ended: ``"pid 1234 killed by SIGKILL"``."""
        return f"pid {self.pid} {self.outcome}"

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:
        return f"<ExitStatus {self.describe()}>"


def is_same_exit(first: ExitStatus, second: ExitStatus) -> bool:
    """Whether two records describe the same exit of the same pid, core-dump bit included.

    ``==`` compares return codes only (as for ``Popen.wait()``'s number); this is the
    record-level identity that bookkeeping needs.
    """
    return first.pid == second.pid and first.wait_status == second.wait_status


def decode_wait_status(
    pid: int, wait_status: int, rusage: resource.struct_rusage | None = None
) -> ExitStatus:
    """Decode a raw status word from ``os.waitpid`` into an :class:`ExitStatus`.

    Args:
        pid: The child the status belongs to.
        wait_status: The status word; it must describe an exit or a fatal signal.
        rusage: The child's resource usage, as ``os.wait4`` returns it, if known.

    Returns:
        The decoded record.

    Raises:
        ValueError: The word describes a stopped or continued child, or is out of range.
    """
    status = decode_reaped(pid, wait_status, None if rusage is None else pack_rusage(rusage))
    compact_usage(status)
    return status


def decode_reaped(pid: int, wait_status: int, usage: bytes | None) -> ExitStatus:
    """:func:`decode_wait_status` with the usage packed (:data:`RUSAGE_LAYOUT`), as reaps give it.

    The record keeps those bytes as they are until :func:`compact_usage`.

    Raises:
        ValueError: As :func:`decode_wait_status`.
    """
    if not 0 <= wait_status <= 0xFFFF:
        raise ValueError(f"a wait status is a 16-bit word, got {wait_status}")
    kept = usage
    if os.WIFEXITED(wait_status) and not wait_status & 0xFF:
        return ExitStatus(pid, wait_status, _usage=kept)
    if os.WIFSIGNALED(wait_status) and not wait_status & 0xFF00:
        return ExitStatus(pid, wait_status, _usage=kept)
    raise ValueError(
        f"wait status {wait_status:#x} is not an exit or a fatal signal (a stopped or continued "
        "child?); only statuses from a WEXITED wait can be decoded"
    )


def compact_usage(status: ExitStatus) -> None:
    """Keep the usage of ``status``, a record that :func:`decode_reaped` made, in less memory.

    A reap's record holds the usage as the kernel wrote it, so that the reaping thread does
    not compact it on its way from the exit to ``on_exit`` (cache-cold, that was 7 us of
    about 150); the engine calls this once the callbacks have run. The record's value does
    not change (its usage reads the same from either form, and is not part of equality),
    only its size: a registry holds 10,000 records.
    """
    usage = status._usage
    if usage is not None and len(usage) == RUSAGE_LAYOUT.size:
        # A frozen record: its fields are set the way its own __init__ sets them.
        object.__setattr__(status, "_usage", _compact(usage))


def pack_rusage(usage: resource.struct_rusage) -> bytes:
    """``usage`` in :data:`RUSAGE_LAYOUT` (times to the microsecond, as the kernel keeps them)."""
    times = []
    for seconds in (usage.ru_utime, usage.ru_stime):
        whole = int(seconds)
        times += [whole, round((seconds - whole) * 1e6)]
    return RUSAGE_LAYOUT.pack(*times, *(int(value) for value in tuple(usage)[2:]))


def unpack_rusage(usage: bytes) -> resource.struct_rusage:
    """The ``resource.struct_rusage`` packed in ``usage`` (:data:`RUSAGE_LAYOUT`).

    Times as CPython computes them from a struct timeval (seconds + microseconds * 1e-6).
    """
    import resource  # noqa: PLC0415 - the init imports this module; only usage readers need it

    fields = RUSAGE_LAYOUT.unpack(usage)
    times = (fields[0] + fields[1] * 1e-6, fields[2] + fields[3] * 1e-6)
    return resource.struct_rusage(times + fields[4:])


def wait_status_from_waitid(si_code: int, si_status: int) -> int:
    """Rebuild the ``waitpid`` status word from the fields of an ``os.waitid`` result.

    Raises:
        ValueError: ``si_code`` is not an exit (CLD_EXITED, CLD_KILLED or CLD_DUMPED).
    """
    if si_code == os.CLD_EXITED:
        return (si_status & 0xFF) << 8
    if si_code == os.CLD_KILLED:
        return si_status & 0x7F
    if si_code == os.CLD_DUMPED:
        return (si_status & 0x7F) | _CORE_FLAG
    raise ValueError(f"waitid si_code {si_code} is not an exit")
