"""Whole process trees: Child.stop(tree=True), Reaper(stop_tree=True), supervise(stop_tree=True).

Every tree here prints the pids of its members on a pipe, so that a test waits for what it
needs to see (a line, or the end of the pipe once every member holding it is dead), never for
a fixed time.

No stranger is signalled: every member is held by a pidfd opened before its identity is
checked (its parent in /proc is the member it was listed under, and both pidfds still say
"running" after that read), and every signal goes through that pidfd. A pidfd names one
process for good: once that process has exited, pidfd_send_signal fails with ESRCH, whatever
process has the pid since. A pid reused between the listing and the opening gives a pidfd of
the stranger, whose parent is not the member it was listed under (or, if it is, it is a
child of that member, hence a member too): test_a_process_listed_under_another_parent_is_not_held
pins that check.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable

import psutil
import pytest

from zombiereaper import Reaper, ReaperError, _linux, _process, _tree

from .helpers import PY, eventually, is_zombie_or_gone, read_line
from .pidns import call_as_pid1, set_next_pid
from .test_pid_reuse import STEP, Bystander

pytestmark = pytest.mark.skipif(not _tree.can_stop_trees(), reason="needs pidfds and /proc")

#: A shell whose background sleep is its child: prints the sleep's pid, waits for it.
SLEEPING_GRANDCHILD = ["sh", "-c", "sleep 779 & echo $!; wait"]

#: A shell whose background Python ignores SIGTERM: the Python prints its pid once it does.
STUBBORN_GRANDCHILD = [
    "sh",
    "-c",
    f"'{PY}' -c 'import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(os.getpid(), flush=True); time.sleep(60)' & wait",
]

#: Forks a tree of BRANCHES**DEPTH leaves, each member printing its pid, forking on and on
#: while the stop goes on; the root prints "started" first.
FORK_BOMB = textwrap.dedent(
    """
    import os, sys, time
    BRANCHES, DEPTH = 2, 5
    print("started", flush=True)
    depth = 0
    while True:
        forked = False
        for _ in range(BRANCHES if depth < DEPTH else 0):
            time.sleep(0.005)
            if os.fork() == 0:
                depth += 1
                print(os.getpid(), flush=True)
                forked = True
                break
        if not forked:
            time.sleep(60)
            os._exit(0)
    """
)


def _gone(pid: int) -> bool:
    return is_zombie_or_gone(pid)


def test_stop_tree_stops_the_grandchild_at_the_end_of_the_block() -> None:
    """Reaper(stop_tree=True): leaving the block stops the children's descendants too."""
    with Reaper(stop_tree=True) as reaper:
        child = reaper.spawn(SLEEPING_GRANDCHILD, stdout=subprocess.PIPE, text=True)
        grandchild = psutil.Process(int(read_line(child.popen.stdout)))
        assert grandchild.ppid() == child.pid
    child.popen.stdout.close()
    assert child.status is not None
    # Exited by the time the block is left (and reaped: the guard sees no zombie of ours).
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE


def test_child_stop_tree_true() -> None:
    """Child.stop(tree=True) stops the child and its descendants, and returns its status."""
    with Reaper() as reaper:
        child = reaper.spawn(SLEEPING_GRANDCHILD, stdout=subprocess.PIPE, text=True)
        grandchild = psutil.Process(int(read_line(child.popen.stdout)))
        status = child.stop(timeout=10, tree=True)
        assert status.signal in (signal.SIGTERM, None)
        assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
        child.popen.stdout.close()


def test_tree_false_leaves_the_descendants_alone() -> None:
    """tree=False (the default) stops the child only, as before: its descendants run on."""
    with Reaper() as reaper:
        child = reaper.spawn(SLEEPING_GRANDCHILD, stdout=subprocess.PIPE, text=True)
        grandchild = psutil.Process(int(read_line(child.popen.stdout)))
        child.stop(timeout=10, tree=False)
        child.popen.stdout.close()
    try:
        # Orphaned, it came back to this process (a subreaper for the run) and still runs.
        assert grandchild.status() != psutil.STATUS_ZOMBIE
        assert grandchild.ppid() == os.getpid()
    finally:
        grandchild.kill()
        grandchild.wait(timeout=10)


