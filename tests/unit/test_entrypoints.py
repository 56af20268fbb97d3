"""Entry points: registered names run, module references only when allowed."""

from __future__ import annotations

import importlib
import json
import sys
import types
import uuid
from pathlib import Path

import pytest

from podcron.entrypoints import module_allowed, resolve
from podcron.errors import EntryPointNotAllowed, EntryPointNotFound
from podcron_examples.hello import hello


@pytest.mark.parametrize(
    "reference", ["os:system", "subprocess:run", "builtins:exec", "podcron_examples.hello:hello"]
)
def test_module_references_are_refused_by_default(reference: str) -> None:
    with pytest.raises(EntryPointNotAllowed) as caught:
        resolve(reference)
    assert caught.value.reason == "EntryPointNotAllowed"
    module = reference.split(":")[0]
    assert str(caught.value) == (
        f"spec.entryPoint: module {module!r} matches none of allowedModules [] (got {reference!r})"
    )


def test_refused_before_import() -> None:
    sys.modules.pop("antigravity", None)
    with pytest.raises(EntryPointNotAllowed):
        resolve("antigravity:fly", allowed_modules=["json"])
    assert "antigravity" not in sys.modules


def test_registered_name_resolves() -> None:
    assert resolve("hello") is hello


def test_allowed_module_reference_resolves() -> None:
    assert resolve("json:dumps", allowed_modules=["json"]) is json.dumps
    assert resolve("podcron_examples.hello:hello", allowed_modules=["podcron_examples.*"]) is hello


@pytest.mark.parametrize(
    ("module", "patterns", "allowed"),
    [
        ("myjobs", ["myjobs.*"], True),
        ("myjobs.nightly", ["myjobs.*"], True),
        ("myjobsevil", ["myjobs.*"], False),
        ("myjobs", ["myjobs"], True),
        ("myjobs.nightly", ["myjobs"], False),
        ("os", [], False),
    ],
)
def test_module_patterns(module: str, patterns: list[str], allowed: bool) -> None:
    assert module_allowed(module, patterns) is allowed


# reference, allowedModules, and what the message says is wrong
UNRESOLVABLE: dict[str, tuple[str, list[str], str]] = {
    "unknown-name": ("no-such-job", [], "no entry point of that name in group podcron.jobs"),
    "missing-attribute": (
        "json:no_such_function",
        ["json"],
        "cannot import: module 'json' has no attribute 'no_such_function'",
    ),
    "not-callable": ("json:__doc__", ["json"], "does not name a callable"),
    "missing-module": (
        "no_such_module_xyz:run",
        ["no_such_module_xyz"],
        "cannot import: No module named 'no_such_module_xyz'",
    ),
    "garbage": ("rm -rf /", [], "not an entry-point name of group podcron.jobs nor a module:"),
    "empty": ("", [], "not an entry-point name of group podcron.jobs nor a module:"),
}


@pytest.mark.parametrize("case", list(UNRESOLVABLE))
def test_unresolvable_references_are_not_found(case: str) -> None:
    reference, allowed_modules, why = UNRESOLVABLE[case]
    with pytest.raises(EntryPointNotFound) as caught:
        resolve(reference, allowed_modules=allowed_modules)
    assert caught.value.reason == "EntryPointNotFound"
    message = str(caught.value)
    assert message.startswith(f"spec.entryPoint: {why}"), message
    assert message.endswith(f"(got {reference!r})"), message


