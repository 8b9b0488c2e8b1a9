"""What an operator does to the job queue: list the jobs, retry some, cancel some.

`reef-forensics queue list|retry|cancel` is a thin adapter over these functions. Each takes the
`JobQueue` of a deployment (``Config.open_queue()``); an unknown job id is a `BadInputError`
naming it, raised before any job is changed; a job whose state does not allow the action (retry
a `running` or `done` job, cancel one that is not `pending`) is reported, not changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from reef_forensics.errors import BadInputError
from reef_forensics.mlops.jobqueue import STATES, JobQueue

RETRYABLE = ("pending", "failed", "skipped", "cancelled")


@dataclass(frozen=True)
class Outcome:
    """What one id came to: ``changed`` with the job's new state, or why it was left alone."""

    id: int
    changed: bool
    state: str
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "changed": self.changed, "state": self.state, "detail": self.detail}


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    moment = datetime.fromtimestamp(float(value), tz=timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def list_jobs(queue: JobQueue, state: str | None = None) -> list[dict[str, Any]]:
    """Every job (or those in ``state``), oldest first, times as ISO 8601 UTC."""
    if state is not None and state not in STATES:
        raise BadInputError(f"unknown state {state!r}: one of {', '.join(STATES)}")
    rows = queue.listing(state)
    for row in rows:
        for key in ("available_at", "created", "updated"):
            row[key] = _iso(row[key])
    return rows


def _known(queue: JobQueue, ids: list[int]) -> None:
    missing = [i for i in ids if queue.get(i) is None]
    if missing:
        listed = ", ".join(str(i) for i in missing)
        raise BadInputError(f"no job {listed} in the queue {queue.path} (see `queue list`)")


def retry_jobs(queue: JobQueue, ids: list[int]) -> list[Outcome]:
    """Each job due again now with its attempts reset (see `JobQueue.retry`)."""
    _known(queue, ids)
    outcomes = []
    for job_id in ids:
        before = queue.get(job_id)
        after = queue.retry(job_id)
        assert before is not None and after is not None  # checked above; jobs are never deleted
        if before.state in RETRYABLE:
            outcomes.append(Outcome(job_id, True, after.state, f"was {before.state}"))
        else:
            outcomes.append(Outcome(job_id, False, after.state, _why_not("retried", after.state)))
    return outcomes


def cancel_jobs(queue: JobQueue, ids: list[int]) -> list[Outcome]:
    """Each `pending` job `cancelled` (see `JobQueue.cancel`)."""
    _known(queue, ids)
    outcomes = []
    for job_id in ids:
        before = queue.get(job_id)
        after = queue.cancel(job_id)
        assert before is not None and after is not None
        if before.state == "pending":
            outcomes.append(Outcome(job_id, True, after.state, "was pending"))
        else:
            outcomes.append(Outcome(job_id, False, after.state, _why_not("cancelled", after.state)))
    return outcomes


def _why_not(action: str, state: str) -> str:
    if state == "running":
        return f"not {action}: a worker holds it (stopping that worker with SIGTERM hands it back)"
    if action == "cancelled":
        return f"not cancelled: only a pending job can be, this one is {state}"
    return f"not retried: it is {state}"
