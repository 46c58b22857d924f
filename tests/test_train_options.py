"""The training options' defaults: shown in --help, and the README's options table agrees with
RunConfig (issue 12)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advtui.cli import app
from advtui.cli.train_options import effective_default
from advtui.core.config import RunConfig, build_config

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### The learned optimizer and the choices the paper leaves open"


def _readme_option_rows() -> list[tuple[list[str], list[str]]]:
    """(options, defaults) of each row of the section's options table."""
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, "the README section with the options table is gone"
    section = text.split(SECTION, 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`--"):
            continue
        options = re.findall(r"`(--[a-z0-9-]+)`", cells[0])
        defaults = [d.strip().strip("`") for d in cells[1].split(",")]
        assert len(options) == len(defaults), line
        rows.append((options, defaults))
    return rows


def _field_default(option: str):
    name = option[2:].replace("-", "_")
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    assert name in fields, f"README lists {option}, which is no RunConfig field"
    return fields[name].default


def test_readme_options_table_matches_runconfig_defaults():
    rows = _readme_option_rows()
    listed = [o for options, _ in rows for o in options]
    assert {"--rnn-grad-input", "--rnn-lr", "--rnn-optimizer", "--rnn-delta-scale"} <= set(listed)
    for options, defaults in rows:
        for option, text in zip(options, defaults):
            default = _field_default(option)
            if isinstance(default, bool):
                assert text == ("on" if default else "off"), (option, text, default)
            elif isinstance(default, (int, float)):
                assert float(text) == pytest.approx(default), (option, text, default)
            else:
                assert text == default, (option, text, default)
            # and that is the value an unset option takes (no preset overrides it)
            assert getattr(build_config("rnn-adv"), option[2:].replace("-", "_")) == default


@pytest.mark.parametrize("command", [["run", "--help"], ["queue", "train", "--help"]])
def test_help_shows_the_effective_defaults(command):
    result = CliRunner().invoke(app, command, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = {m.group(1): line for line in result.output.splitlines() if (m := re.search(r"(--[a-z0-9-]+)\s", line))}
    assert "[default: sign]" in lines["--rnn-grad-input"]
    assert "[default: 0.01]" in lines["--rnn-lr"]
    assert "[default: 0.01; 0.1 on cifar10]" in lines["--lr"]
    assert "[default: 0.3; 8/255 on cifar10]" in lines["--eps"]
    assert "[default: 55; 75,90,100 on cifar10]" in lines["--milestones"]
    assert "[default: 10]" in lines["--inner-steps"]
    assert effective_default("rnn_lr") == RunConfig.rnn_lr == build_config("rnn-adv").rnn_lr


def test_unset_options_still_let_the_preset_apply():
    # The help text changed, not the None defaults: a preset's values still fill unset options.
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    config = build_config("trades", "trades-mnist")
    assert (config.inner_steps, config.step_size) == (40, 0.01)
    assert build_config("plain", dataset="cifar10").lr == 0.1
