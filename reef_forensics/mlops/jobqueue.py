"""A durable job queue in SQLite (WAL mode): one job per model version, at-least-once delivery.

- `enqueue` is idempotent: a version already queued (by the registry store, a webhook, or both,
  any number of times) stays one job. Returns whether a new job was made.
- `claim` hands a worker the oldest job that is due, under a lease, which the worker `renew`s
  while it works (a job may take longer than one lease). A worker that dies mid-job stops
  renewing: when its lease runs out, the job is due again (at-least-once), unless its attempts
  are spent: a job that kept killing its workers is marked `failed`.
- `complete` ends a job; `fail` puts it back with exponential backoff, or marks it `failed`
  once its attempts are spent; `defer` puts it back without counting the attempt (it waits for
  another job); `skip` ends a job that has nothing to do (not a transformers model); `release`
  hands a job back untouched (its worker is stopping). Processing must be idempotent (the worker checks the version's
  tags before it fingerprints).
- `get`, `retry` and `cancel` are the operator's: `reef-forensics queue` (queue_admin.py).
- `seen_delivery` records a webhook delivery id and says whether it was seen before (replays).

Every operation is one short transaction (``BEGIN IMMEDIATE``), so several processes (the
MLflow server's store plugin, a webhook receiver, workers) can share the file.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from reef_forensics.errors import BadInputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    source TEXT,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending, running, done, failed, skipped, cancelled
    attempts INTEGER NOT NULL DEFAULT 0,
    available_at REAL NOT NULL,
    lease_until REAL,
    worker TEXT,
    last_error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT PRIMARY KEY,
    received REAL NOT NULL
);
"""
STATES = ("pending", "running", "done", "failed", "skipped", "cancelled")


@dataclass(frozen=True)
class Job:
    id: int
    name: str
    version: str
    source: str | None
    state: str
    attempts: int
    last_error: str | None = None


