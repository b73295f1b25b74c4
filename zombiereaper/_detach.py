"""spawn_detached(): a double fork into an orphan, without forking this (threaded) process.

Our process runs the reaping thread, so forking it and running Python before exec is unsafe
(and Python 3.12+ warns: gh-100228). Instead a small, fresh, single-threaded Python helper is
started through subprocess (fork and exec in C); it reads the command from a socket, starts the
daemon with ``subprocess`` (new session, default signal dispositions, empty signal mask),
reports the daemon's pid, or the errno and file name of its failure, over a close-on-exec pipe,
and exits. We reap the helper at once, so no intermediate zombie is ever left (skypilot #8929),
and the daemon is reparented to init or to the nearest subreaper.
"""

from __future__ import annotations

import errno
import io
import marshal
import os
import socket
import subprocess
import sys
from collections.abc import Sized
from typing import IO, TYPE_CHECKING, Any, Final

from ._errors import ReaperError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from ._reaper import Command

# Runs in the helper with -I -S: nothing but the standard library, no site-packages needed.
# The command comes through a socket, not argv: argv would cap it at 128 KiB (one exec string)
# and make a command too big for the daemon's exec fail as the helper's, naming Python.
_HELPER: Final = r"""
import marshal, os, signal, subprocess, sys

def read_spec(fd):
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    os.close(fd)
    return marshal.loads(b"".join(chunks))

def report(fd, message):
    view = memoryview(message)
    while view:
        view = view[os.write(fd, view):]

def main():
    spec_fd, report_fd = int(sys.argv[1]), int(sys.argv[2])
    os.set_inheritable(report_fd, False)
    try:
        spec = read_spec(spec_fd)
    except (EOFError, ValueError, TypeError):
        # The caller gave up before it sent everything (on_helper raised, an interrupt):
        # start nothing, and say nothing on the daemon's stderr, which may be somebody's log.
        return 2
    # This fresh helper is single-threaded: it may fork. It clears what it inherited from the
    # thread that started it (a blocked mask, ignored signals such as nohup's SIGHUP) so that
    # the daemon starts with an empty mask and default dispositions; exec then resets nothing
    # that is still ignored, and posix_spawn would leave glibc's own signals ignored.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for number in signal.valid_signals():
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(number, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    try:
        daemon = subprocess.Popen(
            spec["argv"], executable=spec["executable"], cwd=spec["cwd"], env=spec["env"],
            start_new_session=True, close_fds=True, pass_fds=spec["pass_fds"],
        )
    except OSError as err:
        # Popen's filename says what failed: the cwd when chdir did, else the program.
        message = b"E %d" % (err.errno or 0)
        if err.filename is not None:
            message += b" " + os.fsencode(err.filename)
        report(report_fd, message)
        return 1
    except Exception as err:
        report(report_fd, b"X " + repr(err).encode("utf-8", "backslashreplace"))
        return 1
    report(report_fd, b"P %d" % daemon.pid)
    # Exit without waiting: the daemon becomes an orphan, adopted by init or a subreaper.
    os._exit(0)

sys.exit(main())
"""

_Stream = int | IO[Any] | None

_EMPTY_COMMAND: Final = (
    "a command needs a program to run: args is empty; pass the program and its arguments, "
    'such as ["sleep", "10"]'
)


class _RootByDefault(str):
    """The type of :data:`DEFAULT_CWD`: a "/" that is told apart from a "/" the caller gave."""

    __slots__ = ()


#: spawn_detached()'s default ``cwd``, "/". Only with it is a relative program (``./run.sh``)
#: looked up from the caller's working directory, as Popen without a ``cwd`` looks it up: the
#: caller wrote the path from where it is, not from "/". A ``cwd`` given, "/" included, is
#: where Popen looks, and so do we.
DEFAULT_CWD: Final = _RootByDefault("/")


def command_argv(args: Command) -> list[str]:
    """A command as Popen takes it, as a list of strings (a lone path is the program).

    Raises:
        ValueError: The command is empty.
    """
    return [os.fsdecode(arg) for arg in _command_as_given(args)]


