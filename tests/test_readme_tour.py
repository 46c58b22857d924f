"""The README's set-up and tour name real commands and options, and the tour covers the commands a
new user needs (eval, compare, export, gpus), so following it literally does not stop at a typo."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advtui.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start:end if end != -1 else None]


def _advtui_commands(section: str) -> list[list[str]]:
    """Every `advtui ...` command of the section's bash blocks, comments dropped, split like a shell."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part.split(" # ")[0].split("  #")[0])
                if words and words[0] == "advtui" and len(words) > 1:
                    commands.append(words[1:])
    return commands


def _options_of(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, f"README names `advtui {command}`, which does not exist"
    return result.output


TOUR = _advtui_commands(_section("A short tour")) + _advtui_commands(_section("Set up and run"))


def test_the_tour_covers_what_a_new_user_needs():
    named = {words[0] for words in TOUR}
    assert {"run", "ls", "show", "eval", "compare", "export", "gpus"} <= named


@pytest.mark.parametrize("words", TOUR, ids=[" ".join(w) for w in TOUR])
def test_each_tour_command_names_a_real_command_and_options(words):
    help_text = _options_of(words[0])
    for word in words[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in help_text, f"`advtui {' '.join(words)}`: {word} is no option of {words[0]}"


def test_setup_documents_the_cpu_only_torch_install():
    setup = _section("Set up and run")
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in setup
