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
