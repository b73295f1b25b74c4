"""zombiereaper: reap child processes without stealing anybody's exit status.

The public names are imported on first use (PEP 562): ``import zombiereaper`` alone costs
almost nothing, so that the ``zombiereaper`` command, the pytest plugin and programs that only
read ``__version__`` do not pay for the reaping core (threads, subprocess, logging...) that
they may never use. A public name asked for imports its own module (and what that module
needs): `from zombiereaper import Reaper` does not import supervision or multiprocessing.
"""

from __future__ import annotations

from ._version import __version__ as __version__

# `typing` alone costs as much as starting Python: type checkers see the imports below (they
# treat any name TYPE_CHECKING as true), Python never runs them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._backends import can_recover_stolen_status as can_recover_stolen_status
    from ._backends import can_use_pidfd as can_use_pidfd
    from ._child import Child as Child
    from ._child import CompletedRun as CompletedRun
    from ._child import SpawnedChild as SpawnedChild
    from ._errors import BackendUnavailableError as BackendUnavailableError
    from ._errors import ChildLeakWarning as ChildLeakWarning
    from ._errors import NotInstalledError as NotInstalledError
    from ._errors import NotOurChildError as NotOurChildError
    from ._errors import ReaperError as ReaperError
    from ._errors import StatusLostError as StatusLostError
    from ._errors import WaitTimeout as WaitTimeout
    from ._reaper import Reaper as Reaper
    from ._registry import Registry as Registry
    from ._status import ExitStatus as ExitStatus
    from ._status import decode_wait_status as decode_wait_status
    from ._supervise import Backoff as Backoff
    from ._supervise import Intensity as Intensity
    from ._supervise import Service as Service
    from ._supervise import ServiceEvent as ServiceEvent
    from ._supervise import ServiceTimeout as ServiceTimeout

    # Deprecated: still there for type checkers while __getattr__ below warns at run time.
    from .testing import ManualClock as ManualClock
del TYPE_CHECKING

__all__ = [
    "BackendUnavailableError",
    "Backoff",
    "Child",
    "ChildLeakWarning",
    "CompletedRun",
    "ExitStatus",
    "Intensity",
    "NotInstalledError",
    "NotOurChildError",
    "Reaper",
    "ReaperError",
    "Registry",
    "Service",
    "ServiceEvent",
    "ServiceTimeout",
    "SpawnedChild",
    "StatusLostError",
    "WaitTimeout",
    "can_recover_stolen_status",
    "can_use_pidfd",
    "decode_wait_status",
]

#: The private module that defines each public name.
_HOMES = {
    "BackendUnavailableError": "_errors",
    "Backoff": "_supervise",
    "Child": "_child",
    "ChildLeakWarning": "_errors",
    "CompletedRun": "_child",
    "ExitStatus": "_status",
    "Intensity": "_supervise",
    "NotInstalledError": "_errors",
    "NotOurChildError": "_errors",
    "Reaper": "_reaper",
    "ReaperError": "_errors",
    "Registry": "_registry",
    "Service": "_supervise",
    "ServiceEvent": "_supervise",
    "ServiceTimeout": "_supervise",
    "SpawnedChild": "_child",
    "StatusLostError": "_errors",
    "WaitTimeout": "_errors",
    "can_recover_stolen_status": "_backends",
    "can_use_pidfd": "_backends",
    "decode_wait_status": "_status",
}


def _publish() -> None:
    """Make every public name whose module is imported an attribute of this package.

    Each class is renamed ``zombiereaper.X``, where users import it from, as tracebacks and
    reprs should show it: also one met before its name was asked for (a Child that
    ``spawn()`` returned). Supervision, imported only by ``Reaper.supervise()``, renames its
    own classes.
    """
    import sys  # noqa: PLC0415 - only on first use, like everything here

    for name, home in _HOMES.items():
        if name in globals():
            continue
        module = sys.modules.get(f"{__name__}.{home}")
        if module is None:
            continue
        value = getattr(module, name)
        if isinstance(value, type):
            value.__module__ = __name__
        globals()[name] = value


def __getattr__(name: str) -> object:
    """Import the public names on first use; give the names that moved, with a warning."""
    if name in _HOMES:
        import importlib  # noqa: PLC0415 - only on first use, like everything here

        importlib.import_module(f"{__name__}.{_HOMES[name]}")
        _publish()
        return globals()[name]
    if name == "ManualClock":
        import warnings  # noqa: PLC0415 - only a deprecated name needs it

        warnings.warn(
            "zombiereaper.ManualClock moved to zombiereaper.testing: use "
            "`from zombiereaper.testing import ManualClock` (the old name will be removed)",
            DeprecationWarning,
            stacklevel=2,
        )
        from .testing import ManualClock  # noqa: PLC0415 - its home, imported on demand

        return ManualClock
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names, the public ones not imported yet included (for completion)."""
    return sorted({*globals(), *__all__})
