"""Every ```python block of docs/python.md is a test module a user could copy: each runs here
with pytester, as its own pytest run, and every test in it must pass."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "python.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[tuple[int, str]]:
    """(line of the opening fence, code) of each example."""
    text = DOC.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_the_doc_has_python_examples():
    assert len(examples()) >= 5


@pytest.mark.parametrize(
    ("line", "code"), [pytest.param(n, c, id=f"python.md:{n}") for n, c in examples()]
)
def test_each_python_example_in_the_doc_passes(pytester, fuse, line, code):
    pytester.makepyfile(**{f"test_python_md_line_{line}": code})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1, f"docs/python.md:{line}: no test passed"
    assert set(outcomes) <= {"passed"}, f"docs/python.md:{line}: {outcomes}"
