"""The secret-leak scan: every log and captured output the test suite produces is searched for
the test passphrases and for private key material (conftest.py runs it when the session ends).

Passphrases are found by convention: module-level ``PASS``, ``PASSPHRASE`` or ``*_PASSPHRASE``
constants of the test modules, at least 8 characters long (shorter ones would match by chance).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

KEY_MARKERS = (
    "PRIVATE KEY-----",  # PEM: "-----BEGIN [ENCRYPTED |EC ]PRIVATE KEY-----"
)
LOG_SUFFIXES = (".log", ".out", ".err")
MIN_LENGTH = 8


def known_passphrases() -> set[str]:
    """The distinctive passphrases that the loaded test modules use."""
    found: set[str] = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("tests."):
            continue
        for attribute, value in vars(module).items():
            if attribute in ("PASS", "PASSPHRASE") or attribute.endswith("_PASSPHRASE"):
                text = value.decode() if isinstance(value, bytes) else value
                if isinstance(text, str) and len(text) >= MIN_LENGTH:
                    found.add(text)
    return found


def log_files(root: Path) -> list[Path]:
    """Every log file under ``root`` (server logs, worker logs, anything named *.log)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in LOG_SUFFIXES)


def find_leaks(texts: Iterable[tuple[str, str]], secrets: Iterable[str]) -> list[str]:
    """``where: what`` for each (where, text) that holds a secret or key material."""
    secrets = sorted(set(secrets))
    leaks = []
    for where, text in texts:
        for secret in secrets:
            if secret in text:
                leaks.append(f"{where}: a test passphrase ({len(secret)} characters)")
        for marker in KEY_MARKERS:
            if marker in text:
                leaks.append(f"{where}: private key material")
    return leaks