def test_a_stubborn_descendant_is_killed_and_named_in_the_warning() -> None:
    """A descendant that ignores SIGTERM gets SIGKILL, and the RuntimeWarning names it."""
    with pytest.warns(RuntimeWarning) as caught:
        with Reaper(stop_timeout=0.3, stop_tree=True) as reaper:
            child = reaper.spawn(STUBBORN_GRANDCHILD, stdout=subprocess.PIPE, text=True)
            stubborn = int(read_line(child.popen.stdout))
    child.popen.stdout.close()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"pid {stubborn} (" in message
    assert f"child of pid {child.pid})" in message
    assert "still ran 0.3 s after SIGTERM; sent SIGKILL" in message
    assert f"pid {child.pid} (sh)" not in message  # the shell died of SIGTERM
    assert _gone(stubborn)


def test_a_forking_tree_is_stopped_whole() -> None:
    """A tree that forks all the while it is stopped loses every member, none escaping."""
    with Reaper(stop_tree=True) as reaper:
        child = reaper.spawn([PY, "-c", FORK_BOMB], stdout=subprocess.PIPE, text=True)
        assert read_line(child.popen.stdout).strip() == "started"
        # Some members exist already, more are being forked.
        eventually(lambda: len(psutil.Process(child.pid).children(recursive=True)) >= 4)
        child.stop(timeout=10, tree=True)
        # The end of the pipe: every process that held it (all members, printing or not)
        # has died. One that escaped would keep it open, and this would hang.
        members = [int(line) for line in child.popen.stdout.read().split()]
        child.popen.stdout.close()
    assert members
    assert all(_gone(pid) for pid in members)


def test_supervise_stop_tree_stops_each_copys_descendants() -> None:
    """supervise(stop_tree=True): stopping the Service stops its copies' descendants."""
    with Reaper() as reaper:
        service = reaper.supervise(SLEEPING_GRANDCHILD, stop_tree=True, stdout=subprocess.PIPE)
        (copy,) = service.children
        grandchild = psutil.Process(int(read_line(copy.popen.stdout)))
        service.stop()
        assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE


def test_supervise_takes_the_reapers_stop_tree_by_default() -> None:
    """A Service of a Reaper(stop_tree=True) stops its copies' trees at the end of the block."""
    with Reaper(stop_tree=True) as reaper:
        service = reaper.supervise(SLEEPING_GRANDCHILD, stdout=subprocess.PIPE)
        (copy,) = service.children
        grandchild = psutil.Process(int(read_line(copy.popen.stdout)))
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("value", [1, "yes", None])
def test_stop_tree_must_be_a_bool(value: object) -> None:
    """Reaper(stop_tree=...), supervise(stop_tree=...) and stop(tree=...) refuse non-bools."""
    with pytest.raises(TypeError, match="stop_tree must be True or False"):
        Reaper(stop_tree=value)  # type: ignore[arg-type]
    with Reaper() as reaper:
        if value is not None:  # None is supervise()'s "the Reaper's"
            with pytest.raises(TypeError, match="stop_tree must be True or False"):
                reaper.supervise(["true"], stop_tree=value)  # type: ignore[arg-type]
        child = reaper.spawn(["sleep", "60"])
        with pytest.raises(TypeError, match="tree must be True or False"):
            child.stop(tree=value)  # type: ignore[arg-type]
        child.stop()


