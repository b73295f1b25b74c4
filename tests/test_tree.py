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

import psutil
import pytest

from zombiereaper import Reaper, ReaperError, _tree

from .helpers import PY, eventually, is_zombie_or_gone, read_line

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
