"""The pytest plugin, run through pytester in a separate process: leaks, modes, the fixture."""

from __future__ import annotations

import psutil
import pytest

from .helpers import HAS_PIDFD

LEAKY_TEST = """
import subprocess, time
import psutil

KEEP = []

def test_leaves_a_zombie(tmp_path_factory):
    popen = subprocess.Popen(["sh", "-c", "exit 3"])
    KEEP.append(popen)  # referenced, so Popen's own cleanup never reaps it
    deadline = time.monotonic() + 10
    while psutil.Process(popen.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (tmp_path_factory.getbasetemp() / "pid").write_text(str(popen.pid))
"""

RUNNING_TEST = """
import subprocess

KEEP = []

def test_leaves_a_reader(tmp_path_factory):
    # It exits by itself once this pytest process ends and the pipe closes: no stray is left.
    popen = subprocess.Popen(["sh", "-c", "read line"], stdin=subprocess.PIPE)
    KEEP.append(popen)
    (tmp_path_factory.getbasetemp() / "pid").write_text(str(popen.pid))
"""

CLEAN_TEST = """
import subprocess

def test_cleans_up():
    assert subprocess.run(["sh", "-c", "exit 0"]).returncode == 0
    popen = subprocess.Popen(["sleep", "30"])
    popen.kill()
    popen.wait()
"""


def _leaked_pid(pytester: pytest.Pytester) -> int:
    return int((pytester.path / ".." / "basetemp" / "pid").resolve().read_text())


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    before = {proc.pid for proc in psutil.Process().children()}
    result = pytester.runpytest_subprocess(
        # Without hypothesis's plugin (its summary imports all of hypothesis: a second per
        # run) and xdist's, which the inner runs do not use.
        *("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:xdist"),
        *("--basetemp", str(pytester.path / ".." / "basetemp"), *args),
    )
    # What the inner run left (its leaked children, multiprocessing's helpers) was reparented
    # to this process, a subreaper for the run: each ends once the inner run is gone.
    for proc in psutil.Process().children():
        if proc.pid not in before:
            try:
                proc.wait(timeout=20)
            except psutil.NoSuchProcess:
                pass
    return result


def test_a_leaked_zombie_fails_under_zombies_fail(pytester: pytest.Pytester) -> None:
    """With --zombies=fail a test that leaves a zombie errors, naming 'zombie' and its pid."""
    pytester.makepyfile(LEAKY_TEST)
    result = _run(pytester, "--zombies=fail")
    result.assert_outcomes(passed=1, errors=1)
    pid = _leaked_pid(pytester)
    result.stdout.fnmatch_lines([f"*zombie pid {pid} (sh)*never waited for*"])


def test_the_ini_option_fails_too(pytester: pytest.Pytester) -> None:
    """`zombies = fail` in the ini file works like --zombies=fail."""
    pytester.makeini("[pytest]\nzombies = fail\n")
    pytester.makepyfile(LEAKY_TEST)
    _run(pytester).assert_outcomes(passed=1, errors=1)


def test_a_leak_only_warns_by_default(pytester: pytest.Pytester) -> None:
    """Without options a leak gives a ChildLeakWarning and the run passes."""
    pytester.makepyfile(LEAKY_TEST)
    result = _run(pytester)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*ChildLeakWarning*zombie pid*"])


def test_zombies_off_says_nothing(pytester: pytest.Pytester) -> None:
    """--zombies=off turns the check off."""
    pytester.makepyfile(LEAKY_TEST)
    result = _run(pytester, "--zombies=off")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*never waited for*")


def test_a_child_left_running_is_reported_with_its_command_line(pytester: pytest.Pytester) -> None:
    """A child still running after the test is reported with its pid and command line."""
    pytester.makepyfile(RUNNING_TEST)
    result = _run(pytester, "--zombies=fail")
    result.assert_outcomes(passed=1, errors=1)
    pid = _leaked_pid(pytester)
    result.stdout.fnmatch_lines([f"*pid {pid} still running: sh -c read line*"])


def test_a_clean_test_passes(pytester: pytest.Pytester) -> None:
    """A test that waits for its children passes under --zombies=fail with warnings as errors."""
    pytester.makepyfile(CLEAN_TEST)
    _run(pytester, "--zombies=fail", "-W", "error").assert_outcomes(passed=1)


def test_multiprocessing_helpers_are_not_leaks(pytester: pytest.Pytester) -> None:
    """The forkserver and resource tracker that multiprocessing keeps alive are not reported."""
    pytester.makepyfile(
        """
        import multiprocessing, sys

        def work():
            sys.exit(0)

        def test_forkserver_and_tracker():
            context = multiprocessing.get_context("forkserver")
            lock = context.Lock()  # starts the resource tracker
            process = context.Process(target=work)
            process.start()
            process.join(30)
            assert process.exitcode == 0
        """
    )
    _run(pytester, "--zombies=fail", "-W", "error").assert_outcomes(passed=1)


def test_the_reaper_fixture_spawns_and_cleans_up(pytester: pytest.Pytester) -> None:
    """The `reaper` fixture is installed for the test and stops what is left running."""
    pytester.makepyfile(
        """
        import pytest
        from zombiereaper import Reaper

        def test_fixture(reaper):
            assert isinstance(reaper, Reaper) and reaper.installed
            assert reaper.spawn(["sh", "-c", "exit 5"]).wait(10).returncode == 5
            reaper.spawn(["sleep", "30"])  # left running: the fixture must stop it

        @pytest.mark.reaper(backend="sigchld", stop_timeout=2.0)
        def test_marker(reaper):
            assert reaper.backend == "sigchld" and reaper.stop_timeout == 2.0
        """
    )
    _run(pytester, "--zombies=fail", "-W", "error").assert_outcomes(passed=2)