@pytest.fixture
def installed_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A distribution installed after the operator looked its entry points up once.

    Returns the suffix of its entry points' names: new to this test, so no look-up made
    before (by another test, in this process or the one it was forked from) has seen them.
    """
    resolve("hello")  # the operator's view of installed distributions is taken now
    suffix = uuid.uuid4().hex
    dist_info = tmp_path / "podcron_late-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: podcron-late\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[podcron.jobs]\n"
        f"late-{suffix} = podcron_examples.hello:hello\n"
        f"broken-{suffix} = no_such_module_xyz:run\n"
        f"not-callable-{suffix} = json:__doc__\n"
        "[console_scripts]\n"
        f"not-a-job-{suffix} = podcron_examples.hello:hello\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return suffix


def test_an_entry_point_installed_after_start_up_is_found(installed_later: str) -> None:
    assert resolve(f"late-{installed_later}") is hello


# entry-point name of the distribution installed later, and what the message says is wrong
UNRUNNABLE_ENTRY_POINTS = {
    "broken": "entry point failed to load: No module named 'no_such_module_xyz'",
    "not-callable": "does not name a callable",
    "not-a-job": "no entry point of that name in group podcron.jobs",  # another group's
}


@pytest.mark.parametrize("name", list(UNRUNNABLE_ENTRY_POINTS))
def test_entry_points_that_cannot_run_are_not_found(installed_later: str, name: str) -> None:
    reference = f"{name}-{installed_later}"
    with pytest.raises(EntryPointNotFound) as caught:
        resolve(reference)
    why = UNRUNNABLE_ENTRY_POINTS[name]
    assert str(caught.value) == f"spec.entryPoint: {why} (got {reference!r})"


# -- what counts as "defined in" an allowed module ----------------------------------------

JOBS = Path(__file__).resolve().parents[1] / "jobs"
ALLOWED = ["podcron_testjobs.allowed"]


@pytest.fixture
def testjobs(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """tests/jobs on the path; returns the allowed module."""
    monkeypatch.syspath_prepend(str(JOBS))
    return importlib.import_module("podcron_testjobs.allowed")


@pytest.mark.parametrize(
    "attr",
    [
        "hello",  # async def
        "plain",  # def
        "short",  # a lambda written in the module
        "calls_outside",  # written there, calling code from elsewhere
        "Jobs.static",  # a static method of a class defined there
        "Jobs.of_class",  # a class method
        "jobs.nightly",  # a method, bound to an instance of such a class
        "callable_job",  # an instance whose __call__ is written there
        "decorated",  # wrapped by a decorator that keeps its identity (functools.wraps)
    ],
)
def test_functions_defined_in_an_allowed_module_resolve(
    testjobs: types.ModuleType, attr: str
) -> None:
    expected: object = testjobs
    for part in attr.split("."):
        expected = getattr(expected, part)
    target = resolve(f"podcron_testjobs.allowed:{attr}", allowed_modules=ALLOWED)
    assert target == expected


# attribute path out of the allowed module: the message names what was refused
PATHS_OUT: dict[str, str] = {
    "os.system": "goes through module 'os'",
    "time.sleep": "goes through module 'time'",
    "sys.exit": "goes through module 'sys'",
    "system": "built-in system of module 'posix'",  # from os import system
    "touch": "runs touch, defined in module 'podcron_testjobs.outside'",  # a re-export
    "outside.touch": "goes through module 'podcron_testjobs.outside'",  # a module not allowed
    "outside.Toucher.__call__": "goes through module 'podcron_testjobs.outside'",
    "Toucher": "names class Toucher",  # a class: calling it runs __new__ and __init__
    "Jobs": "names class Jobs",  # even one defined in the module
    "toucher": "runs Toucher.__call__, defined in module 'podcron_testjobs.outside'",
    "inherited_call": "runs Toucher.__call__, defined in module 'podcron_testjobs.outside'",
    "partial_touch": "names a functools.partial object",
    "partial_plain": "names a functools.partial object",
    "bound_print": "names a builtins.method object",
    "replaced": "runs replacing.<locals>.wrapper, defined in module 'podcron_testjobs.outside'",
    "functools.partial": "goes through module 'functools'",
    "contextlib.suppress": "goes through module 'contextlib'",
    "hello.__globals__": "goes through a function object of module 'builtins'",
    "plain.__call__": "goes through a function object of module 'builtins'",
    "jobs.nightly.__func__": "goes through a method object of module 'builtins'",
    "Jobs.__class__.__call__": "goes through class type of module 'builtins'",
    "Jobs.__init_subclass__": "names built-in Jobs.__init_subclass__;",
    "Jobs.mro": "names built-in Jobs.mro;",
    "jobs.__class__": "names class Jobs",
    "jobs.__init__": "names a builtins.method-wrapper object",
    "__builtins__.exec": "goes through a dict object of module 'builtins'",
    "__loader__.load_module": "goes through a SourceFileLoader object of module",
    "__spec__.loader.load_module": "goes through a ModuleSpec object of module",
}


@pytest.mark.parametrize("attr", list(PATHS_OUT), ids=list(PATHS_OUT))
def test_paths_out_of_an_allowed_module_are_refused(testjobs: types.ModuleType, attr: str) -> None:
    with pytest.raises(EntryPointNotAllowed) as caught:
        resolve(f"podcron_testjobs.allowed:{attr}", allowed_modules=ALLOWED)
    message = str(caught.value)
    assert PATHS_OUT[attr] in message, message
    assert message.startswith("spec.entryPoint: ")
    assert message.endswith(f"(got 'podcron_testjobs.allowed:{attr}')")
    assert "\n" not in message


def test_a_refused_class_is_told_what_may_run(testjobs: types.ModuleType) -> None:
    with pytest.raises(EntryPointNotAllowed) as caught:
        resolve("podcron_testjobs.allowed:Jobs", allowed_modules=ALLOWED)
    assert str(caught.value) == (
        "spec.entryPoint: names class Jobs (calling a class runs __new__ and __init__); only a"
        " function (def, async def or lambda) defined in a module of allowedModules, or an object"
        " whose __call__ is one, may run (got 'podcron_testjobs.allowed:Jobs')"
    )


def test_builtins_are_not_attributes_of_a_module(testjobs: types.ModuleType) -> None:
    with pytest.raises(EntryPointNotFound):
        resolve("podcron_testjobs.allowed:print", allowed_modules=ALLOWED)


def test_a_sibling_module_is_refused_before_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(JOBS))
    monkeypatch.delitem(sys.modules, "podcron_testjobs.outside", raising=False)
    with pytest.raises(EntryPointNotAllowed):
        resolve("podcron_testjobs.outside:touch", allowed_modules=ALLOWED)
    assert "podcron_testjobs.outside" not in sys.modules
