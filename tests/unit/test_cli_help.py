"""`feedgrid ... --help` reads as prose in an 80-column terminal: each command's description is
one paragraph per paragraph of its docstring, refilled to the width (the docstrings are wrapped
at the source's width, which is not the terminal's)."""

from __future__ import annotations

import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from deploy.cli import app

WIDTH = 80
COMMANDS = [[], ["up"], ["migrate"], ["seed"], ["kafka", "start"], ["catalog", "import"]]


def _description(output: str) -> list[list[str]]:
    """The paragraphs between the usage line and the first box, as their lines."""
    body = output.split("Usage:", 1)[1].split("\n", 1)[1].split("╭", 1)[0]
    paragraphs: list[list[str]] = [[]]
    for line in body.splitlines():
        text = line.strip()
        if text:
            paragraphs[-1].append(text)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [paragraph for paragraph in paragraphs if paragraph]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda words: " ".join(words) or "feedgrid")
def test_descriptions_are_refilled_to_the_terminal(command: list[str]) -> None:
    shown = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": str(WIDTH)})
    assert shown.exit_code == 0, shown.output
    paragraphs = _description(shown.output)
    assert paragraphs, shown.output
    for paragraph in paragraphs:
        # Every line but a paragraph's last is filled: no word pushed alone onto a line of
        # its own by a docstring line longer than the terminal.
        for line in paragraph[:-1]:
            assert len(line) >= WIDTH - 25, (line, shown.output)


def test_no_placeholder_is_lost_to_the_markup() -> None:
    # Markdown drops what looks like an HTML tag (<var>): docstrings name the variable instead.
    group = get_command(app)
    texts = [group.help or ""]
    stack = list(getattr(group, "commands", {}).values())
    while stack:
        command = stack.pop()
        texts.append(command.help or "")
        stack.extend(getattr(command, "commands", {}).values())
    assert len(texts) > 10
    assert not [text for text in texts if re.search(r"<[a-z][a-z_-]*>", text)]