def test_loaded_explicitly_with_p(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With plugin autoloading disabled, `-p zombiereaper` loads the plugin by its name."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(LEAKY_TEST)
    _run(pytester, "-p", "zombiereaper", "--zombies=fail").assert_outcomes(passed=1, errors=1)
    result = _run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*never waited for*")


def test_a_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """An unknown `zombies` ini value stops the run with a message naming the choices."""
    pytester.makeini("[pytest]\nzombies = maybe\n")
    pytester.makepyfile(CLEAN_TEST)
    result = _run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*warn, fail, off*"])


def test_a_module_fixtures_child_is_not_a_leak_of_the_test_that_set_it_up(
    pytester: pytest.Pytester,
) -> None:
    """A child kept by a module-scoped fixture is no test's leak; the warning names the test."""
    pytester.makepyfile(
        """
        import subprocess
        import pytest

        @pytest.fixture(scope="module")
        def server():
            popen = subprocess.Popen(["sleep", "30"])
            yield popen
            popen.kill()
            popen.wait()

        def test_first(server):
            assert server.poll() is None

        def test_second(server):
            assert server.poll() is None
        """
    )
    _run(pytester, "--zombies=fail", "-W", "error").assert_outcomes(passed=2)


def test_the_warning_points_at_the_leaking_test(pytester: pytest.Pytester) -> None:
    """The ChildLeakWarning is reported at the leaking test's own file and line."""
    pytester.makepyfile(test_leaky=LEAKY_TEST)
    result = _run(pytester)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*test_leaky.py:*: ChildLeakWarning: *never waited for*"])


@pytest.mark.skipif(not HAS_PIDFD, reason="the relay holds pidfds")
def test_the_relay_started_during_a_test_is_not_a_leak(pytester: pytest.Pytester) -> None:
    """zombiereaper's own relay, started while a module's Reaper lends pidfds, is no leak."""
    pytester.makepyfile(
        """
        import subprocess, time
        import pytest
        from zombiereaper import Reaper, _engine
        from zombiereaper._backends.pidfd import PidfdMonitor

        PidfdMonitor.lend_above = 4
        PidfdMonitor.lend_keep = 2

        @pytest.fixture(scope="module")
        def reaper():
            with Reaper(backend="pidfd") as reaper:
                yield reaper

        def test_many_children(reaper):
            children = [
                reaper.spawn(["sh", "-c", "read line; exit 0"], stdin=subprocess.PIPE)
                for _ in range(10)
            ]
            deadline = time.monotonic() + 10
            while not _engine.current().monitors.pidfd.count()[1]:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            for child in children:
                child.popen.stdin.close()
            assert [child.wait(10).returncode for child in children] == [0] * 10

        def test_after(reaper):
            assert _engine.helper_pids()
        """
    )
    _run(pytester, "--zombies=fail", "-W", "error").assert_outcomes(passed=2)


def test_a_positional_marker_argument_is_a_setup_error_naming_the_keyword_form(
    pytester: pytest.Pytester,
) -> None:
    """`@pytest.mark.reaper("all")` errors at setup and says to write `reaper(scope='all')`."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.reaper("all")
        def test_positional(reaper):
            pass
        """
    )
    result = _run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.reaper('all'): the reaper marker takes keyword arguments only, those "
            "of Reaper() (scope=, *): write @pytest.mark.reaper(scope='all')"
        ]
    )


def test_a_bad_marker_keyword_is_a_setup_error_naming_the_marker(
    pytester: pytest.Pytester,
) -> None:
    """A keyword that Reaper() does not take errors at setup, naming the marker and the keywords."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.reaper(timeout=1.0)
        def test_bad_keyword(reaper):
            pass
        """
    )
    result = _run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.reaper(timeout=1.0): "
            "*unexpected keyword argument 'timeout' (it takes scope=*"
        ]
    )
    result.stdout.no_fnmatch_line("*During handling of the above exception*")


STUBBORN_CHILD_TEST = """
import subprocess
import pytest


@pytest.mark.reaper(stop_timeout=0.1)
def test_stubborn(reaper):
    child = reaper.spawn(
        ["sh", "-c", "trap '' TERM; echo ready; exec sleep 30"], stdout=subprocess.PIPE
    )
    assert child.popen.stdout.readline() == b"ready\\n"
    child.popen.stdout.close()
"""


def test_the_fixtures_warning_points_at_the_test(pytester: pytest.Pytester) -> None:
    """The RuntimeWarning of a child killed at the fixture's teardown names the test's file:line."""
    pytester.makepyfile(test_stubborn=STUBBORN_CHILD_TEST)
    result = _run(pytester)
    result.assert_outcomes(passed=1, warnings=1)
    line = STUBBORN_CHILD_TEST.lstrip().splitlines().index("@pytest.mark.reaper(stop_timeout=0.1)")
    result.stdout.fnmatch_lines(
        [
            f"*test_stubborn.py:{line + 1}: RuntimeWarning: "
            "pid * still ran 0.1 s after SIGTERM; sent SIGKILL"
        ]
    )