class JobQueue:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lease_seconds: float = 600.0,
        max_attempts: int = 5,
        backoff_seconds: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:  # not SQLite, damaged, a directory, unwritable
            raise BadInputError(f"{self.path} cannot be opened as a job queue: {exc}") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def enqueue(self, name: str, version: str | int, source: str | None = None) -> bool:
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO jobs (name, version, source, available_at, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, str(version), source, now, now, now),
            )
            return cursor.rowcount == 1

    def requeue(self, name: str, version: str | int, source: str | None = None) -> bool:
        """Queue the version again: a new job, or a finished one (done or failed) made pending
        with its attempts reset (a reconciliation found work left: a victim it was never
        screened against). A job pending or running is left as it is. True when queued."""
        if self.enqueue(name, version, source):
            return True
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, available_at = ?,"
                " lease_until = NULL, last_error = NULL, updated = ?"
                " WHERE name = ? AND version = ? AND state IN ('done', 'failed')",
                (now, now, name, str(version)),
            )
            return cursor.rowcount == 1

    def claim(self, worker: str, now: float | None = None) -> Job | None:
        """The next due job, leased to ``worker``; None when nothing is due."""
        moment = time.time() if now is None else now
        with self._transaction() as db:
            # a job whose workers died with it `max_attempts` times (killed, out of memory) is
            # a poison pill: it fails instead of taking down every worker that takes it next
            db.execute(
                "UPDATE jobs SET state = 'failed', lease_until = NULL, last_error = ?, updated = ?"
                " WHERE state = 'running' AND lease_until < ? AND attempts >= ?",
                (
                    f"its worker stopped during each of {self.max_attempts} attempts",
                    moment,
                    moment,
                    self.max_attempts,
                ),
            )
            row = db.execute(
                "SELECT id FROM jobs WHERE (state = 'pending' AND available_at <= ?)"
                " OR (state = 'running' AND lease_until < ?) ORDER BY available_at, id LIMIT 1",
                (moment, moment),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?,"
                " worker = ?, updated = ? WHERE id = ?",
                (moment + self.lease_seconds, worker, moment, row[0]),
            )
            return self._job(db, row[0])

    def renew(self, job: Job, worker: str, now: float | None = None) -> bool:
        """Extend the lease of a job that ``worker`` still holds (a heartbeat while it works);
        False when the lease was lost (it ran out and another worker took the job)."""
        moment = time.time() if now is None else now
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_until = ?, updated = ? WHERE id = ? AND state = 'running'"
                " AND worker = ? AND lease_until >= ?",
                (moment + self.lease_seconds, moment, job.id, worker, moment),
            )
            return cursor.rowcount == 1

    def complete(self, job: Job) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'done', lease_until = NULL, last_error = NULL,"
                " updated = ? WHERE id = ?",
                (time.time(), job.id),
            )

    def fail(self, job: Job, error: str, *, retry: bool = True) -> str:
        """Back to the queue after a backoff, or `failed` when attempts are spent (or
        ``retry`` is False: an error that cannot go away). Returns the new state."""
        now = time.time()
        with self._transaction() as db:
            attempts = db.execute("SELECT attempts FROM jobs WHERE id = ?", (job.id,)).fetchone()[0]
            final = not retry or attempts >= self.max_attempts
            delay = self.backoff_seconds * 2 ** max(0, attempts - 1)
            db.execute(
                "UPDATE jobs SET state = ?, available_at = ?, lease_until = NULL,"
                " last_error = ?, updated = ? WHERE id = ?",
                ("failed" if final else "pending", now + delay, error[:2000], now, job.id),
            )
            return "failed" if final else "pending"

    def defer(self, job: Job, seconds: float, reason: str) -> None:
        """Back to the queue in ``seconds``, the attempt not counted: the job waits for another
        (a victim or reference not fingerprinted yet), it did not fail."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'pending', attempts = MAX(0, attempts - 1),"
                " available_at = ?, lease_until = NULL, last_error = ?, updated = ? WHERE id = ?",
                (now + seconds, reason[:2000], now, job.id),
            )

    def skip(self, job: Job, reason: str) -> None:
        """End a job that has nothing to do (a model version that is not a transformers model):
        `skipped`, with the reason, never retried."""
        self._end(job, "skipped", reason)

    def release(self, job: Job, worker: str, reason: str) -> bool:
        """Hand a job that ``worker`` holds back to the queue at once, the attempt not counted
        (the worker is stopping); False when it no longer held it."""
        now = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'pending', attempts = MAX(0, attempts - 1),"
                " available_at = ?, lease_until = NULL, worker = NULL, last_error = ?,"
                " updated = ? WHERE id = ? AND state = 'running' AND worker = ?",
                (now, reason[:2000], now, job.id, worker),
            )
            return cursor.rowcount == 1

    def _end(self, job: Job, state: str, reason: str | None) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL, last_error = ?, updated = ?"
                " WHERE id = ?",
                (state, None if reason is None else reason[:2000], time.time(), job.id),
            )

    def get(self, job_id: int) -> Job | None:
        with self._connect() as db:
            found = db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if found is None else self._job(db, job_id)

    def retry(self, job_id: int) -> Job | None:
        """Due again now with its attempts reset: a job that is `failed`, `skipped`,
        `cancelled` or waiting for a retry (`pending`). None when there is no such job; a
        `running` or `done` job is left as it is (see its state)."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, available_at = ?,"
                " lease_until = NULL, worker = NULL, updated = ?"
                " WHERE id = ? AND state IN ('pending', 'failed', 'skipped', 'cancelled')",
                (now, now, job_id),
            )
            found = db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if found is None else self._job(db, job_id)

    def cancel(self, job_id: int, reason: str = "cancelled by an operator") -> Job | None:
        """A `pending` job is `cancelled` (no worker takes it; `retry` queues it again). None
        when there is no such job; a job in any other state is left as it is."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', lease_until = NULL, last_error = ?,"
                " updated = ? WHERE id = ? AND state = 'pending'",
                (reason, time.time(), job_id),
            )
            found = db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if found is None else self._job(db, job_id)

    def seen_delivery(self, delivery_id: str, *, forget_after: float | None = None) -> bool:
        """Record a webhook delivery id; True when it had been recorded before (a replay).
        Ids older than ``forget_after`` seconds are dropped first: the receiver refuses their
        deliveries by timestamp anyway, so the table stays as small as the replay window."""
        now = time.time()
        with self._transaction() as db:
            if forget_after is not None:
                db.execute("DELETE FROM deliveries WHERE received < ?", (now - forget_after,))
            cursor = db.execute(
                "INSERT OR IGNORE INTO deliveries (delivery_id, received) VALUES (?, ?)",
                (delivery_id, now),
            )
            return cursor.rowcount == 0

    def jobs(self) -> list[Job]:
        with self._connect() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs ORDER BY id")]
            return [self._job(db, i) for i in ids]

    def listing(self, state: str | None = None) -> list[dict[str, object]]:
        """Every job (or those in ``state``) as a dict, oldest first: what `queue list` shows."""
        columns = (
            "id, name, version, state, attempts, worker, last_error, available_at, created, updated"
        )
        where, args = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._connect() as db:
            cursor = db.execute(f"SELECT {columns} FROM jobs {where} ORDER BY id", args)
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            found = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {state: int(found.get(state, 0)) for state in STATES}

    @staticmethod
    def _job(db: sqlite3.Connection, job_id: int) -> Job:
        row = db.execute(
            "SELECT id, name, version, source, state, attempts, last_error FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        return Job(*row)
