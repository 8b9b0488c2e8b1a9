"""The README's CLI reference stays in step with the CLI itself."""

from __future__ import annotations

import argparse
from pathlib import Path

from reef_forensics.cli import build_parser

README = (Path(__file__).parent.parent / "README.md").read_text()


def commands(parser: argparse.ArgumentParser, prefix: str = "reef-forensics"):  # type: ignore[no-untyped-def]
    """Every (command line, parser) pair, nested subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from commands(sub, f"{prefix} {name}")


def test_every_command_and_option_of_the_cli_is_documented_in_the_readme() -> None:
    found = list(commands(build_parser()))
    assert len(found) >= 7
    for command_line, parser in found:
        assert command_line in README, command_line
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"{option}" in README, f"{command_line} {option}"
