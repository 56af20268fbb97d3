"""The README's pytest example for job authors ("Writing and testing a job") passes as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"


def _example() -> dict[str, object]:
    text = README.read_text()
    section = text[text.index("## Writing and testing a job") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the section has no Python example"
    namespace: dict[str, object] = {}
    exec(compile(match[1], f"{README}:Writing and testing a job", "exec"), namespace)
    return namespace


EXAMPLE = _example()
TESTS = sorted(name for name in EXAMPLE if name.startswith("test_"))


def test_the_example_has_tests() -> None:
    assert len(TESTS) >= 3


@pytest.mark.parametrize("name", TESTS)
def test_the_readme_example(name: str) -> None:
    test = EXAMPLE[name]
    assert callable(test)
    test()
