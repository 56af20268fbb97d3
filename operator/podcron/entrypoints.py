"""Turning ``spec.entryPoint`` into a callable, safely.

A ScheduledJob must not be a way to run ``os:system`` inside the operator's
pod, so only two kinds of reference resolve: a name registered in the
``podcron.jobs`` entry-point group of an installed distribution (the image's
owner put it there on purpose), or ``module:function`` where the module
matches one of the operator's ``allowedModules`` patterns. The allowlist is
checked before anything is imported, because importing a module runs code.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from podcron.errors import EntryPointNotAllowed, EntryPointNotFound

if TYPE_CHECKING:
    from podcron.context import JobContext

GROUP = "podcron.jobs"

JobTarget = Callable[["JobContext"], Awaitable[Any] | Any]

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_REFERENCE = re.compile(rf"(?P<module>{_DOTTED}):(?P<attr>{_DOTTED})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_registered: dict[str, importlib.metadata.EntryPoint] | None = None


def _registered_entry_points(*, refresh: bool) -> dict[str, importlib.metadata.EntryPoint]:
    # Scanning installed distributions costs milliseconds; a thousand jobs
    # registering at start-up must not pay it a thousand times.
    global _registered
    if _registered is None or refresh:
        _registered = {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}
    return _registered


def module_allowed(module: str, allowed_modules: Sequence[str]) -> bool:
    """Whether ``module`` matches a pattern: ``pkg`` exactly, or ``pkg.*`` for its submodules."""
    return any(
        fnmatch.fnmatchcase(module, pattern) or (pattern.endswith(".*") and module == pattern[:-2])
        for pattern in allowed_modules
    )


def resolve(reference: str, *, allowed_modules: Sequence[str] = ()) -> JobTarget:
    """Return the callable ``reference`` names, or raise why it may not run.

    Raises :class:`EntryPointNotAllowed` for a ``module:function`` outside
    ``allowed_modules`` and :class:`EntryPointNotFound` for anything that does
    not resolve to a callable.
    """
    match = _REFERENCE.fullmatch(reference)
    if match is not None:
        return _resolve_reference(reference, match["module"], match["attr"], allowed_modules)
    if not _NAME.fullmatch(reference):
        raise EntryPointNotFound(
            reference, f"not an entry-point name of group {GROUP} nor a module:function reference"
        )
    entry_point = _registered_entry_points(refresh=False).get(reference)
    if entry_point is None:
        # A package installed after start-up is found on the next miss.
        entry_point = _registered_entry_points(refresh=True).get(reference)
    if entry_point is None:
        raise EntryPointNotFound(reference, f"no entry point of that name in group {GROUP}")
    try:
        target = entry_point.load()
    except Exception as error:
        raise EntryPointNotFound(reference, f"entry point failed to load: {error}") from error
    return _callable(reference, target)


def _resolve_reference(
    reference: str, module_name: str, attr: str, allowed_modules: Sequence[str]
) -> JobTarget:
    if not module_allowed(module_name, allowed_modules):
        raise EntryPointNotAllowed(
            reference,
            f"module {module_name!r} matches none of allowedModules {list(allowed_modules)}",
        )
    try:
        target: object = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise EntryPointNotFound(reference, f"cannot import: {error}") from error
    return _callable(reference, target)


def _callable(reference: str, target: object) -> JobTarget:
    if not callable(target):
        raise EntryPointNotFound(reference, "does not name a callable")
    return target
