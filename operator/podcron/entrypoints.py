"""Turning ``spec.entryPoint`` into a callable, safely.

A ScheduledJob must not be a way to run ``os:system`` inside the operator's
pod, so only two kinds of reference resolve: a name registered in the
``podcron.jobs`` entry-point group of an installed distribution (the image's
owner put it there on purpose), or ``module:function`` where the module
matches one of the operator's ``allowedModules`` patterns. The allowlist is
checked before anything is imported, because importing a module runs code.

Matching the module named in the reference is not enough: ``myjobs:os.system``
names a module the allowlist permits, and an attribute path out of it. So what
a ``module:attribute.path`` reference resolves to must be a function *defined
in* an allowed module:

* each object the path goes through is an allowed module, or a class (or an
  instance of a class) defined in one: ``myjobs:os.system`` stops at ``os``;
* the target is a Python function (``def``, ``async def`` or ``lambda``), a
  method bound to one, or an instance whose class's ``__call__`` is one;
* and that function's ``__module__`` matches ``allowedModules``. It is the
  module the function was written in, so ``from os import system`` in an
  allowed module does not make ``system`` one of its functions, while a job
  wrapped by a decorator that uses :func:`functools.wraps` keeps its module.

Builtins, classes (calling one runs ``__new__`` and ``__init__`` from wherever
they were inherited), :func:`functools.partial` objects and other callables
whose code lives elsewhere are refused, with reason ``EntryPointNotAllowed``.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import re
import types
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

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
    except ImportError as error:
        raise EntryPointNotFound(reference, f"cannot import: {error}") from error
    for part in attr.split("."):
        # Checked before each step: getattr on a foreign object can run its code
        # (a property, a module's __getattr__), and leads out of the allowlist.
        _check_passage(reference, target, allowed_modules)
        try:
            target = getattr(target, part)
        except AttributeError as error:
            raise EntryPointNotFound(reference, f"cannot import: {error}") from error
    _callable(reference, target)
    function = _function_of(target)
    if function is None:
        raise EntryPointNotAllowed(
            reference,
            f"names {_describe(target)}; only a function (def, async def or lambda) defined "
            "in a module of allowedModules, or an object whose __call__ is one, may run",
        )
    if not module_allowed(function.__module__ or "", allowed_modules):
        raise EntryPointNotAllowed(
            reference,
            f"runs {function.__qualname__}, defined in module {function.__module__!r}, "
            f"which matches none of allowedModules {list(allowed_modules)}",
        )
    return cast(JobTarget, target)


def _check_passage(reference: str, container: object, allowed_modules: Sequence[str]) -> None:
    """Refuse to look up an attribute of anything not defined in an allowed module."""
    if isinstance(container, types.ModuleType):
        kind, module = "module", container.__name__
    elif isinstance(container, type):
        kind, module = f"class {container.__qualname__} of module", container.__module__
    else:
        kind = f"a {type(container).__qualname__} object of module"
        module = type(container).__module__
    if not module_allowed(module, allowed_modules):
        raise EntryPointNotAllowed(
            reference,
            f"goes through {kind} {module!r}, which matches none of allowedModules "
            f"{list(allowed_modules)}",
        )


def _function_of(target: object) -> types.FunctionType | None:
    """The Python function that calling ``target`` runs, or None if there is none."""
    if isinstance(target, types.FunctionType):
        return target
    if isinstance(target, types.MethodType):
        function = target.__func__
        return function if isinstance(function, types.FunctionType) else None
    if isinstance(target, type):
        return None
    call = getattr(type(target), "__call__", None)  # noqa: B004 - the class's, not the object's
    return call if isinstance(call, types.FunctionType) else None


def _describe(target: object) -> str:
    if isinstance(target, type):
        return f"class {target.__qualname__} (calling a class runs __new__ and __init__)"
    if isinstance(target, types.BuiltinFunctionType):
        module = f" of module {target.__module__!r}" if target.__module__ else ""
        return f"built-in {target.__qualname__}{module}"
    kind = type(target)
    return f"a {kind.__module__}.{kind.__qualname__} object"


def _callable(reference: str, target: object) -> JobTarget:
    if not callable(target):
        raise EntryPointNotFound(reference, "does not name a callable")
    return target
