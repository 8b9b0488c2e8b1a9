"""The README's CLI reference stays in step with the CLI itself."""

from __future__ import annotations

import argparse
from pathlib import Path

from reef_forensics.cli import build_parser

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_command_and_option_of_the_cli_is_documented_in_the_readme() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert subparsers.choices
    for name, command in subparsers.choices.items():
        assert f"reef-forensics {name}" in README, name
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"{option}" in README, f"{name} {option}"
