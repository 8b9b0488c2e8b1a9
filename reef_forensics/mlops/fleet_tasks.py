"""The fleet's Ray tasks: each fingerprints, downloads or screens one version, as the worker does, and hands back its record and files."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reef_forensics.errors import ReefError, first_line
from reef_forensics.formats.json_records import present
from reef_forensics.mlops.config import Config
from reef_forensics.mlops.jobqueue import Job
from reef_forensics.mlops.registry import (
    TAG_STATUS,
    client,
    fingerprint_of,
    parse_models_uri,
)
from reef_forensics.mlops.registry_evidence import evidence_base
from reef_forensics.mlops.screener import (
    JobFailed,
    JobSkipped,
    Screener,
)

Files = dict[str, bytes]


@dataclass(frozen=True)
class Screening:
    """One (suspect, victim) comparison's outcome."""

    suspect: str
    victim: str
    verdict: str
    score: float | None
    p_value: float | None
    references: int
    log10_p_value: float | None = None  # every test, corrected (findings version 3)

    def as_json(self) -> dict[str, Any]:
        return {
            "suspect": self.suspect,
            "victim": self.victim,
            "verdict": self.verdict,
            "score": self.score,
            "p_value": self.p_value,
            "log10_p_value": self.log10_p_value,
            "references": self.references,
        }


def _job(label: str) -> Job:
    name, number = parse_models_uri(label)
    return Job(id=0, name=name, version=number, source=None, state="running", attempts=1)


def _pack(folder: Path) -> Files:
    """Every file of a fingerprint directory (the signature included), by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _unpack(files: Files, dest: Path) -> Any:
    """Lay the files out again in ``dest`` and read them as a fingerprint (which checks every
    digest: what came through the object store is what was made)."""
    from reef_forensics.formats.fingerprint import read_fingerprint

    for relative, data in files.items():
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return read_fingerprint(dest)


def _read_local(path: Path) -> Files:
    """A configured fingerprint directory (a victim or reference on the driver's disk), checked
    now: a bad one fails the run before it starts, with its reason."""
    from reef_forensics.formats.fingerprint import read_fingerprint

    read_fingerprint(path)
    return _pack(path)


def _task_threads() -> None:
    """As many torch threads as the task has CPUs (1 by default), so that tasks side by side
    do not fight over cores."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))


def _fingerprint_task(
    config: Config, label: str, finish: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Phase 1: fingerprint one version and publish it, as the worker does; ``finish`` tags it
    done (victims and references: they are not screened). Returns the record and the files."""
    started = time.perf_counter()
    _task_threads()
    job = _job(label)
    record: dict[str, Any] = {"label": label, "kind": "fingerprint", "extracted": False}
    record["pid"] = os.getpid()  # which Ray worker process extracted it
    record["extract_seconds"] = 0.0
    files: Files = {}
    try:
        screener = Screener(config)
        version = screener.client.get_model_version(job.name, job.version)
        screener.tag(job.name, job.version, TAG_STATUS, "running")
        config.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="reef-fleet-", dir=config.work_dir) as scratch:
            extracting = time.perf_counter()
            made = screener.fingerprint_version(job, Path(scratch))
            record["extract_seconds"] = time.perf_counter() - extracting
            record["extracted"] = True
            published = screener.publish(job, version, made)
            record["run_id"] = published.run_id
            record["base"] = f"{published.folder}/" if published.folder else ""
            files = _pack(published.fingerprint.path)
        if finish:
            screener.finish(job)
        record["error"] = None
    except JobSkipped as exc:  # not a transformers model: skipped, never retried
        record["error"] = str(exc)
        record["not_a_model"] = True
    except JobFailed as exc:
        record["error"] = str(exc)
    except Exception as exc:  # reported to the driver, which tags the version failed
        record["error"] = f"{type(exc).__name__}: {first_line(exc)}"
    record["seconds"] = time.perf_counter() - started
    return record, {"label": label, "error": record["error"], "files": files}


def _download_task(config: Config, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Phase 1, for a victim or reference fingerprinted before: its published fingerprint."""
    job = _job(label)
    error = None
    files: Files = {}
    where: tuple[str, str] | None = None
    try:
        registry = client(config.tracking_uri)  # no key or probes needed to download
        version = registry.get_model_version(job.name, job.version)
        where = evidence_base(version)  # a done suspect's screenings go beside its fingerprint
        with tempfile.TemporaryDirectory(prefix="reef-fleet-") as scratch:
            path = fingerprint_of(version, Path(scratch), registry)
            if path is None:
                raise ReefError("it has no published fingerprint")
            files = _pack(path)
    except Exception as exc:
        error = f"cannot download its fingerprint: {first_line(exc)}"
    run = {"run_id": where[0], "base": f"{where[1]}/" if where[1] else ""} if where else {}
    return {"label": label, "kind": "download", "error": error, **run}, {
        "label": label,
        "error": error,
        "files": files,
    }


def _screen_task(
    config: Config,
    suspect_record: dict[str, Any],
    victim_label: str,
    suspect: dict[str, Any],
    victim: dict[str, Any],
    *references: dict[str, Any],
) -> dict[str, Any]:
    """Phase 2: one suspect against one victim, with the references, as the worker screens."""
    started = time.perf_counter()
    outcome = _screen(config, suspect_record, victim_label, suspect, victim, references)
    return {**outcome, "seconds": time.perf_counter() - started}


def _screen(
    config: Config,
    suspect_record: dict[str, Any],
    victim_label: str,
    suspect: dict[str, Any],
    victim: dict[str, Any],
    references: tuple[dict[str, Any], ...],
) -> dict[str, Any]:
    _task_threads()
    for needed in (suspect, victim, *references):
        if needed["error"] is not None:
            return {"error": f"{needed['label']}: {needed['error']}"}
    try:
        screener = Screener(config)
        config.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="reef-fleet-", dir=config.work_dir) as scratch:
            work = Path(scratch)
            panel = [_unpack(r["files"], work / f"reference-{i}") for i, r in enumerate(references)]
            record = screener.screen_pair(
                _job(suspect_record["label"]),
                suspect_record["run_id"],
                victim_label,
                _unpack(victim["files"], work / "victim"),
                _unpack(suspect["files"], work / "suspect"),
                panel,
                work,
                suspect_record.get("base", ""),
            )
    except Exception as exc:
        return {"error": f"screening against {victim_label}: {first_line(exc)}"}
    return {
        "error": None,
        "verdict": record.verdict,
        "score": record.score,
        "p_value": record.p_value,
        "log10_p_value": present(record.log10_p_value),
        "references": record.panel_size,
    }
