"""The ``zombiereaper`` command: ``run`` (a container init), ``zombies`` and ``demo``.

``zombiereaper run`` is a container's PID 1, started with every container: its usual command
lines are read by :func:`parse_run_arguments` without argparse (which, with what it imports,
would cost the init a third of Python's own start-up). Anything that function does not accept
(help, an error, an unusual spelling) goes to the argparse parser, which is the reference:
a test checks that both read every accepted command line alike.
"""

from __future__ import annotations

import os
import sys

from ._version import __version__

# `typing` costs the init as much as starting Python: type checkers treat any name
# TYPE_CHECKING as true, Python never imports what is under it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any, Final

    from ._init import InitOptions

_RUN_EPILOG = """\
Runs PROGRAM as its child like tini or dumb-init: it forwards every signal it can catch
(all but SIGCHLD, SIGKILL and SIGSTOP; TSTP, TTIN and TTOU too) to the program, reaps every
orphan that comes to it, and exits with the program's exit code, or 128+N when a signal N
killed it. 127: PROGRAM not found; 126: PROGRAM cannot be executed.
"""


def _bad_value(message: str) -> Exception:
    import argparse

    return argparse.ArgumentTypeError(message)


def _rewrite(text: str) -> tuple[int, int]:
    from ._init import parse_signal

    source, sep, target = text.partition(":")
    if not sep:
        raise _bad_value(f"{text!r} is not FROM:TO (say, TERM:INT or USR1:0)")
    try:
        return parse_signal(source), parse_signal(target)
    except ValueError as err:
        raise _bad_value(str(err)) from None


def _exit_code(text: str) -> int:
    try:
        code = int(text)
    except ValueError:
        code = -1
    if not 0 <= code <= 255:
        raise _bad_value(f"{text!r} is not an exit code (0 to 255)")
    return code


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise _bad_value(f"{text!r} is not a number of seconds >= 0")
    return value


def _add_rewrite(options: InitOptions, text: str) -> None:
    source, target = _rewrite(text)
    options.rewrite[source] = target


def _add_remapped_exit(options: InitOptions, text: str) -> None:
    options.remap_exit |= {_exit_code(text)}


def _set_drain(options: InitOptions, text: str) -> None:
    options.drain = _seconds(text)


#: ``run``'s options that take a value, by name: how each applies its value.
_RUN_VALUE_OPTIONS: Final[dict[str, Callable[[InitOptions, str], None]]] = {
    "-r": _add_rewrite,
    "--rewrite": _add_rewrite,
    "-e": _add_remapped_exit,
    "--remap-exit": _add_remapped_exit,
    "--drain": _set_drain,
}


def parse_run_arguments(args: Sequence[str]) -> InitOptions | None:
    """Read the usual command lines of ``zombiereaper run`` without argparse.

    Accepts ``-g``, ``-s``, ``-v`` (``-vv`` too), ``-r FROM:TO``, ``-e CODE``, ``--drain
    SECONDS``, their long names (a value after ``=`` too), then ``--`` or the program, then the
    program's arguments (which may look like options).

    Returns:
        What was asked, or None when the command line is anything else (``--help``, a bad
        value, no program, an abbreviation, a cluster of short options...): argparse then reads
        it, and exits with its message where it is wrong.
    """
    from ._init import InitOptions

    options = InitOptions(argv=[])
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "--":
        if not _apply_run_option(rest.pop(0), rest, options):
            return None
    if rest[:1] == ["--"]:
        del rest[0]
    if not rest:
        return None
    options.argv = rest
    return options


def _apply_run_option(word: str, rest: list[str], options: InitOptions) -> bool:
    """Apply the option ``word`` (taking its value off ``rest``); False if it is not usual."""
    if word in ("-g", "--group"):
        options.group = True
    elif word in ("-s", "--subreaper"):
        options.subreaper = True
    elif word == "--verbose":
        options.verbose += 1
    elif len(word) > 1 and word == "-" + "v" * (len(word) - 1):
        options.verbose += len(word) - 1
    else:
        name, sep, value = word.partition("=")
        if name not in _RUN_VALUE_OPTIONS or (sep and not name.startswith("--")):
            return False
        if not sep:
            if not rest or rest[0].startswith("-"):
                return False
            value = rest.pop(0)
        try:
            _RUN_VALUE_OPTIONS[name](options, value)
        except Exception:
            return False
    return True


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``zombiereaper`` command."""
    import argparse

    class SubcommandParser(argparse.ArgumentParser):
        """A subcommand's parser, which rejects the arguments it does not know itself.

        argparse hands a subcommand's unknown arguments back to the top-level parser, which
        then prints its own usage (``zombiereaper [-h] [--version] COMMAND ...``): the user of
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

    parser = argparse.ArgumentParser(
        prog="zombiereaper",
        description="Keep processes free of zombies: a container init, a zombie finder, a demo.",
    )
    parser.add_argument("--version", action="version", version=f"zombiereaper {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=SubcommandParser
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
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["run"]:
        options = parse_run_arguments(arguments[1:])
        if options is not None:
            from ._init import run_init

            return run_init(options)
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.command == "run":
        return _run(parser, args)
    try:
        if args.command == "zombies":
            return _zombies(args)
        from ._demo import run_demo

        return run_demo(sys.stdout)
    except BrokenPipeError:
        # The reader went away (`zombiereaper demo | head -3`): stop quietly with the status
        # of a command that SIGPIPE ended, as a C tool would, not with a traceback.
        _silence_stdout()
        return _SIGPIPE_STATUS


#: 128 + SIGPIPE, the status a shell reports for a command that a closed pipe ended.
_SIGPIPE_STATUS = 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit does not fail (and print) again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no stdout, or not a file
        pass
    finally:
        os.close(devnull)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ._init import run_init

    options = run_options(args)
    if options is None:
        parser.exit(
            2,
            "usage: zombiereaper run [options] -- PROGRAM [ARGS...]\n"
            "zombiereaper run: error: no PROGRAM to run\n",
        )
    return run_init(options)


def run_options(args: argparse.Namespace) -> InitOptions | None:
    """What argparse read from a ``run`` command line; None when it names no program."""
    from ._init import InitOptions

    program = list(args.program)
    if program[:1] == ["--"]:
        program = program[1:]
    if not program:
        return None
    return InitOptions(
        argv=program,
        group=args.group,
        subreaper=args.subreaper,
        rewrite=dict(args.rewrite),
        remap_exit=frozenset(args.remap_exit),
        drain=args.drain,
        verbose=args.verbose,
    )


def _zombies(args: argparse.Namespace) -> int:
    import json
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
