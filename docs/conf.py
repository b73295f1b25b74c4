"""Sphinx configuration for the zombiereaper documentation.

Build with warnings as errors:

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sphinx import addnodes
from sphinx.util import logging

if TYPE_CHECKING:
    from docutils import nodes

ROOT = Path(__file__).resolve().parent.parent
# Document the working tree even when the package is not installed.
sys.path.insert(0, str(ROOT))

import zombiereaper  # noqa: E402

_logger = logging.getLogger(__name__)

project = "zombiereaper"
author = "The zombiereaper developers"
copyright = "The zombiereaper developers"
release = zombiereaper.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# --- MyST --------------------------------------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# --- autodoc and napoleon ----------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "all"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True


# --- cross-references --------------------------------------------------------------------------

# Every reference must resolve, so that a typo in a docstring or a page fails the build.
nitpicky = True

# There is no intersphinx (the docs build offline), so references into the standard library
# cannot resolve; everything else still has to.
_STDLIB_MODULES = (
    "asyncio|collections\\.abc|logging|multiprocessing|os|random|select|signal|subprocess"
    "|resource|threading|types"
)
nitpick_ignore_regex = [(r"py:.*", rf"({_STDLIB_MODULES})\..*")]

# Signatures name type aliases that the package does not export (they live in private modules);
# show what each one stands for instead of a name that leads nowhere.
_TYPE_ALIASES = {
    "Scope": "Literal['owned', 'all']",
    "BackendName": "Literal['pidfd', 'sigchld']",
    "OnExit": "Callable[[ExitStatus], object]",
    "Command": "str | bytes | PathLike | Sequence[str | bytes | PathLike]",
    "RestartPolicy": "Literal['always', 'on-failure', 'never']",
    "ServiceState": (
        "Literal['starting', 'running', 'backing-off', 'stopping', 'stopped', 'failed']"
    ),
    "EventKind": "Literal['started', 'exited', 'restarting', 'gave-up', 'stopped']",
    # Protocols of the private _supervise module: any object with these methods will do.
    "Clock": "Clock (an object with now() and call_later(), such as ManualClock)",
    "Cancellable": "Cancellable (an object with cancel())",
}


def _expand_type_alias(
    app: Any, env: Any, node: nodes.Element, contnode: nodes.Element
) -> nodes.Element | None:
    expansion = _TYPE_ALIASES.get(node.get("reftarget", ""))
    if node.get("refdomain") != "py" or expansion is None:
        return None
    return addnodes.literal_emphasis(expansion, expansion)


def _keep_property_summaries(  # noqa: PLR0917 (Sphinx's event signature)
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    # Napoleon reads the first line of a property's docstring as "type: description" when it
    # holds a colon ("How the child ended, in words: ..."), and shows the words before the colon
    # as the type. Our properties take their type from the annotation and never write one
    # inline, so such a split is always wrong: put the docstring back as it was written.
    if what != "property" or not any(line.startswith(":type:") for line in lines):
        return
    doc = inspect.getdoc(obj)
    if doc:
        lines[:] = doc.splitlines()


# Child is made by Reaper.spawn() and Service by Reaper.supervise(), never by hand: keep the
# private parameters of their constructors out of the reference (api.md also gives them an empty
# signature). A class's "return type" is its __init__'s None, which says nothing: drop it too.
_HIDDEN_CONSTRUCTORS = frozenset(
    {"zombiereaper.Child", "zombiereaper.SpawnedChild", "zombiereaper.Service"}
)


def _tidy_recorded_typehints(  # noqa: PLR0917 (Sphinx's event signature)
    app: Any, what: str, name: str, obj: Any, options: Any, args: str, retann: str
) -> None:
    if what not in {"class", "exception"}:
        return
    document = getattr(app.env, "current_document", None)
    if document is not None:  # Sphinx 8.2+
        recorded = document.autodoc_annotations
    else:
        recorded = app.env.temp_data.get("annotations", {})
    if name in _HIDDEN_CONSTRUCTORS:
        recorded.pop(name, None)
    else:
        recorded.get(name, {}).pop("return", None)


# The reference must cover the whole public API: fail the build when a name in
# zombiereaper.__all__ has no entry in api.md.
def _check_public_api_documented(app: Any, env: Any) -> None:
    documented = env.get_domain("py").objects
    for name in zombiereaper.__all__:
        if f"zombiereaper.{name}" not in documented:
            _logger.warning("zombiereaper.%s is in __all__ but not documented in api.md", name)


# --- the changelog, once the project has one ---------------------------------------------------

HAS_CHANGELOG = (ROOT / "CHANGELOG.md").is_file()
if not HAS_CHANGELOG:
    exclude_patterns.append("changelog.md")


def _add_changelog_to_toc(app: Any, docname: str, source: list[str]) -> None:
    if docname == root_doc and HAS_CHANGELOG:
        source[0] += "\n```{toctree}\n:hidden:\n\nchangelog\n```\n"


# --- HTML --------------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"zombiereaper {release}"
html_static_path: list[str] = []


def setup(app: Any) -> dict[str, Any]:
    app.connect("missing-reference", _expand_type_alias)
    # After napoleon (priority 500) has turned the docstring into fields.
    app.connect("autodoc-process-docstring", _keep_property_summaries, priority=900)
    # After autodoc has recorded the type hints: Sphinx 9 does so before emitting the event,
    # older versions in a handler at the default priority, 500.
    app.connect("autodoc-process-signature", _tidy_recorded_typehints, priority=900)
    app.connect("env-check-consistency", _check_public_api_documented)
    app.connect("source-read", _add_changelog_to_toc)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
