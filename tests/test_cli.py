"""The zombiereaper command: run as an init (exit codes, signals, PID 1), zombies, demo."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from zombiereaper import _linux
from zombiereaper._cli import main

from .helpers import STANDARD_SIGNALS, eventually, read_line, status_fields

CLI = [sys.executable, "-m", "zombiereaper"]

#: A program that prints "ready", then the name of every signal in argv it receives, until
#: its standard input closes.
SIGNAL_PRINTER = textwrap.dedent(
    """
    import signal, sys
    def show(signum, frame):
        print(signal.Signals(signum).name, flush=True)
    for name in sys.argv[1:]:
        signal.signal(getattr(signal, name), show)
    print("ready", flush=True)
    sys.stdin.read()
    """
)

FORWARDED = [
    "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGCONT",
    "SIGALRM", "SIGPIPE", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGVTALRM", "SIGPROF", "SIGURG",
]  # fmt: skip


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def init() -> Iterator[list[subprocess.Popen[str]]]:
    """Started inits, each killed and reaped at the end if it still runs."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def start_init(init: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*CLI, "run", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    init.append(proc)
    return proc


# --- exit statuses ------------------------------------------------------------------------------


#: Exit codes run end to end: every boundary (0, 1, the shell's 126-129, 255) and a spread.
END_TO_END_CODES = [0, 1, 2, 3, 7, 42, 63, 64, 100, 126, 127, 128, 129, 130, 191, 200, 254, 255]


def test_exit_codes_come_back_end_to_end() -> None:
    """The init exits with its program's exit code (a spread of codes, every boundary)."""

    def exit_with(code: int) -> int:
        return run_cli("run", "-s", "--", "sh", "-c", f"exit {code}").returncode

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(exit_with, END_TO_END_CODES)) == END_TO_END_CODES


def test_every_exit_code_and_signal_maps_to_the_init_s_status() -> None:
    """Every code 0..255 comes back as itself, every signal N as 128+N (and --remap-exit)."""
    import io

    from zombiereaper import ExitStatus
    from zombiereaper._init import InitLog, InitOptions, describe_wait_status, exit_status

    options = InitOptions(argv=["program"])
    log = InitLog(0, io.StringIO())
    statuses = [ExitStatus.from_returncode(1, code) for code in range(256)]
    statuses += [ExitStatus.from_returncode(1, -number) for number in range(1, 65)]
    for status in statuses:
        assert exit_status(status.wait_status, options, log) == status.shell_code
        assert describe_wait_status(status.wait_status) == status.outcome  # the same words
    assert [exit_status(s.wait_status, options, log) for s in statuses] == [
        *range(256),
        *range(129, 193),
    ]
    remapped = InitOptions(argv=["program"], remap_exit=frozenset({143}))
    killed = ExitStatus.from_returncode(1, -signal.SIGTERM)
    assert exit_status(killed.wait_status, remapped, log) == 0


