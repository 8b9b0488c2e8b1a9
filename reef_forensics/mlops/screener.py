"""Screening one registered version: fingerprint it, publish the signed fingerprint to its evidence run, and check it against every protected victim (`casework.run_case`), telling the registry in tags. The worker (`worker`) and the fleet (`fleet`) both use a `Screener`."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reef_forensics.errors import (
    BadInputError,
    ModelLoadError,
    ReefError,
    first_line,
)
from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.formats.naming import registry_identity
from reef_forensics.mlops.config import Config
from reef_forensics.mlops.jobqueue import Job
from reef_forensics.mlops.registry import (
    SCREEN_PREFIX,
    TAG_FINGERPRINT_DIGEST,
    TAG_FINGERPRINT_URI,
    TAG_MODEL_DIGEST,
    TAG_PROBES_DIGEST,
    TAG_REASON,
    TAG_ROLE,
    TAG_STATUS,
    NotTransformersModel,
    client,
    materialize,
)
from reef_forensics.mlops.registry_evidence import (
    TAG_EVIDENCE_RUN,
    evidence_run,
    fingerprint_folder,
    published_before,
)
from reef_forensics.mlops.worker_ops import scrub
from reef_forensics.models.loading import ALLOW_PICKLE_HINT

_log = logging.getLogger(__name__)

REGISTRY_DOWN = "the MLflow registry cannot be reached; the job waits for it"


def registry_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the tracking server could not
    be reached at all: refused or reset connections, MLflow's own exhausted retries. A server
    that answers, even with an error, is not unreachable."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError):  # refused, reset, aborted
            return True
        if type(current).__name__ in ("ConnectionError", "NewConnectionError", "MaxRetryError"):
            return True  # requests' and urllib3's, without importing them
        if "Max retries exceeded" in str(current) or "Connection refused" in str(current):
            return True  # MLflow re-raises those as an MlflowException carrying the message
        current = current.__cause__ or current.__context__
    return False


def already_done(version: Any) -> bool:
    """The idempotency rule: a version tagged ``reef.status=done`` with a fingerprint digest has
    been fingerprinted and screened, and is left alone."""
    return version.tags.get(TAG_STATUS) == "done" and bool(version.tags.get(TAG_FINGERPRINT_DIGEST))


def is_suspect(version: Any) -> bool:
    """Whether a version is screened: victims and references (tag ``reef.role``) are not."""
    return version.tags.get(TAG_ROLE) not in ("victim", "reference")


def screened(version: Any, label: str) -> bool:
    """Whether the version carries the screening tag for the victim ``label``."""
    return screen_key(label)[:250] in version.tags


def screen_key(label: str) -> str:
    """The tag ``reef.screen.NAME.vN`` for the victim ``models:/NAME/N`` (other labels: their
    slashes made underscores)."""
    return SCREEN_PREFIX + label.removeprefix("models:/").replace("/", ".v", 1).replace("/", "_")


@dataclass(frozen=True)
class Published:
    """Where `Screener.publish` put a version's fingerprint: the evidence run, the folder in it
    (``""``: the run's top), and the fingerprint the tags now name."""

    run_id: str
    folder: str
    fingerprint: Any


class JobDeferred(Exception):
    """A job that waits for others (a victim or reference not fingerprinted yet)."""


class JobFailed(Exception):
    """A job that did not finish; ``retry`` says whether trying again can help."""

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.retry = retry


class JobSkipped(JobFailed):
    """A version with nothing to fingerprint (not a transformers model): `skipped`, not retried.
    A JobFailed, so that whoever knows only failures (the fleet) still reports it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retry=False)


@dataclass
class Screener:
    """The steps one model version goes through, whoever schedules it: fingerprint it, publish
    the signed fingerprint, screen it against a victim, mark it done. The queue's `Worker` and
    the Ray fleet (`reef_forensics.mlops.fleet`) both take these steps, so both write the same tags and
    artifacts."""

    config: Config

    def __post_init__(self) -> None:
        from reef_forensics.crypto.keys import load_signer, permission_warnings, read_passphrase
        from reef_forensics.formats.probes import load_probes

        # the probes and the key first: a bad configuration fails before MLflow is touched
        self.probes = load_probes(self.config.probes)
        self.signer = (
            load_signer(
                self.config.key,
                passphrase=read_passphrase(self.config.passphrase_file),
                certificate=self.config.cert,
                chain=self.config.chain,
            )
            if self.config.key is not None
            else None
        )
        self.client = client(self.config.tracking_uri)
        for warning in permission_warnings(self.config.key, self.config.passphrase_file):
            _log.warning("reef-forensics: warning: %s", warning)

    def tag(self, name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(name, version, key, value)

    def tag_status(self, job: Job, status: str, reason: str) -> None:
        """``reef.status`` and its reason (no scratch paths), best effort: the queue (or the
        fleet's result) holds the record either way."""
        try:
            self.tag(job.name, job.version, TAG_STATUS, status)
            self.tag(job.name, job.version, TAG_REASON, scrub(reason, self.config.work_dir)[:4000])
        except Exception:  # the registry itself is down
            pass

    def fingerprint_version(self, job: Job, work: Path) -> Any:
        """Download the version and fingerprint it into ``work``; a version that is no
        transformers model is skipped (`JobSkipped`)."""
        from reef_forensics.models.fingerprinting import fingerprint_model

        try:
            folder = materialize(
                f"models:/{job.name}/{job.version}", work / "model", self.config.tracking_uri
            )
            return fingerprint_model(
                folder,
                work / "fingerprint",
                probes=self.probes,
                signer=self.signer,
                name=job.name,  # as its users know it, not the download folder's name
                registry=registry_identity(job.name, job.version),
            )
        except NotTransformersModel as exc:
            raise JobSkipped(first_line(exc)) from None
        except (ModelLoadError, BadInputError) as exc:
            if registry_unreachable(exc):  # the download failed for an outage: handle() defers
                raise
            # the worker has no --allow-pickle, by design
            reason = first_line(exc).replace(
                ALLOW_PICKLE_HINT, " (the worker never loads pickle files)"
            )
            raise JobFailed(f"the model cannot be fingerprinted: {reason}", retry=False) from None
        except ReefError as exc:
            raise JobFailed(first_line(exc), retry=True) from None

    def publish(self, job: Job, version: Any, fingerprint: Any) -> Published:
        """Log the signed fingerprint in the service's evidence experiment (one run per
        version, `registry_evidence.evidence_run`) as ``fingerprint/``, and tag the version
        with its digests, that URI and the run (``reef.evidence.run``).

        A version fingerprinted again (its tags were lost, a reconciliation queued it) keeps
        the fingerprint its run already holds when that one measured the same thing
        (`measurement.same_measurement`): findings and reports that name its digest stay
        reproducible. A different one (another probe set) goes to a folder of its own; nothing
        published is overwritten."""
        from reef_forensics.formats.fingerprint import read_fingerprint
        from reef_forensics.formats.measurement import same_measurement

        run_id = evidence_run(
            self.client, self.config.evidence_experiment, job.name, str(job.version)
        )
        folder = ""
        earlier = published_before(self.client, run_id, fingerprint.path.parent / "published")
        if earlier is not None:
            try:
                kept = read_fingerprint(earlier)
            except ReefError:  # unsound: left where it is for whoever looks into it
                kept = None
            if kept is not None and same_measurement(kept, fingerprint):
                fingerprint = kept
            else:
                folder = fingerprint_folder(fingerprint.digest)
        artifact_path = f"{folder}/fingerprint" if folder else "fingerprint"
        if fingerprint.path != earlier:
            self.client.log_artifacts(run_id, str(fingerprint.path), artifact_path=artifact_path)
        for key, value in (
            (TAG_EVIDENCE_RUN, run_id),
            (TAG_MODEL_DIGEST, fingerprint.model_digest),
            (TAG_FINGERPRINT_DIGEST, fingerprint.digest),
            (TAG_PROBES_DIGEST, fingerprint.probes_digest),
            (TAG_FINGERPRINT_URI, f"runs:/{run_id}/{artifact_path}"),
        ):
            self.tag(job.name, job.version, key, value)
        return Published(run_id, folder, fingerprint)

    def screen_pair(
        self,
        job: Job,
        run_id: str,
        label: str,
        victim: Any,
        suspect: Any,
        references: list[Any],
        work: Path,
        base: str = "",
    ) -> FindingsRecord:
        """Check the suspect (the job's version) against one victim, calibrated on the
        references that are neither of the two models; tag ``reef.screen.VICTIM.vN`` with the
        verdict, log the signed findings under ``screening/VICTIM.vN/`` of the evidence run
        (``run_id``), and for `derived` or `inconclusive` the signed report too (given a
        certificate). Returns the findings."""
        from reef_forensics.analysis.verdict import DecisionRule, p_text, units_p_text
        from reef_forensics.casework import run_case

        panel = [
            r
            for r in references
            if r.model_digest not in (victim.model_digest, suspect.model_digest)
        ]
        key = screen_key(label)
        folder = work / "screening" / key.removeprefix(SCREEN_PREFIX)
        folder.mkdir(parents=True, exist_ok=True)
        certified = self.signer is not None and self.signer.certificate is not None
        case = run_case(  # findings for every verdict (`verify` checks tags), reports for two
            victim,
            suspect,
            panel,
            workdir=folder,
            out=folder / "findings",
            signer=self.signer,
            report=folder / "report.pdf" if certified else None,
            report_verdicts=("derived", "inconclusive"),
            tsa=self.config.timestamping,
            rule=DecisionRule(**self.config.rule),
            skipped_positive_controls="not made during registry screening (run `check` with the victim model for them)",
        )
        record = case.findings.record
        p = p_text(record.p_value, record.log10_p_value).replace(" ", "")
        self.tag(
            job.name,
            job.version,
            key[:250],
            f"{record.verdict} score={record.score:.4f} p={p} "
            f"units={units_p_text(record).replace(' ', '')} refs={record.panel_size}",
        )
        self.client.log_artifacts(
            run_id, str(folder), artifact_path=f"{base}screening/{folder.name}"
        )
        return record

    def finish(self, job: Job) -> None:
        """``reef.status=done``, and no reason left from an earlier attempt."""
        self.tag(job.name, job.version, TAG_STATUS, "done")
        with contextlib.suppress(Exception):
            self.client.delete_model_version_tag(job.name, job.version, TAG_REASON)