def test_without_pidfds_stop_tree_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where trees cannot be stopped, stop_tree=True is a ReaperError at once."""
    monkeypatch.setattr(_tree, "can_stop_trees", lambda: False)
    with pytest.raises(ReaperError, match="pidfds"):
        Reaper(stop_tree=True)


def test_a_process_listed_under_another_parent_is_not_held() -> None:
    """A pid is held only if its parent is the member it was listed under (a reused pid is not)."""
    with Reaper() as reaper:
        first = reaper.spawn(["sleep", "60"])
        second = reaper.spawn(["sleep", "60"])
        assert _tree._open(second.pid, first.pid, lambda: False, root=False) is None
        held = _tree._open(second.pid, os.getpid(), lambda: False, root=False)
        assert held is not None
        held.close()


DRAIN = textwrap.dedent(
    """
    import subprocess, sys
    from zombiereaper import _linux, _tree
    _linux.set_child_subreaper(True)
    popen = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
    grandchild = popen.stdout.readline().strip()
    killed = _tree.stop_tree(None, 0.3)
    print(grandchild, popen.wait(), ",".join(str(p.pid) for p in killed), flush=True)
    """
)


def test_stop_tree_of_this_process_children() -> None:
    """stop_tree(None, ...) (the init's drain) stops every child of the process with its tree.

    Run in a process of its own, a subreaper: the grandchild comes back to it and is reaped.
    """
    result = subprocess.run(
        [PY, "-c", DRAIN, *STUBBORN_GRANDCHILD],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    grandchild, code, killed = result.stdout.split()
    # The shell dies of SIGTERM; the Python in it ignores SIGTERM and is the one killed.
    assert code == str(-signal.SIGTERM)
    assert killed == grandchild
    assert _gone(int(grandchild))


ORPHANING_TEST = """
import subprocess
from zombiereaper import _linux

def test_orphans_a_grandchild(tmp_path_factory):
    assert _linux.is_child_subreaper()  # while the test runs
    # The shell exits at once: its background sleep is orphaned.
    script = "sleep 779 >/dev/null 2>&1 & echo $!"
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    (tmp_path_factory.getbasetemp() / "pid").write_text(out.stdout.strip())
"""

SUBREAPER_AFTER = """
from zombiereaper import _linux

def pytest_sessionfinish(session):
    print("subreaper after the tests:", _linux.is_child_subreaper())
"""


def test_the_plugin_reports_and_cleans_an_orphaned_grandchild(pytester: pytest.Pytester) -> None:
    """The plugin's subreaper gets a test's orphaned grandchild back: reported, then stopped."""
    pytester.makepyfile(ORPHANING_TEST)
    pytester.makeconftest(SUBREAPER_AFTER)
    before = {proc.pid for proc in psutil.Process().children()}
    result = pytester.runpytest_subprocess(
        *("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:xdist", "-s"),
        *("--basetemp", str(pytester.path / ".." / "basetemp"), "--zombies=fail"),
    )
    pid = int((pytester.path / ".." / "basetemp" / "pid").resolve().read_text())
    # Nothing came back to this process: the inner run stopped and reaped the sleep itself.
    assert {proc.pid for proc in psutil.Process().children()} <= before
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [f"*pid {pid} still running: sleep 779 (nobody here waits for it: cleaned up)*"]
    )
    result.stdout.fnmatch_lines(["*subreaper after the tests: False"])
    assert _gone(pid)


# --- a recycled pid during a tree stop (PID namespace) -----------------------------------------

#: A parent that forks a ``sleep``, prints its pid, reaps it once it dies and says so, then waits.
REAPING_PARENT = textwrap.dedent(
    """
    import os, signal
    pid = os.fork()
    if pid == 0:
        os.execvp("sleep", ["sleep", "1000"])
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
    signal.pause()
    """
)


def _stopped(pid: int) -> bool:
    stat = _linux.read_stat(pid)
    return stat is not None and stat.state in "Tt"


def _stop_and_report(
    stopping: _tree.TreeStop, parent: subprocess.Popen[str], stranger: Bystander, grandchild: int
) -> dict[str, object]:
    """Finish stopping the tree; say what became of the parent and of the stranger."""
    try:
        stopping.terminate()
        stopping.wait(time.monotonic() + STEP)
        stopped_stranger = _stopped(stranger.pid)
        fate = "stopped" if stopped_stranger else stranger.fate()
    finally:
        stopping.close()
    parent_code = parent.wait(STEP)
    assert parent.stdout is not None
    parent.stdout.close()
    if not stopped_stranger:
        stranger.stop()
    return {
        "reused": stranger.pid == grandchild,
        "parent": parent_code,
        "stranger": fate,
    }


def case_tree_member_reaped_then_pid_reused() -> dict[str, object]:
    """A held descendant exits, its parent reaps it, a stranger takes its pid; then TERM/CONT."""
    parent = subprocess.Popen([PY, "-c", REAPING_PARENT], stdout=subprocess.PIPE, text=True)
    grandchild = int(read_line(parent.stdout, STEP))
    root = _tree.open_child(parent.pid)
    assert root is not None
    stopping = _tree.TreeStop([root])
    stopping.freeze()  # both held by pidfds, both stopped
    held = sorted(proc.pid for proc in stopping.members)
    os.kill(grandchild, signal.SIGKILL)  # a zombie while its parent is stopped: still its pid
    os.kill(parent.pid, signal.SIGCONT)  # let the parent reap it
    assert read_line(parent.stdout, STEP) == "reaped\n"
    set_next_pid(grandchild)
    stranger = Bystander()  # a child of this PID 1, with the grandchild's pid
    return {"held": held == sorted([parent.pid, grandchild])} | _stop_and_report(
        stopping, parent, stranger, grandchild
    )


def case_listed_then_pid_reused_before_it_is_held() -> dict[str, object]:
    """Between the listing of a parent's children and the pidfd_open, the pid changes hands."""
    parent = subprocess.Popen([PY, "-c", REAPING_PARENT], stdout=subprocess.PIPE, text=True)
    grandchild = int(read_line(parent.stdout, STEP))
    strangers: list[Bystander] = []
    real_open = _process.open_pidfd

    def racing_open(pid: int) -> int:
        if pid == grandchild and not strangers:
            # This parent had not stopped yet, in this story: it reaps its child, and the pid
            # goes to a stranger, all after the listing read the pid and before the pidfd.
            os.kill(parent.pid, signal.SIGCONT)
            os.kill(grandchild, signal.SIGKILL)
            assert read_line(parent.stdout, STEP) == "reaped\n"
            set_next_pid(grandchild)
            strangers.append(Bystander())
            os.kill(parent.pid, signal.SIGSTOP)
        return real_open(pid)

    _process.open_pidfd = racing_open  # this PID 1 is a process of its own: no undoing
    root = _tree.open_child(parent.pid)
    assert root is not None
    stopping = _tree.TreeStop([root])
    stopping.freeze()
    held = sorted(proc.pid for proc in stopping.members)
    return {"held": held == [parent.pid]} | _stop_and_report(
        stopping, parent, strangers[0], grandchild
    )


@pytest.mark.parametrize(
    "case",
    [case_tree_member_reaped_then_pid_reused, case_listed_then_pid_reused_before_it_is_held],
    ids=["after-hold", "before-hold"],
)
def test_a_recycled_pid_in_a_tree_stop_is_never_signalled(
    case: Callable[[], dict[str, object]],
) -> None:
    """PID namespace: a descendant's pid goes to a stranger during a tree stop; the stranger
    gets no SIGSTOP, SIGTERM or SIGCONT, and the tree is stopped all the same.

    after-hold: every signal goes through the pidfd, which names the dead descendant for good
    (by pid, the stranger would be frozen and terminated). before-hold: the pidfd opened on
    the pid is the stranger's; its parent is not the member it was listed under, so it is not
    held.
    """
    seen = call_as_pid1(case)
    assert seen == {
        "held": True,
        "reused": True,
        "parent": -signal.SIGTERM,
        "stranger": "alive",
    }
