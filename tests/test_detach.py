"""spawn_detached(): a daemon that is an orphan in its own session, with nothing of ours."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import psutil
import pytest

from zombiereaper import Reaper, ReaperError, _detach, _linux

from .helpers import STANDARD_SIGNALS, eventually, proc_status, py, sh, zombie_children

pytestmark = pytest.mark.skipif(
    not _linux.can_be_subreaper(), reason="needs a subreaper to take the daemons back"
)

# Runs in a child of the test process, which is a subreaper for the run: the daemon started
# here must end up as the test process's child, not this script's.
CALLER = r"""
import json, os, signal, sys
from zombiereaper import Reaper

signal.signal(signal.SIGHUP, signal.SIG_IGN)                 # nohup-style: not for the daemon
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})    # a blocked mask: neither
stray = os.open("/dev/null", os.O_RDONLY)
os.set_inheritable(stray, True)                               # an inheritable fd: neither
daemon = Reaper().spawn_detached(["sleep", "60"])
print(json.dumps({"daemon": daemon, "caller": os.getpid()}), flush=True)
"""


def _kill_and_reap(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # ours: the test process is the subreaper it was reparented to


def test_daemon_is_an_orphan_in_a_session_of_its_own() -> None:
    """The daemon is reparented away from its caller, leads a new session, and starts clean."""
    out = subprocess.run(
        [sys.executable, "-c", CALLER], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    info = json.loads(out)
    daemon = info["daemon"]
    try:
        proc = psutil.Process(daemon)
        assert proc.ppid() == os.getpid() != info["caller"]  # the nearest subreaper adopted it
        assert os.getsid(daemon) == daemon
        assert os.getpgid(daemon) == daemon
        assert proc.cwd() == "/"
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{daemon}/fd"))
        assert fds == [0, 1, 2]
        assert {os.readlink(f"/proc/{daemon}/fd/{fd}") for fd in fds} == {"/dev/null"}
        fields = proc_status(daemon)
        assert int(fields["SigBlk"], 16) == 0
        assert int(fields["SigIgn"], 16) & STANDARD_SIGNALS == 0
        assert proc.cmdline() == ["sleep", "60"]
    finally:
        _kill_and_reap(daemon)


def test_no_intermediate_zombie_and_nothing_left_on_failure(tmp_path: Path) -> None:
    """The intermediate is reaped at once; a program that cannot run raises, leaving nothing."""
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(0o644)
    reaper = Reaper()
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(FileNotFoundError) as info:
        reaper.spawn_detached(["/nonexistent/zombiereaper-daemon"])
    assert "zombiereaper-daemon" in str(info.value)
    with pytest.raises(FileNotFoundError):
        reaper.spawn_detached(["no-such-program-on-path-zr"])
    with pytest.raises(PermissionError):
        reaper.spawn_detached([str(not_executable)])
    assert {p.pid for p in psutil.Process().children()} == before
    assert not zombie_children()


def test_output_redirected_to_a_file_arrives(tmp_path: Path) -> None:
    """stdout/stderr given as files reach the daemon; cwd and env are applied."""
    out_path = tmp_path / "out.txt"
    (tmp_path / "work").mkdir()
    with Reaper(scope="all", subreaper=True) as reaper, out_path.open("w") as out:
        pid = reaper.spawn_detached(
            sh('pwd; echo "$ZR_GREETING"; echo oops >&2'),
            cwd=tmp_path / "work",
            env={"ZR_GREETING": "hello", "PATH": os.environ["PATH"]},
            stdout=out,
            stderr=out,
        )
        assert reaper.wait(pid, timeout=10).success
    assert out_path.read_text().split() == [str(tmp_path / "work"), "hello", "oops"]


def test_pass_fds_are_inherited_and_nothing_else() -> None:
    """Only the descriptors in pass_fds reach the daemon, whatever else is inheritable here."""
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    os.set_inheritable(other_write, True)
    report = f"import os; os.write({write_end}, ' '.join(os.listdir('/proc/self/fd')).encode())"
    try:
        with Reaper(scope="all", subreaper=True) as reaper:
            pid = reaper.spawn_detached(py(report), pass_fds=(write_end,))
            assert reaper.wait(pid, timeout=10).success
        os.close(write_end)
        seen = {int(fd) for fd in os.read(read_end, 1000).split()}
    finally:
        for fd in (read_end, other_read, other_write):
            os.close(fd)
    # Python's own listing of /proc/self/fd holds one more descriptor while it reads.
    assert {0, 1, 2, write_end} <= seen
    assert other_write not in seen
    assert len(seen - {0, 1, 2, write_end}) <= 1


def test_a_subreaper_takes_the_daemon_back_and_waits_for_its_real_code() -> None:
    """Under Reaper(scope='all', subreaper=True), wait(daemon) returns the daemon's real code."""
    with Reaper(scope="all", subreaper=True) as reaper:
        pid = reaper.spawn_detached(sh("exit 23"))
        assert reaper.wait(pid, timeout=10).returncode == 23
        eventually(lambda: reaper.status(pid) is not None, what="the daemon to be recorded")
        eventually(lambda: not os.path.exists(f"/proc/{pid}"), what="the daemon to be reaped")
        assert reaper.registry[pid].returncode == 23


