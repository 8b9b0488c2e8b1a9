"""The findings record on disk: `Findings` writes findings.json and its signed bundle into
a folder (under a temporary name, then renamed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reef_forensics.digests import canonical_json
from reef_forensics.errors import BadInputError
from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.formats.fingerprint_writer import replace_directory

if TYPE_CHECKING:
    from reef_forensics.crypto.keys import Signer


FINDINGS_FILE = "findings.json"


def findings_directory(folder: Path) -> bool:
    """True for a directory holding a findings record and at most its signature, nothing else:
    the only kind `--overwrite` may replace."""
    names = {entry.name for entry in folder.iterdir()} if folder.is_dir() else {"(not a directory)"}
    return FINDINGS_FILE in names and names <= {FINDINGS_FILE, "model.sig"}


def check_findings_destination(folder: Path, *, overwrite: bool) -> None:
    """Refuse to write findings over an existing path unless asked, and never over anything but
    findings; callers ask before a long check as well as when writing."""
    if folder.exists() and not overwrite:
        raise BadInputError(f"{folder} already exists (pass --overwrite to replace it)")
    if folder.exists() and not findings_directory(folder):
        raise BadInputError(
            f"{folder} exists and is not a findings directory: refusing to replace it"
        )


@dataclass
class Findings:
    """Everything `check` measured, and the verdict (`record`, typed); `as_json` is what is
    signed."""

    record: FindingsRecord

    def write(
        self, out: str | os.PathLike[str], *, signer: Signer | None = None, overwrite: bool = False
    ) -> Path:
        """Write ``out/findings.json`` (canonical JSON) and, with a signer, ``out/model.sig``;
        built in a staging directory and renamed into place."""
        folder = Path(out)
        check_findings_destination(folder, overwrite=overwrite)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent)
        )
        try:
            staging.chmod(0o755)  # mkdtemp makes it private; findings are meant to be read
            (staging / FINDINGS_FILE).write_bytes(canonical_json(self.record.to_json()))
            if signer is not None:
                from reef_forensics.crypto.bundle import sign_directory

                sign_directory(staging, signer, name=folder.name)
            replace_directory(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder / FINDINGS_FILE

    @property
    def verdict(self) -> str:
        return self.record.verdict

    @property
    def score(self) -> float | None:
        return self.record.score

    def as_json(self) -> dict[str, Any]:
        return self.record.to_json()
