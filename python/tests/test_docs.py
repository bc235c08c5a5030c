"""Every ```python block of docs/python.md is a test module a user could copy: each runs here
with pytester, as its own pytest run, and every test in it must pass. The install commands
run too, into a scratch virtual environment."""

from __future__ import annotations

import os
import re
import subprocess
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


def test_the_install_commands_make_a_venv_with_the_package_its_binary_and_plugin(tmp_path):
    text = DOC.read_text()
    install = text.split("## Install", 1)[1]
    block = re.search(r"^```shell\n(.*?)^```", install, re.MULTILINE | re.DOTALL).group(1)
    assert "pip install ." in block
    # As written, from the repository root, with the environment in a scratch directory.
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("RAWFS", "VIRTUAL_ENV")}
    subprocess.run(
        ["sh", "-e", "-c", block.replace(".venv", str(venv))],
        cwd=DOC.parents[1],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    py = venv / "bin" / "python"
    out = subprocess.run(
        [py, "-c", "import rawfs; print(rawfs.binary())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == str((venv / "bin" / "rawfs").resolve())
    markers = subprocess.run(
        [py, "-m", "pytest", "--markers", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "@pytest.mark.rawfs(" in markers.stdout