def test_bad_arguments_are_refused() -> None:
    """An empty command or a bad descriptor raises ValueError before anything starts."""
    with pytest.raises(ValueError, match="empty"):
        Reaper().spawn_detached([])
    with pytest.raises(ValueError, match="pass_fds"):
        Reaper().spawn_detached(["true"], pass_fds=(-1,))


# One exec string is at most 128 KiB (MAX_ARG_STRLEN): big commands and environments are
# built of pieces below that, so that Popen could start them too.
_PIECE: Final = 100 * 1024


def _popen_error(args: list[str], **kwargs: Any) -> OSError:
    """The OSError that subprocess.Popen raises for the same command, to compare with."""
    try:
        proc = subprocess.Popen(args, **kwargs)
    except OSError as err:
        return err
    proc.kill()
    proc.wait()
    raise AssertionError(f"Popen started {args[0]!r}: no error to compare with")


def _assert_same_error(ours: OSError, popen: OSError) -> None:
    assert type(ours) is type(popen)
    assert (ours.errno, ours.strerror, ours.filename) == (
        popen.errno,
        popen.strerror,
        popen.filename,
    )
    assert str(ours) == str(popen)


def test_arguments_past_the_argv_limit_of_one_string_reach_the_daemon(tmp_path: Path) -> None:
    """A command whose arguments total more than 256 KiB runs, each argument intact."""
    pieces = [letter * _PIECE for letter in "abc"]
    with Reaper(scope="all", subreaper=True) as reaper:
        pid = reaper.spawn_detached(
            ["/bin/sh", "-c", 'printf "%s\\n" "$@" > args.txt', "sh", *pieces], cwd=tmp_path
        )
        assert reaper.wait(pid, timeout=10).success
    assert (tmp_path / "args.txt").read_text().splitlines() == pieces


def test_an_environment_past_the_argv_limit_of_one_string_arrives_intact(tmp_path: Path) -> None:
    """An environment of more than 256 KiB reaches the daemon exactly, and nothing else does."""
    env = {f"ZR_BIG{index}": letter * _PIECE for index, letter in enumerate("wxyz")}
    out_path = tmp_path / "env.txt"
    with Reaper(scope="all", subreaper=True) as reaper, out_path.open("wb") as out:
        pid = reaper.spawn_detached(["/usr/bin/env", "-0"], env=env, stdout=out)
        assert reaper.wait(pid, timeout=10).success
    entries = out_path.read_bytes().split(b"\0")
    assert entries.pop() == b""
    assert dict(entry.decode().split("=", 1) for entry in entries) == env


def test_bytes_arguments_and_environment_pass_through_unchanged(tmp_path: Path) -> None:
    """Bytes arguments, env keys and env values reach the daemon byte for byte, as with Popen."""
    args = [b"/bin/sh", b"-c", b'printf "%s|%s" "$1" "$ZR_BYTES" > out.bin', b"sh", b"arg-\xff\xfe"]
    env: dict[Any, Any] = {b"ZR_BYTES": b"value-\xfe\xff", "PATH": os.environ["PATH"]}
    with Reaper(scope="all", subreaper=True) as reaper:
        pid = reaper.spawn_detached(args, env=env, cwd=tmp_path)
        assert reaper.wait(pid, timeout=10).success
    assert (tmp_path / "out.bin").read_bytes() == b"arg-\xff\xfe|value-\xfe\xff"


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        pytest.param(["sleep", "60"], {"ZR_NUMBER": 1}, TypeError, id="env-value-int"),
        pytest.param(["sleep", "60"], {1: "one"}, TypeError, id="env-key-int"),
        pytest.param(["sleep", "60"], {"ZR=X": "1"}, ValueError, id="env-key-with-equals"),
        pytest.param(["sleep", "60"], {"ZR": "nul\0byte"}, ValueError, id="env-null-byte"),
        pytest.param(["sleep", "60\0"], None, ValueError, id="arg-null-byte"),
    ],
)
def test_a_command_or_environment_popen_refuses_is_refused_before_anything_starts(
    args: list[str], env: dict[Any, Any] | None, error: type[Exception]
) -> None:
    """What Popen refuses with TypeError or ValueError is refused the same way, nothing started."""
    with pytest.raises(error):
        subprocess.Popen(args, env=env)
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(error, match=r"env|argument|null"):
        Reaper().spawn_detached(args, env=env)
    # A daemon that did start would be our child now: we are the subreaper it went to.
    assert {p.pid for p in psutil.Process().children()} == before


