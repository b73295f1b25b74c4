"""The public API, pinned: a name joins or leaves ``zombiereaper`` only on purpose."""

from __future__ import annotations

import pytest

import zombiereaper
import zombiereaper.testing

PUBLIC = [
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


def test_all_is_the_pinned_public_api() -> None:
    """__all__ lists exactly the public names, sorted, and each one is there."""
    assert zombiereaper.__all__ == PUBLIC
    assert sorted(zombiereaper.__all__) == zombiereaper.__all__
    for name in PUBLIC:
        assert hasattr(zombiereaper, name), name


def test_public_names_are_the_only_public_attributes() -> None:
    """Nothing public besides __all__ (and __version__) leaks from the private modules."""
    # (pytest's assertion rewriting adds @-names to the plugin's package: not identifiers.)
    public = {n for n in vars(zombiereaper) if not n.startswith("_") and n.isidentifier()}
    # `annotations` is the __future__ feature that every module imports; the public submodules
    # appear once imported.
    assert public - set(PUBLIC) <= {"pytest_plugin", "testing", "annotations"}


def test_public_classes_say_they_are_zombiereaper_s() -> None:
    """Tracebacks and reprs name zombiereaper.X, where users import X from."""
    for name in PUBLIC:
        obj = getattr(zombiereaper, name)
        if isinstance(obj, type):
            assert obj.__module__ == "zombiereaper", name


def test_the_version_is_exported() -> None:
    """zombiereaper.__version__ is the package's version string."""
    assert isinstance(zombiereaper.__version__, str) and zombiereaper.__version__


def test_the_testing_module_holds_the_clocks() -> None:
    """zombiereaper.testing exports ManualClock and the Clock protocol, under its own name."""
    assert zombiereaper.testing.__all__ == ["Cancellable", "Clock", "ManualClock"]
    for name in zombiereaper.testing.__all__:
        assert getattr(zombiereaper.testing, name).__module__ == "zombiereaper.testing", name


def test_manual_clock_from_the_old_place_warns_at_the_caller() -> None:
    """zombiereaper.ManualClock still works, with a DeprecationWarning pointing at the caller."""
    with pytest.warns(DeprecationWarning, match=r"from zombiereaper\.testing import") as caught:
        old = zombiereaper.ManualClock
    assert old is zombiereaper.testing.ManualClock
    assert [w.filename for w in caught] == [__file__]
    with pytest.warns(DeprecationWarning, match="ManualClock moved"):
        from zombiereaper import ManualClock  # noqa: F401
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        zombiereaper.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
