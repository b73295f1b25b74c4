"""What the backends may ask of the engine: the interface the engine gives them (one way down).

The backends notice exits; the engine owns the thread, the poller and the settling. A backend
is handed a :class:`Loop` when it is made and calls only this, never the engine itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable

    from .._watch import Watch


class Cancellable(Protocol):
    """A scheduled call that can be called off."""

    def cancel(self) -> None:
        """Keep it from running."""
        ...


class Loop(Protocol):
    """The engine's loop, as the backends see it."""

    @property
    def has_poller(self) -> bool:
        """Whether descriptors can be watched (epoll); without it everything is swept."""
        ...

    def add_reader(self, fd: int, on_ready: Callable[[], object]) -> None:
        """Call ``on_ready`` on the reaping thread whenever ``fd`` is readable."""
        ...

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed or handed over)."""
        ...

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the reaping thread."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:
        """Run ``callback`` on the reaping thread in ``delay`` seconds."""
        ...

    def settle_now(self, watch: Watch, *, look_first: bool = True) -> bool:
        """Settle ``watch`` if it has exited; return whether this call did (failures logged).

        ``look_first``: False to reap without reading the exit first (its descriptor said
        it exited, or reaping costs no more than asking).
        """
        ...

    def sweep_needed(self) -> None:
        """The set of swept children changed: SIGCHLD may have to wake the loop, or not."""
        ...

    def spawning(self) -> contextlib.AbstractContextManager[None]:
        """Hold the all-scope sweep while a helper process of ours is being started."""
        ...
