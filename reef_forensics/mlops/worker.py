"""The worker: fingerprint each queued model version, then screen it against the protected victims.

For a job (a model version), `process`:

1. reads the version; if it is already fingerprinted (tags ``reef.status=done`` and
   ``reef.fingerprint.digest``), it is only screened against the victims it has no
   ``reef.screen`` tag for yet (victims added since: a reconciliation queued it), from its
   published fingerprint; repeated events are harmless;
2. downloads its files, fingerprints them on the deployment's probe set (the manifest naming the
   registered version, `naming.registry_identity`), signs the fingerprint, logs it in the
   service's evidence experiment (``[evidence] experiment``, one run per version,
   `registry_evidence.evidence_run`) as ``fingerprint/`` and tags the version
   (``reef.model.digest``, ``reef.fingerprint.digest``, ``reef.probes.digest``,
   ``reef.fingerprint.uri``, ``reef.evidence.run``);
3. reads the version's roles again (a role set while it was fingerprinted counts) and, unless it
   is a victim or a reference (tag ``reef.role``), screens it against every victim (versions
   tagged ``reef.role=victim`` and the configured ones) with the references (versions tagged
   ``reef.role=reference`` and the configured ones): a tag ``reef.screen.VICTIM.vVERSION`` with
   the verdict, score and p-value, the signed findings under ``screening/VICTIM.vN/`` of the
   evidence run, and for `derived` or `inconclusive` the signed report beside them;
4. tags ``reef.status=done``.

A failure tags ``reef.status=failed`` with ``reef.status.reason`` and goes back to the queue with
backoff (a model whose files cannot be loaded fails at once, with no retry: it cannot get
better). A version that is not a transformers model (a pyfunc, a sklearn model) is
``reef.status=skipped`` with the reason. Reasons never quote the job's scratch paths. A victim or
reference not fingerprinted yet is queued, and the job deferred (tag ``reef.status=waiting``; the
attempt does not count). The loop reconciles the registry with the queue when it starts and
every ``[worker] reconcile_seconds`` (`reef_forensics.mlops.reconcile`).

Steps 2 to 4 are `Screener` methods, which the Ray fleet (`reef_forensics.mlops.fleet`) takes too:
both write the same tags and artifacts.

Each job is logged (`observability.log_event`: ``job.start``, then ``job.finish`` or
``job.failure`` with its status and duration) and counted in the worker's `Metrics`. A stop
signal (`worker_ops.stop_signals` -> `Worker.request_stop`) mid-job hands the job back to the
queue and ends the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reef_forensics.errors import (
    first_line,
    is_native_panic,
)
from reef_forensics.mlops.jobqueue import Job, JobQueue
from reef_forensics.mlops.observability import Metrics, log_event
from reef_forensics.mlops.registry import (
    TAG_STATUS,
    fingerprint_of,
    parse_models_uri,
    versions_with_role,
)
from reef_forensics.mlops.registry_evidence import (
    evidence_base,
)
from reef_forensics.mlops.screener import (
    REGISTRY_DOWN,
    JobDeferred,
    JobFailed,
    JobSkipped,
    Screener,
    already_done,
    is_suspect,
    registry_unreachable,
    screened,
)
from reef_forensics.mlops.worker_ops import WorkerStopping, lease_kept, scrub


@dataclass
class Worker(Screener):
    queue: JobQueue
    name: str = f"{socket.gethostname()}:{os.getpid()}"
    metrics: Metrics | None = None
    stop_requested: bool = field(default=False, init=False)
    _in_job: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metrics is None:
            self.metrics = Metrics(self.queue.counts)

    # --- the loop -----------------------------------------------------------------------------

    def run(
        self,
        *,
        until_empty: bool = False,
        poll_seconds: float = 2.0,
        stop: Callable[[], bool] = lambda: False,
    ) -> int:
        """Take jobs until ``stop()`` or `request_stop` (or, with ``until_empty``, until no job
        is pending or running: retries and deferrals included); returns the number of jobs
        handled."""
        handled = 0
        log_event("worker.start", worker=self.name, queue=str(self.queue.path))
        next_pass = time.monotonic()  # a reconciliation first, then every reconcile_seconds
        while not (stop() or self.stop_requested):
            if self.config.reconcile_seconds > 0 and time.monotonic() >= next_pass:
                self.reconcile()
                next_pass = time.monotonic() + self.config.reconcile_seconds
            job = self.queue.claim(self.name)
            if job is None:
                counts = self.queue.counts()
                if until_empty and counts["pending"] == 0 and counts["running"] == 0:
                    break
                time.sleep(poll_seconds)  # jobs waiting for a retry, a deferral or a lease
                continue
            self.handle(job)
            handled += 1
        log_event("worker.stop", worker=self.name, handled=handled)
        return handled

    def request_stop(self) -> None:
        """What a stop signal calls: the loop ends; a job in progress is handed back to the
        queue at once (`WorkerStopping` is raised in it)."""
        self.stop_requested = True
        if self._in_job:
            self._in_job = False  # raised once: the hand-back itself is not interrupted
            raise WorkerStopping("the worker is stopping")

    def reconcile(self) -> None:
        """One reconciliation pass (`reef_forensics.mlops.reconcile`), best effort: a registry that
        cannot be read now is read at the next pass."""
        from reef_forensics.mlops.reconcile import reconcile

        try:
            found = reconcile(self.config, self.queue, self.client)
        except Exception as exc:
            log_event("reconcile.failure", level=logging.WARNING, reason=first_line(exc))
            return
        for uri in found.unqueued:
            log_event("reconcile.queued", level=logging.WARNING, model=uri, why="never queued")
        for uri, victims in found.unscreened.items():
            log_event("reconcile.queued", model=uri, why="unscreened", victims=sorted(victims))

    def handle(self, job: Job) -> str:
        """Process one claimed job, log and count its outcome; returns its new state."""
        started = time.monotonic()
        fields: dict[str, Any] = {"job": job.id, "model": job.name, "version": job.version}
        log_event("job.start", **fields, attempt=job.attempts, worker=self.name)
        outcome, state, reason = self._outcome(job)
        seconds = round(time.monotonic() - started, 3)
        if self.metrics is not None:
            self.metrics.job(outcome, seconds)
        fields.update(status=state, outcome=outcome, duration_s=seconds)
        if reason:
            fields["reason"] = reason
        failed = outcome in ("failed", "retry")
        log_event(
            "job.failure" if failed else "job.finish",
            level=logging.WARNING if failed or reason == REGISTRY_DOWN else logging.INFO,
            **fields,
        )
        return state

    def _outcome(self, job: Job) -> tuple[str, str, str | None]:
        """(outcome, new queue state, reason): done, skipped, waiting, released (the worker
        stopped), retry (failed, queued again) or failed (for good)."""
        try:
            with self._lease_kept(job):
                self._in_job = True
                try:
                    self.process(job)
                finally:
                    self._in_job = False
        except WorkerStopping:
            reason = "the worker stopped mid-job; queued again"
            self.queue.release(job, self.name, reason)
            self.tag_status(job, "pending", reason)
            return "released", "pending", reason
        except JobDeferred as exc:
            self.queue.defer(job, max(1.0, self.config.backoff_seconds), str(exc))
            self.tag_status(job, "waiting", str(exc))
            return "waiting", "pending", str(exc)
        except JobSkipped as exc:
            reason = scrub(str(exc), self.config.work_dir)
            self.queue.skip(job, reason)
            self.tag_status(job, "skipped", reason)
            return "skipped", "skipped", reason
        except JobFailed as exc:
            return self._failed(job, str(exc), retry=exc.retry)
        except Exception as exc:  # anything unforeseen: reported, retried, never fatal to the loop
            if registry_unreachable(exc):  # an outage is not the job's fault: no attempt spent
                self.queue.defer(job, max(1.0, self.config.backoff_seconds), REGISTRY_DOWN)
                return "waiting", "pending", REGISTRY_DOWN
            return self._failed(job, f"{type(exc).__name__}: {first_line(exc)}", retry=True)
        except BaseException as exc:
            if not is_native_panic(exc):  # KeyboardInterrupt, SystemExit: the worker stops
                raise
            # a Rust panic (a BaseException) where no model is loaded or tokenized (there it is
            # a ModelLoadError by now): like anything unforeseen, never fatal to the loop
            return self._failed(job, f"a panic in native code: {first_line(exc)}", retry=True)
        self.queue.complete(job)
        return "done", "done", None

    def _failed(self, job: Job, reason: str, *, retry: bool) -> tuple[str, str, str]:
        reason = scrub(reason, self.config.work_dir)
        state = self.queue.fail(job, reason, retry=retry)
        self._tag_failed(job, reason, state)
        return ("failed" if state == "failed" else "retry"), state, reason

    def _lease_kept(self, job: Job) -> contextlib.AbstractContextManager[None]:
        return lease_kept(self.queue, job, self.name)

    def _tag_failed(self, job: Job, reason: str, state: str) -> None:
        suffix = "" if state == "failed" else " (will be retried)"
        self.tag_status(job, "failed", reason + suffix)

    # --- one job ----------------------------------------------------------------------------------

    def process(self, job: Job) -> None:
        try:
            version = self.client.get_model_version(job.name, job.version)
        except Exception as exc:
            if registry_unreachable(exc):
                raise
            raise JobFailed(
                f"cannot read the model version: {first_line(exc)}", retry=True
            ) from None
        self.config.work_dir.mkdir(parents=True, exist_ok=True)
        if already_done(version):  # a repeated event, or a reconciliation: victims added since
            if is_suspect(version):
                with tempfile.TemporaryDirectory(prefix="reef-job-", dir=self.config.work_dir) as d:
                    self._screen_again(job, version, Path(d))
            return
        self.tag(job.name, job.version, TAG_STATUS, "running")
        with tempfile.TemporaryDirectory(prefix="reef-job-", dir=self.config.work_dir) as scratch:
            work = Path(scratch)
            published = self.publish(job, version, self.fingerprint_version(job, work))
            # the roles as they are now, not as they were when the job started: a version
            # tagged victim or reference right after its registration is not screened
            version = self.client.get_model_version(job.name, job.version)
            if is_suspect(version):
                where = (published.run_id, published.folder)
                self._screen(job, version, published.fingerprint, where, work)
        self.finish(job)

    def _screen_again(self, job: Job, version: Any, work: Path) -> None:
        """A done version: screen it against the victims it has no ``reef.screen`` tag for,
        from its published fingerprint (nothing to do when there are none)."""
        from reef_forensics.formats.fingerprint import read_fingerprint

        base = evidence_base(version)
        path = fingerprint_of(version, work / "suspect", self.client)
        if base is None or path is None:
            return
        self._screen(job, version, read_fingerprint(path), base, work)

    # --- screening ----------------------------------------------------------------------------------

    def _fingerprints(
        self, uris: list[str], tagged: list[Any], work: Path, role: str, job: Job
    ) -> list[tuple[str, Any]]:
        """(label, fingerprint) for each configured entry and each tagged version, the job's own
        version excluded; a version not yet fingerprinted is queued and the job retried."""
        from reef_forensics.formats.fingerprint import read_fingerprint

        found: list[tuple[str, Any]] = []
        versions = {(v.name, str(v.version)): v for v in tagged}
        for uri in uris:
            if uri.startswith("models:/"):
                name, number = parse_models_uri(uri)
                versions.setdefault((name, number), self.client.get_model_version(name, number))
            else:
                found.append((uri, read_fingerprint(uri)))
        waiting = []
        for (name, number), version in sorted(versions.items()):
            if (name, number) == (job.name, str(job.version)):
                continue
            path = fingerprint_of(version, work / role / f"{name}-v{number}", self.client)
            if path is None:
                self.queue.enqueue(name, number, version.source)
                waiting.append(f"{name}/{number}")
                continue
            found.append((f"models:/{name}/{number}", read_fingerprint(path)))
        if waiting:
            raise JobDeferred(
                f"waiting for the {role}(s) {', '.join(waiting)} to be fingerprinted (queued)"
            )
        return found

    def _screen(
        self, job: Job, version: Any, suspect: Any, where: tuple[str, str], work: Path
    ) -> None:
        """Screen against every victim the version has no ``reef.screen`` tag for yet;
        ``where``: the evidence run and the folder in it."""
        victims = self._fingerprints(
            list(self.config.victims),
            versions_with_role(self.client, "victim"),
            work,
            "victim",
            job,
        )
        victims = [(label, v) for label, v in victims if not screened(version, label)]
        if not victims:
            return
        references = self._fingerprints(
            list(self.config.references),
            versions_with_role(self.client, "reference"),
            work,
            "reference",
            job,
        )
        run_id, folder = where
        base = f"{folder}/" if folder else ""
        for label, victim in victims:
            panel = [r for _, r in references]
            self.screen_pair(job, run_id, label, victim, suspect, panel, work, base)