def check_command(args: Command) -> None:
    """Refuse an empty command, which Popen would fail on with an IndexError.

    Only a sized command is checked: an iterator is left whole for Popen to read.

    Raises:
        ValueError: The command is empty.
    """
    if type(args) is list or type(args) is tuple:  # the usual case, without ABC checks
        if not args:
            raise ValueError(_EMPTY_COMMAND)
        return
    if not isinstance(args, str | bytes | os.PathLike) and isinstance(args, Sized) and not args:
        raise ValueError(_EMPTY_COMMAND)


def _command_as_given(args: Command) -> list[str | bytes]:
    """A command as Popen takes it, each argument a str or bytes as the caller gave it."""
    if isinstance(args, str | bytes | os.PathLike):
        return [os.fspath(args)]
    command = [os.fspath(arg) for arg in args]
    if not command:
        raise ValueError(_EMPTY_COMMAND)
    return command


def spawn_detached(
    args: Command,
    *,
    cwd: str | os.PathLike[str] = DEFAULT_CWD,
    env: Mapping[str, str] | None = None,
    stdin: _Stream = None,
    stdout: _Stream = None,
    stderr: _Stream = None,
    pass_fds: Iterable[int] = (),
    on_helper: Callable[[int], None] | None = None,
) -> int:
    """Start ``args`` as a daemon, an orphan in a session of its own; return its pid.

    See :meth:`zombiereaper.Reaper.spawn_detached` for the contract. ``on_helper(pid)`` is
    told the helper's pid before it is waited for, so that an all-scope reaper leaves it alone.
    What Popen would refuse before starting anything is refused here before the helper starts.
    """
    command = _command_as_given(args)
    workdir = os.fspath(cwd)
    fds = _check_pass_fds(pass_fds)
    for stream, name in ((stdin, "stdin"), (stdout, "stdout"), (stderr, "stderr")):
        _check_stream(stream, name)
    # Encoded here, not in the helper, whose file system encoding may differ from ours (-I
    # ignores PYTHONUTF8): exec then gets the very bytes that Popen would give it.
    argv = [_encode(arg, f"argument {index} of the command") for index, arg in enumerate(command)]
    workdir_bytes = _encode(workdir, "cwd")
    executable = _program_from_here(argv[0]) if cwd is DEFAULT_CWD else None
    payload = marshal.dumps(
        {
            "argv": argv,
            "executable": executable,
            "cwd": workdir_bytes,
            "env": None if env is None else _encode_env(env),
            "pass_fds": list(fds),
        }
    )
    # The helper's Popen names what failed in bytes; we name it as the caller spelled it.
    names: dict[bytes, str | bytes] = {workdir_bytes: workdir, argv[0]: command[0]}
    if executable is not None:
        names[executable] = command[0]
    report, helper_code, send_error = _run_helper(
        payload, fds, stdin=stdin, stdout=stdout, stderr=stderr, on_helper=on_helper
    )
    pid = _daemon_pid(report, names)
    if pid is None:
        raise _helper_failed(report, command[0], helper_code) from send_error
    return pid


def _run_helper(
    payload: bytes,
    fds: tuple[int, ...],
    *,
    stdin: _Stream,
    stdout: _Stream,
    stderr: _Stream,
    on_helper: Callable[[int], None] | None,
) -> tuple[bytes, int, OSError | None]:
    """Start the helper, send it ``payload``, read its report, and reap it.

    Returns:
        The helper's report, its exit status, and the error that cut the sending short (the
        helper was gone before it had read everything), if one did.

    Raises:
        ReaperError: The helper could not be started.
    """
    # A socket, not a pipe: send() with MSG_NOSIGNAL gets EPIPE when the helper dies early,
    # even in a program that restored SIGPIPE's default action, which would kill it here.
    spec_ours, spec_helpers = socket.socketpair()
    with spec_ours, spec_helpers:
        report_read, report_write = os.pipe()
        try:
            try:
                helper = _start_helper(
                    spec_helpers.fileno(),
                    report_write,
                    fds,
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                )
            finally:
                # Only the helper holds these ends now: its exit is EOF or EPIPE to us.
                spec_helpers.close()
                os.close(report_write)
            send_error: OSError | None = None
            try:
                if on_helper is not None:
                    on_helper(helper.pid)
                try:
                    # The helper reads it all before it does anything else: no deadlock,
                    # however much more this is than a socket buffer holds.
                    spec_ours.sendall(payload, socket.MSG_NOSIGNAL)
                except OSError as err:
                    send_error = err  # the helper is gone: its exit status says more
                spec_ours.close()  # the end of the spec, for the helper
                report = _read_all(report_read)
            finally:
                # Also when on_helper or the sending failed: the helper, told that the spec
                # ended early, starts nothing and exits, instead of waiting for more of it.
                spec_ours.close()
                # Reaped at once: the intermediate never lingers as a zombie.
                helper_code = helper.wait()
        finally:
            os.close(report_read)
    return report, helper_code, send_error


