"""A lean start: what importing zombiereaper and starting its init cost.

The figures are the benchmarks' (benchmarks/run.py --only startup); these tests pin what makes
them: which modules each entry point imports, and that the init's own reading of its command
line agrees with argparse, which stays the reference.
"""

from __future__ import annotations

import ast
import contextlib
import io
import subprocess
import sys

import pytest
from hypothesis import given

from zombiereaper._cli import build_parser, parse_run_arguments, run_options
from zombiereaper._init import InitOptions

from .strategies import run_option_words, run_programs

#: Modules that each cost about as much as starting Python, or more (measured with
#: `python -X importtime`): none of them may be imported before a user asks for a feature.
HEAVY = {
    "argparse",
    "asyncio",
    "ctypes",
    "dataclasses",
    "inspect",
    "json",
    "logging",
    "multiprocessing",
    "psutil",
    "subprocess",
    "threading",
    "typing",
}


def _imported_by(code: str) -> set[str]:
    """The modules that a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted(sys.modules))"  # (json would count itself)
    # -I: no site-packages startup files, no PYTHON* variables; the package comes by sys.path.
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path[:0] = {sys.path!r}\n{probe}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return set(ast.literal_eval(out))


def test_importing_the_package_imports_no_heavy_module() -> None:
    """`import zombiereaper` loads only the package and its version, nothing heavy."""
    modules = _imported_by("import zombiereaper")
    assert {m for m in modules if m.startswith("zombiereaper")} == {
        "zombiereaper",
        "zombiereaper._version",
    }
    assert modules & HEAVY == set()


def test_the_first_public_name_imports_the_api() -> None:
    """Asking for one public name imports its module; what came with it is named zombiereaper.X."""
    code = (
        "import zombiereaper\n"
        "from zombiereaper import Reaper\n"
        "assert 'Child' in vars(zombiereaper)\n"
        "assert zombiereaper.Child.__module__ == 'zombiereaper'\n"
        "assert zombiereaper.Reaper is Reaper\n"
        "assert set(zombiereaper.__all__) <= set(dir(zombiereaper))\n"
    )
    assert "zombiereaper._reaper" in _imported_by(code)


def test_the_reaper_imports_neither_supervision_nor_multiprocessing() -> None:
    """`from zombiereaper import Reaper` leaves supervision and multiprocessing to their users."""
    modules = _imported_by("from zombiereaper import Reaper")
    assert "zombiereaper._supervise" not in modules
    assert {m for m in modules if m.split(".")[0] == "multiprocessing"} == set()


def test_supervision_imported_on_first_use_names_its_classes_zombiereaper() -> None:
    """A Service met before its name was asked for is still a zombiereaper.Service."""
    code = (
        "from zombiereaper import Reaper\n"
        "with Reaper() as reaper:\n"
        "    service = reaper.supervise(['true'], restart='never')\n"
        "    assert type(service).__module__ == 'zombiereaper', type(service).__module__\n"
        "    service.stop()\n"
        "import zombiereaper\n"
        "assert zombiereaper.Service is type(service)\n"
        "assert zombiereaper.ServiceEvent.__module__ == 'zombiereaper'\n"
    )
    assert "zombiereaper._supervise" in _imported_by(code)


def test_the_init_imports_no_heavy_module() -> None:
    """What `zombiereaper run` imports to start a program: no heavy module."""
    code = (
        "import zombiereaper._cli as cli\n"
        "options = cli.parse_run_arguments(['-s', '-r', 'TERM:INT', '--drain', '1', 'true'])\n"
        "assert options is not None\n"
        "import zombiereaper._init\n"
    )
    modules = _imported_by(code)
    assert modules & HEAVY == set()
    assert {m for m in modules if m.startswith("zombiereaper")} == {
        "zombiereaper",
        "zombiereaper._cli",
        "zombiereaper._init",
        "zombiereaper._linux",
        "zombiereaper._version",
    }


def _argparse_reading(args: list[str]) -> InitOptions | None:
    """``run``'s options as argparse reads ``args`` (None where it exits with an error)."""
    parser = build_parser()
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            parsed = parser.parse_args(["run", *args])
    except SystemExit:
        return None
    return run_options(parsed)


@given(options=run_option_words, program=run_programs)
def test_the_init_reads_its_command_line_as_argparse_does(
    options: list[str], program: list[str]
) -> None:
    """Every command line that the fast reader accepts, argparse reads the same way."""
    args = options + program
    fast = parse_run_arguments(args)
    if fast is not None:
        assert fast == _argparse_reading(args), args


@pytest.mark.parametrize(
    "args",
    [
        ["true"],
        ["--", "sh", "-c", "exit 3"],
        ["-g", "-s", "-vv", "--", "sh"],
        ["-r", "TERM:INT", "--rewrite=USR1:0", "-e", "143", "--drain", "2", "--", "x", "-g"],
        ["sh", "-s", "--drain", "1"],
    ],
)
def test_the_usual_command_lines_need_no_argparse(args: list[str]) -> None:
    """The command lines of the docs are read without argparse, as argparse reads them."""
    fast = parse_run_arguments(args)
    assert fast is not None
    assert fast == _argparse_reading(args)


@pytest.mark.parametrize(
    "args", [[], ["--"], ["--help"], ["-gs", "true"], ["--drain", "-1", "true"], ["-x", "true"]]
)
def test_anything_else_goes_to_argparse(args: list[str]) -> None:
    """Help, errors and unusual spellings are left to argparse, which reports them."""
    assert parse_run_arguments(args) is None
