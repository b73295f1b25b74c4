"""The ``zombiereaper`` command: ``run`` (a container init), ``zombies`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

_RUN_EPILOG = """\
Runs PROGRAM as its child like tini or dumb-init: it forwards every signal it can catch
(all but SIGCHLD, SIGKILL and SIGSTOP; TSTP, TTIN and TTOU too) to the program, reaps every
orphan that comes to it, and exits with the program's exit code, or 128+N when a signal N
killed it. 127: PROGRAM not found; 126: PROGRAM cannot be executed.
"""


def _rewrite(text: str) -> tuple[int, int]:
    from ._init import parse_signal

    source, sep, target = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not FROM:TO (say, TERM:INT or USR1:0)")
    try:
        return parse_signal(source), parse_signal(target)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _exit_code(text: str) -> int:
    try:
        code = int(text)
    except ValueError:
        code = -1
    if not 0 <= code <= 255:
        raise argparse.ArgumentTypeError(f"{text!r} is not an exit code (0 to 255)")
    return code


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser, which rejects the arguments it does not know itself.

    argparse hands a subcommand's unknown arguments back to the top-level parser, which then
    prints its own usage (``zombiereaper [-h] [--version] COMMAND ...``): the user of
    ``zombiereaper run --bogus`` needs the usage of ``run``.
    """

    def parse_known_args(  # type: ignore[override]  # typeshed overloads it; same contract
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        """Parse ``args``; exit 2 with this subcommand's usage if any is left unrecognized."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``zombiereaper`` command."""
    parser = argparse.ArgumentParser(
        prog="zombiereaper",
        description="Keep processes free of zombies: a container init, a zombie finder, a demo.",
    )
    parser.add_argument("--version", action="version", version=f"zombiereaper {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_SubcommandParser
    )

    run = commands.add_parser(
        "run",
        help="run a program as a container init (PID 1) would",
        usage="zombiereaper run [options] -- PROGRAM [ARGS...]",
        epilog=_RUN_EPILOG,
    )
    run.add_argument(
        "-g",
        "--group",
        action="store_true",
        help="send forwarded signals to the program's whole process group",
    )
    run.add_argument(
        "-s",
        "--subreaper",
        action="store_true",
        help="when not PID 1, become a subreaper so that orphans come back to be reaped",
    )
    run.add_argument(
        "-r",
        "--rewrite",
        action="append",
        type=_rewrite,
        default=[],
        metavar="FROM:TO",
        help="forward signal FROM as TO (TO 0 drops it); repeatable",
    )
    run.add_argument(
        "-e",
        "--remap-exit",
        action="append",
        type=_exit_code,
        default=[],
        metavar="CODE",
        help="exit 0 when the program exits with CODE; repeatable",
    )
    run.add_argument(
        "--drain",
        type=_seconds,
        metavar="SECONDS",
        help="when the program exits, TERM every remaining descendant, wait up to SECONDS, "
        "KILL the rest, reap them all, then exit",
    )
    run.add_argument("-v", "--verbose", action="count", default=0, help="say what happens")
    run.add_argument("program", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    zombies = commands.add_parser(
        "zombies", help="list every zombie process, grouped by the parent that leaks it"
    )
    zombies.add_argument("--json", action="store_true", help="print JSON")
    zombies.add_argument(
        "--check", action="store_true", help="exit 1 when there is any zombie (health checks)"
    )

    commands.add_parser("demo", help="show what zombiereaper does, in under 20 seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``zombiereaper`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(parser, args)
    if args.command == "zombies":
        return _zombies(args)
    from ._demo import run_demo

    return run_demo(sys.stdout)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ._init import InitOptions, run_init

    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    if not program:
        parser.exit(
            2,
            "usage: zombiereaper run [options] -- PROGRAM [ARGS...]\n"
            "zombiereaper run: error: no PROGRAM to run\n",
        )
    options = InitOptions(
        argv=program,
        group=args.group,
        subreaper=args.subreaper,
        rewrite=dict(args.rewrite),
        remap_exit=frozenset(args.remap_exit),
        drain=args.drain,
        verbose=args.verbose,
    )
    return run_init(options)


def _zombies(args: argparse.Namespace) -> int:
    import signal

    from ._zombies import as_json_data, as_text, find_zombies

    # Like any Unix filter: `zombiereaper zombies | head` ends quietly.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parents = find_zombies()
    if args.json:
        print(json.dumps(as_json_data(parents), indent=2))
    else:
        print(as_text(parents))
    return 1 if args.check and parents else 0