@pytest.mark.parametrize("name", ["SIGTERM", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1"])
def test_death_by_signal_exits_128_plus_n(name: str) -> None:
    """A program killed by signal N makes the init exit 128+N."""
    result = run_cli("run", "-s", "--", "sh", "-c", f"ulimit -c 0; kill -{name[3:]} $$")
    assert result.returncode == 128 + signal.Signals[name]


def test_missing_program_exits_127_naming_it() -> None:
    """A program that does not exist: exit 127 and a message with its name."""
    result = run_cli("run", "-s", "--", "no-such-program-zr")
    assert result.returncode == 127
    assert "no-such-program-zr: No such file or directory (not found)" in result.stderr


def test_unexecutable_program_exits_126_naming_it(tmp_path: object) -> None:
    """A program that cannot be executed: exit 126 and a message with its name."""
    script = os.path.join(str(tmp_path), "not-executable")
    with open(script, "w") as file:
        file.write("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o644)
    result = run_cli("run", "-s", "--", script)
    assert result.returncode == 126
    assert f"{script}: cannot execute" in result.stderr


BAD_USAGES = [
    ["run"],
    ["run", "--"],
    ["run", "-r", "TERM", "--", "true"],
    ["run", "-r", "NOPE:INT", "--", "true"],
    ["run", "-e", "300", "--", "true"],
    ["run", "--drain", "-1", "--", "true"],
    ["bogus"],
]


@pytest.mark.parametrize("args", BAD_USAGES)
def test_bad_usage_exits_non_zero_with_a_usage_message(args: list[str]) -> None:
    """Wrong arguments exit 2 and print the usage."""
    result = run_cli(*args)
    assert result.returncode == 2
    assert "usage: zombiereaper" in result.stderr


@pytest.mark.parametrize(
    ("args", "unknown"),
    [
        (["run", "--bogus", "--", "true"], "--bogus"),
        (["run", "-v", "--bogus"], "--bogus"),
        (["zombies", "--bogus"], "--bogus"),
        (["demo", "extra"], "extra"),
    ],
)
def test_an_unknown_argument_gets_its_subcommands_usage(
    args: list[str], unknown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An argument a subcommand does not know: that subcommand's usage and error, exit 2."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"usage: zombiereaper {args[0]} ")
    assert lines[-1] == f"zombiereaper {args[0]}: error: unrecognized arguments: {unknown}"


def test_remap_exit_turns_listed_codes_into_0() -> None:
    """-e CODE makes that exit code 0; other codes pass through."""
    assert run_cli("run", "-s", "-e", "3", "-e", "143", "--", "sh", "-c", "exit 3").returncode == 0
    assert run_cli("run", "-s", "-e", "3", "--", "sh", "-c", "exit 4").returncode == 4
    assert run_cli("run", "-s", "-e", "143", "--", "sh", "-c", "kill $$").returncode == 0


def test_nothing_is_said_when_nothing_is_orphaned() -> None:
    """Neither PID 1 nor a subreaper, a run that orphans nothing prints nothing on stderr."""
    result = run_cli("run", "--", "true")
    assert result.returncode == 0
    assert result.stderr == ""


def test_a_program_that_cannot_start_gets_its_error_alone(tmp_path: pathlib.Path) -> None:
    """Not found (127) or not executable (126): the error is the only line, with no warning."""
    missing = run_cli("run", "--", "no-such-program-zr")
    assert missing.returncode == 127
    assert missing.stderr.splitlines() == [
        "zombiereaper: no-such-program-zr: No such file or directory (not found)"
    ]
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\nexit 0\n")
    unexecutable = run_cli("run", "--", str(script))
    assert unexecutable.returncode == 126
    assert unexecutable.stderr.splitlines() == [
        f"zombiereaper: {script}: cannot execute: Permission denied"
    ]


#: Orphans a sleep at once (its parent, a shell, exits); after a line on stdin, starts another
#: sleep and exits, orphaning that one too. Prints the pid of each.
ORPHANING_PROGRAM = (
    'sh -c "sleep 30 </dev/null >/dev/null 2>&1 & echo \\$!"; read line; '
    "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"
)


def _reap_orphans(*pids: int) -> None:
    """Kill and reap orphans that came back to this process, a subreaper for the run."""
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.skipif(not _linux.can_be_subreaper(), reason="the orphans come to the test process")
def test_an_orphan_that_goes_elsewhere_is_reported_once(
    init: list[subprocess.Popen[str]],
) -> None:
    """Neither PID 1 nor a subreaper, run warns once, when it sees an orphan go elsewhere."""
    proc = start_init(init, "--drain", "0.2", "--", "sh", "-c", ORPHANING_PROGRAM)
    orphans = [int(read_line(proc.stdout))]
    try:
        warning = read_line(proc.stderr)
        assert re.match(
            rf"zombiereaper: warning: pid {orphans[0]} \((sh|sleep)\) was orphaned and went to "
            rf"pid {os.getpid()} \(",
            warning,
        ), warning
        assert warning.endswith(
            "not PID 1 and not a subreaper, zombiereaper can neither reap nor drain the "
            "program's orphans (use -s/--subreaper)\n"
        )
        proc.stdin.write("go\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        orphans.append(int(read_line(proc.stdout)))
        assert proc.wait(10) == 0
        # The second orphan, which the drain could not reach either, is not reported again.
        assert psutil.Process(orphans[1]).ppid() == os.getpid()
        assert proc.stderr.read() == ""  # type: ignore[union-attr]
    finally:
        _reap_orphans(*orphans)


@pytest.mark.skipif(not _linux.can_be_subreaper(), reason="the orphans come to the test process")
def test_children_orphaned_by_the_programs_exit_count_before_a_drain_only() -> None:
    """What the program leaves running at its exit is reported with --drain, which misses it."""
    program = "sleep 30 </dev/null >/dev/null 2>&1 & echo $!"
    drained = run_cli("run", "--drain", "0.2", "--", "sh", "-c", program)
    left = run_cli("run", "--", "sh", "-c", program)
    _reap_orphans(int(drained.stdout), int(left.stdout))
    assert drained.returncode == left.returncode == 0
    # Named as it is when seen: `sh` until the background job has exec'd sleep, then `sleep`.
    assert re.match(
        rf"zombiereaper: warning: pid {int(drained.stdout)} \((sh|sleep)\) was orphaned and "
        rf"went to pid {os.getpid()} \(",
        drained.stderr,
    ), drained.stderr
    assert left.stderr == ""  # without a drain run leaves them behind anyway, subreaper or not


def test_without_proc_the_warning_comes_right_after_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where orphans cannot be looked for (no /proc), the warning comes once the program runs."""
    import io

    from zombiereaper import _init

    monkeypatch.setattr(_linux, "can_list_children", lambda: False)
    monkeypatch.setattr(_linux, "is_child_subreaper", lambda: False)
    stream = io.StringIO()
    assert _init._watch_orphans(os.getpid(), _init.InitLog(0, stream)) is None
    assert stream.getvalue() == (
        "zombiereaper: warning: not PID 1 and not a subreaper: orphans will not come back to "
        "zombiereaper to be reaped (use -s/--subreaper)\n"
    )
    # A subreaper already (a parent set the flag, which survives exec): nothing to say.
    monkeypatch.setattr(_linux, "is_child_subreaper", lambda: True)
    quiet = io.StringIO()
    assert _init._watch_orphans(os.getpid(), _init.InitLog(0, quiet)) is None
    assert quiet.getvalue() == ""


# --- signals ------------------------------------------------------------------------------------


def test_every_forwarded_signal_reaches_the_program(init: list[subprocess.Popen[str]]) -> None:
    """TERM, INT, HUP, QUIT, USR1, USR2, WINCH, CONT, ALRM, PIPE, TSTP, TTIN, TTOU... arrive."""
    proc = start_init(init, "-s", "--", sys.executable, "-c", SIGNAL_PRINTER, *FORWARDED)
    assert read_line(proc.stdout) == "ready\n"
    for name in FORWARDED:
        os.kill(proc.pid, signal.Signals[name])
        assert read_line(proc.stdout) == f"{name}\n"
    assert proc.poll() is None  # the init itself neither stopped nor died
    proc.stdin.close()  # type: ignore[union-attr]
    assert proc.wait(10) == 0


def test_rewrite_changes_or_drops_signals(init: list[subprocess.Popen[str]]) -> None:
    """-r USR1:USR2 forwards USR1 as USR2; -r HUP:0 drops HUP."""
    proc = start_init(
        init, "-s", "-r", "USR1:USR2", "-r", "SIGHUP:0", "--",
        sys.executable, "-c", SIGNAL_PRINTER, "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGWINCH",
    )  # fmt: skip
    assert read_line(proc.stdout) == "ready\n"
    os.kill(proc.pid, signal.SIGUSR1)
    assert read_line(proc.stdout) == "SIGUSR2\n"
    os.kill(proc.pid, signal.SIGHUP)
    os.kill(proc.pid, signal.SIGWINCH)  # comes next: HUP never arrived
    assert read_line(proc.stdout) == "SIGWINCH\n"
    proc.stdin.close()  # type: ignore[union-attr]
    assert proc.wait(10) == 0


# Both processes write to one pipe: each line goes out in one write(), so lines never mix.
GROUP_PROGRAM = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    helper = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=sys.stdout)
    signal.signal(signal.SIGUSR1, lambda *a: os.write(1, b"child SIGUSR1\\n"))
    os.write(1, b"ready\\n")
    sys.stdin.read()
    helper.terminate()
    sys.exit(helper.wait())
    """
)
GRANDCHILD = textwrap.dedent(
    """
    import os, signal, sys
    got = []
    def show(signum, frame):
        got.append(signum)
        os.write(1, b"grandchild SIGUSR1\\n")
    def report(signum, frame):
        os.write(1, f"grandchild got {len(got)}\\n".encode())
        sys.exit(0)
    signal.signal(signal.SIGUSR1, show)
    signal.signal(signal.SIGTERM, report)
    os.write(1, b"grandchild ready\\n")
    while True:
        signal.pause()
    """
)


@pytest.mark.parametrize("group", [True, False])
def test_group_sends_signals_to_the_whole_process_group(
    init: list[subprocess.Popen[str]], group: bool
) -> None:
    """With -g the program's whole process group gets the signal; without, the program only."""
    flags = ["-g"] if group else []
    proc = start_init(init, "-s", *flags, "--", sys.executable, "-c", GROUP_PROGRAM, GRANDCHILD)
    got = {read_line(proc.stdout), read_line(proc.stdout)}
    assert got == {"ready\n", "grandchild ready\n"}
    os.kill(proc.pid, signal.SIGUSR1)
    lines = {read_line(proc.stdout)}
    if group:
        lines.add(read_line(proc.stdout))
        assert lines == {"child SIGUSR1\n", "grandchild SIGUSR1\n"}
    else:
        assert lines == {"child SIGUSR1\n"}
    proc.stdin.close()  # type: ignore[union-attr]
    assert read_line(proc.stdout) == f"grandchild got {1 if group else 0}\n"
    assert proc.wait(10) == 0


def test_program_starts_clean_in_its_own_process_group() -> None:
    """Empty mask and default dispositions, SIGPIPE included, whatever the init inherited."""
    launcher = textwrap.dedent(
        f"""
        import os, signal, sys
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1, signal.SIGTERM}})
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        os.execv(sys.executable, {CLI!r} + ["run", "-s", "--", "cat", "/proc/self/status",
                                            "/proc/self/stat"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", launcher], capture_output=True, text=True, timeout=30, check=True
    )
    fields = status_fields(result.stdout)
    assert int(fields["SigBlk"], 16) == 0
    # SIGPIPE too: Python ignores it for itself, cat must not inherit that.
    assert int(fields["SigIgn"], 16) & STANDARD_SIGNALS == 0
    stat = _linux.parse_stat(result.stdout.splitlines()[-1])
    pgrp = int(result.stdout.splitlines()[-1].rpartition(")")[2].split()[2])
    assert pgrp == stat.pid  # its own process group


# --- orphans: subreaper, drain, PID 1 -----------------------------------------------------------


@pytest.mark.skipif(not _linux.can_be_subreaper(), reason="needs PR_SET_CHILD_SUBREAPER")
def test_subreaper_takes_orphans_back_and_reaps_them(init: list[subprocess.Popen[str]]) -> None:
    """With -s, an orphan of the program is reparented to the init and reaped by it."""
    program = 'sh -c "(sleep 0.3; exit 3) & echo \\$!"; cat >/dev/null'
    proc = start_init(init, "-s", "-v", "--", "sh", "-c", program)
    orphan = int(read_line(proc.stdout))
    eventually(
        lambda: not psutil.pid_exists(orphan) or psutil.Process(orphan).ppid() == proc.pid,
        what="the orphan to be reparented to the init",
    )
    eventually(lambda: not psutil.pid_exists(orphan), what="the orphan to be reaped")
    assert proc.poll() is None
    proc.stdin.close()  # type: ignore[union-attr]
    assert proc.wait(10) == 0
    assert f"reaped orphan: pid {orphan} exited with code 3" in proc.stderr.read()  # type: ignore[union-attr]


@pytest.mark.skipif(not _linux.can_be_subreaper(), reason="needs PR_SET_CHILD_SUBREAPER")
def test_drain_terms_then_kills_what_is_left() -> None:
    """--drain TERMs the descendants left when the program exits, KILLs the stubborn, reaps all."""
    program = "sleep 30 & echo $!; (trap '' TERM; exec sleep 30) & echo $!; exit 5"
    result = run_cli("run", "-s", "-v", "--drain", "0.5", "--", "sh", "-c", program, timeout=20)
    assert result.returncode == 5
    polite, stubborn = (int(line) for line in result.stdout.split())
    assert not psutil.pid_exists(polite)
    assert not psutil.pid_exists(stubborn)
    assert "SIGTERM" in result.stderr
    assert "SIGKILL" in result.stderr


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


PID1_PROGRAM = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    orphans = []
    for n in range(50):
        # The orphan's output goes elsewhere: holding the pipes, it would make run() wait.
        out = subprocess.run(["sh", "-c", "(sleep 0.2; exit 3) >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True).stdout
        orphans.append(int(out))
    deadline = time.monotonic() + 20
    while any(os.path.exists(f"/proc/{pid}") for pid in orphans):
        assert time.monotonic() < deadline, "orphans were not reaped"
        time.sleep(0.01)
    states = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    states.append(f.read().rpartition(")")[2].split()[0])
            except OSError:
                pass
    print("pid", os.getppid(), "orphans reaped", len(orphans), "zombies", states.count("Z"),
          flush=True)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))
    print("ready", flush=True)
    signal.pause()
    """
)


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare --pid (root)")
def test_as_pid_1_it_reaps_orphans_forwards_term_and_exits_with_the_code() -> None:
    """PID 1 of a namespace: 50 orphans reaped, no Z left, SIGTERM forwarded, exit code kept."""
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", *CLI, "run", "--",
         sys.executable, "-c", PID1_PROGRAM],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert read_line(proc.stdout, 60) == "pid 1 orphans reaped 50 zombies 0\n"
        assert read_line(proc.stdout) == "ready\n"
        assert proc.stderr is not None
        init_pid = psutil.Process(proc.pid).children()[0].pid  # PID 1 inside, seen from here
        os.kill(init_pid, signal.SIGTERM)
        assert proc.wait(20) == 42
        assert "warning" not in proc.stderr.read()  # PID 1 needs no subreaper
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


# --- zombies and demo ---------------------------------------------------------------------------

LEAKY_PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen(["true"])
    print(child.pid, flush=True)
    sys.stdin.read()
    """
)


def test_zombies_lists_a_leaking_parent_as_json() -> None:
    """`zombies --json` names the parent and its zombie; `--check` then exits 1."""
    parent = subprocess.Popen(
        [sys.executable, "-c", LEAKY_PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        zombie = int(read_line(parent.stdout))
        eventually(
            lambda: psutil.Process(zombie).status() == psutil.STATUS_ZOMBIE,
            what="the zombie",
        )
        result = run_cli("zombies", "--json")
        assert result.returncode == 0
        data = json.loads(result.stdout)
        mine = [p for p in data["parents"] if p["pid"] == parent.pid]
        assert mine, data
        assert {"pid": zombie, "name": "true"} in mine[0]["zombies"]
        assert mine[0]["count"] == len(mine[0]["zombies"]) >= 1
        assert mine[0]["cmdline"][:2] == [sys.executable, "-c"]
        assert data["zombies"] >= 1
        text = run_cli("zombies")
        assert f"parent {parent.pid} (python" in text.stdout
        assert run_cli("zombies", "--check").returncode == 1
    finally:
        parent.stdin.close()  # type: ignore[union-attr]
        parent.wait(10)
        parent.stdout.close()  # type: ignore[union-attr]
    # The zombie was reparented to this process (a subreaper for the run): reap it.
    try:
        os.waitpid(zombie, 0)
    except ChildProcessError:
        pass


#: A parent that starts sys.argv[1], prints its pid and never waits for it.
LEAKY_PARENT_OF = textwrap.dedent(
    """
    import subprocess, sys
    child = subprocess.Popen([sys.argv[1]])
    print(child.pid, flush=True)
    sys.stdin.read()
    """
)


def test_zombies_escapes_control_characters_in_text_and_keeps_them_in_json(
    tmp_path: pathlib.Path,
) -> None:
    """Newlines, escapes and raw bytes of a command line or name print as \\n, \\x1b, \\xff."""
    program = tmp_path / "zz\nz"  # a zombie's name is the name of the file it ran
    program.symlink_to(shutil.which("true") or "/bin/true")
    strange = ["two\nlines", "\x1b[2J", b"\xff"]
    parent = subprocess.Popen(
        [sys.executable, "-c", LEAKY_PARENT_OF, program, *strange],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        zombie = int(read_line(parent.stdout))
        eventually(
            lambda: psutil.Process(zombie).status() == psutil.STATUS_ZOMBIE,
            what="the zombie",
        )
        text = run_cli("zombies")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith(f"parent {parent.pid} "))
        assert lines[at].endswith(" two\\nlines \\x1b[2J \\xff")
        assert f"    zombie {zombie} (zz\\nz)" in lines[at + 1 :]
        assert all(line.isprintable() for line in lines)
        data = json.loads(run_cli("zombies", "--json").stdout)
        mine = next(p for p in data["parents"] if p["pid"] == parent.pid)
        assert mine["cmdline"][-3:] == ["two\nlines", "\x1b[2J", os.fsdecode(b"\xff")]
        assert {"pid": zombie, "name": "zz\nz"} in mine["zombies"]
    finally:
        parent.stdin.close()  # type: ignore[union-attr]
        parent.wait(10)
        parent.stdout.close()  # type: ignore[union-attr]
    try:
        os.waitpid(zombie, 0)  # reparented to this process, a subreaper for the run
    except ChildProcessError:
        pass


def test_zombies_check_is_0_without_zombies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zombies --check` exits 0 and says so when there is no zombie."""
    from zombiereaper import _zombies

    monkeypatch.setattr(_zombies, "find_zombies", lambda: [])
    assert main(["zombies", "--check"]) == 0
    assert capsys.readouterr().out.strip() == "no zombie processes"


def test_demo_exits_0_and_leaves_no_zombie() -> None:
    """`zombiereaper demo` runs its three scenes and ends with no zombie."""
    result = run_cli("demo", timeout=20)
    assert result.returncode == 0, result.stderr
    assert "state 'zombie'" in result.stdout
    assert "Recorded 100 exits (10 killed by SIGKILL); zombies now: 0" in result.stdout
    assert "Zombies after: 0" in result.stdout
    assert result.stdout.rstrip().endswith("no zombie left.")


def test_demo_into_a_closed_pipe_stops_quietly() -> None:
    """`zombiereaper demo | head -1`: status 141 (SIGPIPE's), no traceback, nothing left."""
    with subprocess.Popen(
        [*CLI, "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith("1. ")
        proc.stdout.close()  # the reader goes away, as head does after its lines
        try:
            code = proc.wait(20)
        finally:
            proc.kill()
        errors = proc.stderr.read()
    assert code == 141, errors
    assert "Traceback" not in errors
    assert errors == ""


def test_version_and_python_m() -> None:
    """`python -m zombiereaper --version` prints the version."""
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("zombiereaper ")


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script for a tty")
def test_the_program_gets_the_terminals_foreground() -> None:
    """On a terminal, the program runs in its own process group, which has the foreground."""
    check = "import os; print('foreground', os.tcgetpgrp(0) == os.getpgrp() == os.getpid())"
    command = " ".join([*CLI, "run", "-s", "--", sys.executable, "-c", f'"{check}"'])
    result = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "foreground True" in result.stdout


def test_an_inherited_ignored_sigchld_loses_no_status() -> None:
    """Started with SIGCHLD ignored, the init still gets its program's status every time."""
    launcher = textwrap.dedent(
        f"""
        import os, signal, sys
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        os.execv(sys.executable, {CLI!r} + ["run", "-s", "--", "sh", "-c", "exit 3"])
        """
    )

    def run_once(_: int) -> int:
        return subprocess.run([sys.executable, "-c", launcher], timeout=30, check=False).returncode

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(run_once, range(12))) == [3] * 12


@pytest.mark.skipif(not _linux.can_be_subreaper(), reason="needs PR_SET_CHILD_SUBREAPER")
def test_drain_wakes_a_stopped_descendant_so_that_it_obeys_sigterm() -> None:
    """--drain sends SIGCONT with SIGTERM: a stopped descendant ends without needing SIGKILL."""
    program = "sleep 30 & kill -STOP $!; echo $!; exit 0"
    result = run_cli("run", "-s", "-v", "--drain", "10", "--", "sh", "-c", program, timeout=20)
    assert result.returncode == 0
    assert not psutil.pid_exists(int(result.stdout))
    assert "SIGKILL" not in result.stderr


@pytest.mark.skipif(not _linux.can_be_subreaper(), reason="needs PR_SET_CHILD_SUBREAPER")
def test_drain_outlasts_a_descendant_that_keeps_forking() -> None:
    """--drain kills again until nothing is left, however often a descendant forks."""
    # The program exits only once the subshell ignores SIGTERM (a line through a FIFO): the
    # drain must then need SIGKILL, never find a subshell that SIGTERM still kills.
    program = (
        'fifo="$(mktemp -u)"; mkfifo "$fifo"; '
        "(trap '' TERM; echo ready > \"$fifo\"; while :; do sleep 30 & sleep 0.001; done) & "
        'read line < "$fifo"; rm "$fifo"; exit 0'
    )
    result = run_cli("run", "-s", "-v", "--drain", "0.3", "--", "sh", "-c", program, timeout=20)
    assert result.returncode == 0
    assert "SIGKILL" in result.stderr
    # Anything left would now be this process's (a subreaper): the leak check would catch it.
