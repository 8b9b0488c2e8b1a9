"""The README's CLI reference stays in step with the CLI itself."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from reef_forensics.cli.main import build_parser

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


def using_it() -> str:
    """The shell block of the README's "Using it" section, exactly as written."""
    section = README[README.index("\n## Using it\n") :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)]


def test_the_using_it_sequence_runs_as_written_and_the_report_verifies(
    tmp_path: Path, zoo: dict[str, Path]
) -> None:
    """Issue 16: the sequence signed the fingerprints with a bare key, and the report's
    `verify --trust CA --evidence` then found them NOT VALID. Run as a user would, in a folder
    where path/to/... are models, it must end VALID, with no warning on the way."""
    models = tmp_path / "path" / "to"
    models.mkdir(parents=True)
    sources = {"victim": "victim", "suspect": "derived", "indep1": "unrelated"}
    sources |= {"indep2": "gpt2", "indep3": "bert"}
    for name, source in sources.items():
        shutil.copytree(zoo[source], models / name)
    binaries = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REEF_", "MLFLOW_"))}
    env |= {"PATH": f"{binaries}:{env.get('PATH', '/usr/bin:/bin')}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", using_it()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().splitlines()[-1] == "VALID: case-42.pdf", done.stdout[-3000:]
    assert "NOT VALID" not in done.stdout and "FAIL" not in done.stdout
    assert "recomputation: every number" in done.stdout
    assert "warning" not in done.stderr, done.stderr
