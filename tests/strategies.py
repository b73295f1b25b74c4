"""Hypothesis strategies, in one place so that every test module reuses the same ones."""

from __future__ import annotations

import signal

from hypothesis import strategies as st

#: Signals that kill a process by default and that a shell can send to itself.
FATAL_SIGNALS = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGABRT,
    signal.SIGKILL,
    signal.SIGUSR1,
    signal.SIGSEGV,
    signal.SIGUSR2,
    signal.SIGPIPE,
    signal.SIGALRM,
    signal.SIGTERM,
)

pids = st.integers(min_value=1, max_value=4_194_304)
exit_codes = st.integers(min_value=0, max_value=255)
signal_numbers = st.integers(min_value=1, max_value=126)
fatal_signals = st.sampled_from(FATAL_SIGNALS)

#: A raw waitpid status word for an exit: the code in the second byte.
exited_statuses = exit_codes.map(lambda code: code << 8)
#: A raw status word for a death by signal, with or without the core-dump bit.
signaled_statuses = st.builds(
    lambda number, core: number | (0x80 if core else 0), signal_numbers, st.booleans()
)
wait_statuses = st.one_of(exited_statuses, signaled_statuses)

#: How one child ends: ("exit", code) or ("signal", number), after a lifetime in seconds.
endings = st.one_of(
    st.tuples(st.just("exit"), exit_codes),
    st.tuples(st.just("signal"), fatal_signals.map(int)),
)
lifetimes = st.sampled_from([0.0, 0.001, 0.005, 0.01, 0.02, 0.035, 0.05])
#: Whether the owner also calls popen.wait() itself, racing the reaping thread.
owner_waits = st.booleans()
#: A burst of children, drawn whole before any starts (a lazy draw could end the example, and
#: stop the children, halfway through).
children_plans = st.lists(st.tuples(endings, lifetimes, owner_waits), min_size=1, max_size=100)

#: One word of a ``zombiereaper run`` command line before the program: usual options, their
#: values, and words that only argparse reads (abbreviations, clusters, bad values, help).
run_option_words = st.lists(
    st.sampled_from(
        [
            ["-g"],
            ["--group"],
            ["-s"],
            ["--subreaper"],
            ["-v"],
            ["-vv"],
            ["--verbose"],
            ["-r", "TERM:INT"],
            ["-r", "USR1:0"],
            ["--rewrite", "HUP:15"],
            ["--rewrite=QUIT:TERM"],
            ["-e", "143"],
            ["--remap-exit", "3"],
            ["--remap-exit=0"],
            ["--drain", "2.5"],
            ["--drain=0"],
            ["--drain", "-1"],
            ["-r", "BOGUS:INT"],
            ["-e", "256"],
            ["--grou"],
            ["-gs"],
            ["-rTERM:INT"],
            ["-r=TERM:INT"],
            ["--drain"],
            ["-x"],
            ["--help"],
        ]
    ),
    max_size=5,
).map(lambda words: [word for option in words for word in option])

#: What follows the options: an optional ``--``, then the program and its arguments.
run_programs = st.tuples(
    st.booleans(),
    st.lists(st.sampled_from(["sh", "-c", "--", "-g", "exit 3", "-"]), max_size=4),
).map(lambda parts: (["--"] if parts[0] else []) + parts[1])