def _program_from_here(program: bytes) -> bytes | None:
    """The program's path from this process's working directory, if it is a relative path.

    A bare name (``sleep``) is looked up in PATH, and an absolute path is what it is: None
    for both. ``./run.sh`` or ``bin/run`` becomes absolute, so that the daemon, which runs in
    "/", execs the program that Popen would have found from here; its argv[0] stays as given.
    """
    if b"/" not in program or os.path.isabs(program):
        return None
    return os.path.join(os.getcwdb(), program)


def _check_stream(stream: object, name: str) -> None:
    """Refuse a ``stdin``/``stdout``/``stderr`` that the daemon could not be given.

    Raises:
        TypeError: It is a path, or no file object (it has no ``fileno()``), or a file
            object without a descriptor (``io.StringIO``).
        ValueError: It is ``subprocess.PIPE`` (nobody would read or write the other end), a
            negative number, or a closed file.
    """
    if stream is None or stream == subprocess.DEVNULL:
        return
    if name == "stderr" and stream == subprocess.STDOUT:
        return
    if isinstance(stream, int) and not isinstance(stream, bool):
        if stream == subprocess.PIPE:
            raise ValueError(
                f"{name}=subprocess.PIPE cannot be given to a daemon: nothing of ours would "
                "read or write the other end once spawn_detached() returns; pass an open "
                "file, a descriptor, or subprocess.DEVNULL"
            )
        if stream < 0:
            raise ValueError(
                f"{name} must be a descriptor >= 0, an open file object or subprocess.DEVNULL, "
                f"got {stream}"
            )
        return
    if isinstance(stream, str | bytes | os.PathLike):
        raise TypeError(
            f"{name} takes an open file object or a descriptor, as subprocess.Popen does, not "
            f"a path ({stream!r}): open it yourself, e.g. {name}=open({os.fspath(stream)!r}, "
            "'ab'), and close it once spawn_detached() has returned (the daemon keeps a copy)"
        )
    fileno = getattr(stream, "fileno", None)
    if not callable(fileno):
        raise TypeError(
            f"{name} takes an open file object (one with a fileno()) or a descriptor, as "
            f"subprocess.Popen does, got {type(stream).__name__}"
        )
    try:
        fileno()
    except io.UnsupportedOperation:
        raise TypeError(
            f"{name} must be a file object with a descriptor, as subprocess.Popen needs: "
            f"a {type(stream).__name__} has none; open a real file, or pass a descriptor"
        ) from None
    except ValueError as err:
        raise ValueError(f"{name} cannot be given to the daemon: {err}") from None


def _check_pass_fds(pass_fds: Iterable[int]) -> tuple[int, ...]:
    """The descriptors to pass, each checked to be open here.

    Checked here, not left to the helper: its failure would look like the program's, and a
    closed number may by then be one of the helper's own pipes (which the daemon would hold).

    Raises:
        ValueError: An entry is not an int >= 0.
        OSError: An entry is not an open descriptor (errno EBADF).
    """
    fds = tuple(pass_fds)
    for fd in fds:
        if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
            raise ValueError(f"pass_fds must hold descriptor numbers >= 0, got {fd!r}")
        try:
            os.get_inheritable(fd)
        except (OSError, OverflowError):
            raise OSError(
                errno.EBADF,
                f"{os.strerror(errno.EBADF)}: pass_fds holds {fd}, which is not an open "
                "descriptor of this process; pass only descriptors that are open",
            ) from None
    return fds