def test_each_start_error_names_what_failed_as_popen_does(tmp_path: Path) -> None:
    """A missing program or non-executable file names the program, a missing cwd names the cwd."""
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    not_executable.chmod(0o644)
    missing_cwd = str(tmp_path / "no-such-directory")
    cases: list[tuple[list[str], str]] = [
        (["/nonexistent/zombiereaper-daemon"], "/"),
        (["no-such-program-on-path-zr"], "/"),
        ([str(not_executable)], "/"),
        (["/bin/true"], missing_cwd),
        (["/bin/true"], str(not_executable)),
    ]
    for args, cwd in cases:
        expected = _popen_error(args, cwd=cwd)
        with pytest.raises(type(expected), match=re.escape(str(expected))) as info:
            Reaper().spawn_detached(args, cwd=cwd)
        _assert_same_error(info.value, expected)
    assert not zombie_children()


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["x" * (3 << 20)], id="one-3-MiB-argument"),
        # Past 6 MiB, the most that exec takes whatever the stack limit (3/4 of 8 MiB).
        pytest.param(["x" * _PIECE] * 72, id="7-MiB-in-all"),
    ],
)
def test_a_command_too_big_to_exec_fails_as_popen_does(extra: list[str]) -> None:
    """A command past the kernel's exec limits raises Popen's E2BIG, naming the program."""
    args = ["sh", "-c", ":", "sh", *extra]
    with pytest.raises(OSError, match="Argument list too long") as info:
        Reaper().spawn_detached(args)
    assert info.value.errno == errno.E2BIG
    assert info.value.filename == "sh"
    _assert_same_error(info.value, _popen_error(args))
    assert not zombie_children()


def test_a_bad_pass_fds_entry_is_refused_naming_it() -> None:
    """A closed, negative or non-integer pass_fds entry is refused in the caller, by number."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)  # a number that nothing of ours reopens before the check
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(OSError, match=rf"pass_fds\b.*\b{write_end}\b") as info:
        Reaper().spawn_detached(["sleep", "60"], pass_fds=(0, write_end))
    assert info.value.errno == errno.EBADF
    with pytest.raises(ValueError, match=r"pass_fds\b.*-3\b"):
        Reaper().spawn_detached(["sleep", "60"], pass_fds=(-3,))
    with pytest.raises(ValueError, match=r"pass_fds\b.*'3'"):
        Reaper().spawn_detached(["sleep", "60"], pass_fds=("3",))  # type: ignore[arg-type]
    assert {p.pid for p in psutil.Process().children()} == before


@pytest.mark.parametrize("interpreter", ["/bin/true", "/nonexistent/zr-python"])
def test_a_helper_that_cannot_run_raises_reaper_error(
    monkeypatch: pytest.MonkeyPatch, interpreter: str
) -> None:
    """A helper that never reads the command (it exits, or cannot start) raises ReaperError."""
    # Megabytes of environment, more than a socket buffer holds: the caller is still sending
    # when the helper is gone, and must get an error instead of blocking or dying of SIGPIPE.
    env = {f"ZR_BIG{index}": "x" * _PIECE for index in range(30)}
    monkeypatch.setattr(sys, "executable", interpreter)
    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(ReaperError, match="helper") as info:
        Reaper().spawn_detached(["sleep", "60"], env=env)
    assert interpreter in str(info.value)
    assert {p.pid for p in psutil.Process().children()} == before


def test_a_caller_that_restored_sigpipe_survives_a_helper_that_dies_early() -> None:
    """A helper gone before it read the command is a ReaperError even where SIGPIPE kills."""
    script = f"""
import signal, sys
from zombiereaper import Reaper, ReaperError
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as a command-line tool piping to head does
sys.executable = "/bin/true"  # a helper that exits without reading anything
try:
    env = {{"ZR_BIG%d" % i: "x" * {_PIECE} for i in range(30)}}
    Reaper().spawn_detached(["sleep", "60"], env=env)
