"""Entry points: registered names run, module references only when allowed."""

from __future__ import annotations

import json
import sys

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
    assert "spec.entryPoint" in str(caught.value)


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


@pytest.mark.parametrize(
    ("reference", "allowed_modules"),
    [
        ("no-such-job", []),
        ("json:no_such_function", ["json"]),
        ("json:__doc__", ["json"]),
        ("no_such_module_xyz:run", ["no_such_module_xyz"]),
        ("rm -rf /", []),
        ("", []),
    ],
    ids=["unknown-name", "missing-attribute", "not-callable", "missing-module", "garbage", "empty"],
)
def test_unresolvable_references_are_not_found(reference: str, allowed_modules: list[str]) -> None:
    with pytest.raises(EntryPointNotFound) as caught:
        resolve(reference, allowed_modules=allowed_modules)
    assert caught.value.reason == "EntryPointNotFound"
