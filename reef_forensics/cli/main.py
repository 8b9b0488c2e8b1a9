"""The ``reef-forensics`` command line: parses arguments and calls the public Python API.

Exit codes: 0 success, 2 bad input or usage, 1 internal error. Errors are one line on
stderr; set ``REEF_DEBUG=1`` to see the traceback of an internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from reef_forensics._version import __version__
from reef_forensics.cli import casework, fingerprints, service, signatures
from reef_forensics.cli.ops import add_queue_commands
from reef_forensics.cli.options import add_config_option
from reef_forensics.cli.output import PROG, check_json_target
from reef_forensics.cli.registry import add_commands
from reef_forensics.errors import BadInputError, ReefError, first_line, is_native_panic


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        check_json_target(getattr(args, "json", None))
        return handler(args)
    except BadInputError as exc:
        return _fail(str(exc), 2)
    except ReefError as exc:
        return _fail(str(exc), exc.exit_code)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        return _fail(f"cannot access{where}: {exc.strerror or exc}", 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:
        if os.environ.get("REEF_DEBUG"):
            traceback.print_exc()
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (set REEF_DEBUG=1 for a traceback)", 1
        )
    except BaseException as exc:  # a Rust panic is no Exception; models' are ModelLoadErrors
        if not is_native_panic(exc):
            raise
        return _fail(f"internal error: a panic in native code: {first_line(exc)}", 1)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fingerprint language models and measure whether one was derived from another (REEF/CKA).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fingerprints.add_commands(commands)
    casework.add_commands(commands)
    service.add_commands(commands)
    add_queue_commands(commands, add_config_option)
    service.add_config_commands(commands)
    signatures.add_commands(commands)
    add_commands(commands)
    return parser
