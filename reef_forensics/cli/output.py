"""What the commands print: one line per warning, and JSON to a file or standard output."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from reef_forensics.errors import BadInputError
from reef_forensics.files import write_atomic

PROG = "reef-forensics"


def check_json_target(destination: str | None) -> None:
    """Refuse a --json FILE that cannot be written before any work is done, rather than after
    the command has made its other outputs."""
    if not destination or destination == "-":
        return
    target = Path(destination)
    if target.is_dir():
        raise BadInputError(f"--json {target} is a directory: give a file name")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise BadInputError(f"--json {target}: {parent} is a file, not a folder")


def emit(destination: str | None, value: dict[str, Any]) -> bool:
    """A command's result as JSON, when ``--json`` asked for it (a file, or ``-`` for standard
    output); whether the command still prints its text, which it does unless the JSON went to
    standard output. Every command's output goes through here::

        if emit(args.json, summary):
            print(...)
    """
    if destination:
        emit_json(destination, value)
    return destination != "-"


def emit_json(destination: str, value: dict[str, Any]) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    if destination == "-":
        sys.stdout.write(text)
    else:
        write_atomic(destination, text.encode("utf-8"))


def fmt(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value:6.4f}"


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)