def _encode(value: str | bytes, what: str) -> bytes:
    """``value`` as exec takes it, as Popen encodes it.

    Raises:
        ValueError: It holds a null byte, which would end it early in exec.
    """
    encoded = os.fsencode(value)
    if b"\0" in encoded:
        raise ValueError(f"embedded null byte in {what}: {value!r}")
    return encoded


def _encode_env(env: Mapping[str, str]) -> dict[bytes, bytes]:
    """``env`` as exec takes it, refused as Popen refuses it.

    Raises:
        TypeError: A key or value is not str, bytes or a path-like object.
        ValueError: A key holds "=", or a key or value holds a null byte.
    """
    encoded: dict[bytes, bytes] = {}
    for key, value in env.items():
        try:
            name, text = os.fsencode(key), os.fsencode(value)
        except TypeError as err:
            raise TypeError(
                f"env keys and values must be str or bytes, as for subprocess.Popen: "
                f"env[{key!r}] = {value!r}; convert it, e.g. with str()"
            ) from err
        if b"=" in name:
            raise ValueError(f"illegal environment variable name {key!r}: it holds '='")
        encoded[_encode(name, "an env key")] = _encode(text, f"env[{key!r}]")
    return encoded


def _start_helper(
    spec_fd: int,
    report_fd: int,
    fds: tuple[int, ...],
    *,
    stdin: _Stream,
    stdout: _Stream,
    stderr: _Stream,
) -> subprocess.Popen[bytes]:
    """Start the helper, which reads the spec from ``spec_fd`` and reports to ``report_fd``.

    Raises:
        ReaperError: The helper could not be started.
    """
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HELPER, str(spec_fd), str(report_fd)],
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.DEVNULL if stdout is None else stdout,
            stderr=subprocess.DEVNULL if stderr is None else stderr,
            pass_fds=(*fds, spec_fd, report_fd),
            close_fds=True,
            cwd="/",
        )
    except OSError as err:
        # Not the program's error: raised as it is, it would look like one (naming Python).
        raise ReaperError(
            f"could not start the helper that starts detached processes ({err}); "
            f"spawn_detached() needs this Python, {sys.executable!r}, to be runnable, and "
            "stdin, stdout and stderr, when given, to be open"
        ) from err


def _read_all(fd: int) -> bytes:
    """Everything that comes from ``fd`` until its end of file."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _daemon_pid(report: bytes, names: Mapping[bytes, str | bytes]) -> int | None:
    """The daemon's pid from the helper's report, or None when the report holds none.

    Raises:
        OSError: The daemon could not start, as its Popen in the helper raised it: the
            subclass follows the errno (FileNotFoundError...), the filename is the part that
            failed (the program, or the cwd).
    """
    kind, _, rest = report.partition(b" ")
    if kind == b"P" and rest.isdigit():
        return int(rest)
    if kind == b"E":
        number, has_name, name = rest.partition(b" ")
        if number.isdigit():
            code = int(number)
            strerror = os.strerror(code) if code else ""
            if not has_name:
                raise OSError(code, strerror)
            raise OSError(code, strerror, names.get(name, os.fsdecode(name)))
    return None


def _helper_failed(report: bytes, program: str | bytes, helper_code: int) -> ReaperError:
    """The error for a helper that did not start the daemon, nor report an OSError."""
    if report.startswith(b"X "):
        # Something other than an OSError from the helper's Popen: in its own words.
        return ReaperError(
            f"the helper that starts detached processes could not start {program!r}: "
            f"{report[2:].decode('utf-8', 'replace')}"
        )
    return ReaperError(
        f"the helper that starts detached processes failed (exit status {helper_code}) "
        f"before starting {program!r}; is {sys.executable!r} runnable?"
    )
