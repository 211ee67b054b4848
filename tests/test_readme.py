"""The README's code runs as written, and its quickstart names real scripts."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_readme_example_runs_and_prints_the_typed_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README has no python example"
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "Confirmation(order_id='ORD-c-1')" in out
    assert "email for ORD-c-1" in out


def test_the_quickstart_is_two_commands_that_exist() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^bash (\S+)", quickstart, re.M)
    assert commands == ["scripts/example.sh", "scripts/test.sh"]
    for command in commands:
        assert (ROOT / command).is_file()


def test_ci_runs_the_readme_test_command() -> None:
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
