"""What a model is called, for the people who read findings and reports.

A fingerprint's manifest names its model (``model.name``: the folder or GGUF file's name, or the
``--name`` given) and, for a version of an MLflow registry, the version itself
(``model.registry``: ``name``, ``version`` and ``uri`` = ``models:/NAME/VERSION``). The
manifest is signed, and the findings copy both into ``victim``, ``suspect`` and each
reference, so the names a report prints come from signed evidence (and from nothing else: the
report is re-rendered from the findings by `verify`). Records made before ``registry`` existed
read as they did: the name alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.formats.json_records import Absent, encode

_REGISTERED_NAME = re.compile(r"[^/\x00-\x1f]{1,256}")
_VERSION = re.compile(r"[1-9][0-9]{0,9}")


def registry_identity(name: str, version: str | int) -> dict[str, str]:
    """The ``model.registry`` record of the registered version ``name``/``version``."""
    return {"name": name, "version": str(version), "uri": f"models:/{name}/{version}"}


def identity_of(value: str | None) -> dict[str, Any] | None:
    """The ``name`` and ``registry`` to fingerprint ``models:/NAME/VERSION`` under (None for
    anything else: a folder or file is named by itself)."""
    match = re.fullmatch(r"models:/([^/]+)/([0-9]+)", value or "")
    if match is None:
        return None
    return {"name": match[1], "registry": registry_identity(match[1], match[2])}


def registry_problem(value: Any) -> str | None:
    """What is wrong with a manifest's ``model.registry``, or None."""
    if (
        not isinstance(value, dict)
        or set(value) != {"name", "version", "uri"}
        or not all(isinstance(v, str) for v in value.values())
        or not _REGISTERED_NAME.fullmatch(value["name"])
        or not _VERSION.fullmatch(value["version"])
        or value["uri"] != f"models:/{value['name']}/{value['version']}"
    ):
        return "records a registry identity (model.registry) that is not a name, version and URI"
    return None


def label(described: Mapping[str, Any]) -> str:
    """How a model is named to a reader: ``flagship version 3 (models:/flagship/3)`` for a
    registered version, else its name. ``described`` is a findings entry (victim, suspect, a
    reference) or a manifest's ``model``."""
    registry = described.get("registry")
    if isinstance(registry, Mapping):
        return f"{registry['name']} version {registry['version']} ({registry['uri']})"
    return str(described.get("name", ""))


def short_label(described: Mapping[str, Any]) -> str:
    """A chart's name for a model: ``flagship v3`` for a registered version, else its name."""
    registry = described.get("registry")
    if isinstance(registry, Mapping):
        return f"{registry['name']} v{registry['version']}"
    return str(described.get("name", ""))


def argument(described: Mapping[str, Any]) -> str:
    """What names the model on a command line: its ``models:/`` URI, or its name (a folder or
    file, or what ``--name`` said)."""
    registry = described.get("registry")
    if isinstance(registry, Mapping):
        return str(registry["uri"])
    return str(described.get("name", ""))


def fingerprint_folder(described: Mapping[str, Any]) -> str:
    """The folder a reproduction writes the model's fingerprint to: ``flagship-v3`` for a
    registered version, ``NAME.fingerprint`` otherwise."""
    registry = described.get("registry")
    if isinstance(registry, Mapping):
        return _safe(f"{registry['name']}-v{registry['version']}") + "/fingerprint"
    return _safe(str(described.get("name", "model"))) + ".fingerprint"


def probe_label(name: str) -> str:
    """A probe set's spec as a reader can use it: a file's name, not the server's path."""
    if name.startswith("builtin:") or ("/" not in name and "\\" not in name):
        return name
    return re.split(r"[/\\]", name)[-1]


def _safe(text: str) -> str:
    """A shell-safe word: anything but letters, digits and ``._-`` made ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "model"


def reproduction(record: FindingsRecord) -> list[str]:
    """The commands that reproduce a case from its findings: get each model's fingerprint (a
    registered version's published one, or a local model fingerprinted on the case's probe
    set), check, and verify the report with every number recomputed. Long commands are
    continued on the next line with a backslash, as a shell reads them."""
    models = [encode(m) for m in (record.victim, record.suspect, *record.references)]
    probes = probe_label(record.probes.name)
    commands: list[list[str]] = []
    for model in models:
        folder = fingerprint_folder(model)
        if isinstance(model.get("registry"), Mapping):
            out = folder.removesuffix("/fingerprint")
            commands.append(["reef-forensics", "evidence", argument(model), "--out", out])
        else:
            name = _safe(argument(model))
            commands.append(
                ["reef-forensics", "fingerprint", name, "--out", folder, "--probes", probes]
            )
    victim, suspect, *references = models
    check = ["reef-forensics", "check", "--victim", fingerprint_folder(victim)]
    check += ["--suspect", fingerprint_folder(suspect)]
    for reference in references:
        check += ["--reference", fingerprint_folder(reference)]
    check += ["--resamples", str(record.stability_method.resamples)]
    if all(isinstance(row.score, Absent) for row in record.controls.positive):
        check.append("--no-positive-controls")
    commands.append([*check, "--out", "findings"])
    verify = ["reef-forensics", "verify", "report.pdf", "--trust", "CA_CERT", "--evidence"]
    commands.append(verify + [fingerprint_folder(m) for m in models])
    return [_wrap(words) for words in commands]


def _wrap(words: list[str], width: int = 88) -> str:
    """Words on lines of at most ``width`` characters (a longer word alone on its line), each
    line but the last ending in a backslash."""
    lines = [words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > width - 2:
            lines.append("    " + word)
        else:
            lines[-1] += " " + word
    return " \\\n".join(lines)