except ReaperError as err:
    print(type(err).__name__, type(err.__cause__).__name__)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout.split()) == (0, ["ReaperError", "BrokenPipeError"])


def test_an_on_helper_that_raises_leaves_no_helper_and_starts_nothing() -> None:
    """When on_helper raises, the helper learns the command ended, starts nothing and is reaped."""
    told: list[int] = []

    def refuse(pid: int) -> None:
        told.append(pid)
        raise RuntimeError("refused")

    before = {p.pid for p in psutil.Process().children()}
    with pytest.raises(RuntimeError, match="refused"):
        _detach.spawn_detached(["sleep", "60"], on_helper=refuse)
    assert len(told) == 1
    # Neither the helper (unreaped) nor a daemon (ours as the subreaper) is our child now.
    assert {p.pid for p in psutil.Process().children()} == before


@pytest.mark.parametrize("name", ["stdin", "stdout", "stderr"])
def test_a_stream_that_is_no_open_file_is_refused_saying_what_to_pass(
    tmp_path: Path, name: str
) -> None:
    """A path, a pipe, a closed or descriptor-less file as a stream: a clear error, no daemon."""
    import io

    closed = (tmp_path / "closed.txt").open("w")
    closed.close()
    refused: list[tuple[object, type[Exception], str]] = [
        ("log.txt", TypeError, rf"{name} takes an open file object .*not a path.*open\('log.txt'"),
        (tmp_path / "log.txt", TypeError, r"not a path"),
        (b"log.txt", TypeError, r"not a path"),
        (io.StringIO(), TypeError, r"StringIO has none"),
        (object(), TypeError, rf"{name} takes an open file object \(one with a fileno\(\)\)"),
        (subprocess.PIPE, ValueError, rf"{name}=subprocess.PIPE cannot be given to a daemon"),
        (-5, ValueError, rf"{name} must be a descriptor >= 0"),
        (closed, ValueError, rf"{name} cannot be given to the daemon: I/O operation on closed"),
    ]
    before = {p.pid for p in psutil.Process().children()}
    for stream, error, message in refused:
        with pytest.raises(error, match=message):
            Reaper().spawn_detached(["sleep", "60"], **{name: stream})  # type: ignore[arg-type]
    assert {p.pid for p in psutil.Process().children()} == before
    assert not (tmp_path / "log.txt").exists()


def test_stderr_may_go_where_stdout_goes(tmp_path: Path) -> None:
    """stderr=subprocess.STDOUT, which Popen takes, is not refused with the streams above."""
    out_path = tmp_path / "out.txt"
    with Reaper(scope="all", subreaper=True) as reaper, out_path.open("w") as out:
        pid = reaper.spawn_detached(
            sh("echo out; echo err >&2"), stdout=out, stderr=subprocess.STDOUT
        )
        assert reaper.wait(pid, timeout=10).success
    assert out_path.read_text().split() == ["out", "err"]
    with pytest.raises(ValueError, match=r"stdout must be a descriptor >= 0"):
        Reaper().spawn_detached(["sleep", "60"], stdout=subprocess.STDOUT)


def test_a_relative_program_is_found_from_the_callers_directory_unless_cwd_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default ./prog is found from here, as by Popen; a cwd given is where it is looked for."""
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "where.sh"
    script.write_text('#!/bin/sh\nprintf "%s %s" "$0" "$(pwd)" > "$1"\n')
    script.chmod(0o755)
    report = tmp_path / "report.txt"
    monkeypatch.chdir(tmp_path)
    with Reaper(scope="all", subreaper=True) as reaper:
        pid = reaper.spawn_detached(["./bin/where.sh", str(report)])
        assert reaper.wait(pid, timeout=10).success
        program, workdir = report.read_text().split()
        assert os.path.samefile(program, script)
        assert workdir == "/"  # the daemon itself still runs in "/"
        # Given a cwd, the program is looked up from it, as Popen looks it up.
        pid = reaper.spawn_detached(["./where.sh", str(report)], cwd=tmp_path / "bin")
        assert reaper.wait(pid, timeout=10).success
        assert report.read_text().split()[1] == str(tmp_path / "bin")
    # Missing, it is the same error as Popen's without a cwd; with cwd="/" given, Popen's too.
    for args, cwd in [(["./bin/missing.sh"], None), (["./bin/where.sh", str(report)], "/")]:
        expected = _popen_error(args, cwd=cwd)
        with pytest.raises(FileNotFoundError) as info:
            if cwd is None:
                Reaper().spawn_detached(args)
            else:
                Reaper().spawn_detached(args, cwd=cwd)
        _assert_same_error(info.value, expected)
    assert not zombie_children()
