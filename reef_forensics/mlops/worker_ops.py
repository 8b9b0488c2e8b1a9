"""The worker's operational side: stopping on a signal, and reasons fit to publish.

- `stop_signals` routes SIGTERM and SIGINT to a callback for as long as the block runs (the
  worker's `request_stop`): the worker then hands its current job back to the queue (attempt
  not counted, never left `running` until its lease runs out) and its loop ends.
- `lease_kept` renews a job's lease while the worker works on it.
- `scrub` takes the worker's scratch paths out of a reason before it reaches a tag or the queue:
  the scratch folder is deleted when the job ends, so a path into it helps no one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from reef_forensics.errors import first_line
from reef_forensics.mlops.jobqueue import Job, JobQueue

_log = logging.getLogger("reef_forensics.mlops.worker")


class WorkerStopping(BaseException):
    """Raised in the worker's main thread by a stop signal that arrives mid-job. A
    BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way (MLflow's,
    the model loader's) swallows it."""


@contextlib.contextmanager
def stop_signals(callback: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call ``callback`` while the block runs; the previous handlers are put
    back after. Outside the main thread (signals cannot be caught there) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        callback()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def scrub(text: str, work_dir: Path) -> str:
    """``text`` without scratch paths: a path inside a job's scratch folder keeps only its part
    below that folder (``model/download/...``); any other path under the work folder or the
    temporary folder becomes ``<scratch>``."""
    roots = {str(work_dir), str(Path(work_dir).resolve()), tempfile.gettempdir()}
    for root in sorted(roots, key=len, reverse=True):
        text = re.sub(re.escape(root) + r"/reef-job-[^/\s'\"]+/?", "", text)
    for root in sorted(roots, key=len, reverse=True):
        text = re.sub(re.escape(root) + r"(/[^\s'\")]*)?", "<scratch>", text)
    return text


@contextlib.contextmanager
def lease_kept(queue: JobQueue, job: Job, worker: str) -> Iterator[None]:
    """Renew the job's lease every third of its length while the block runs: a long job (a
    large model) is not taken by a second worker, nor counted as a dead worker's."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(queue.lease_seconds / 3):
            try:
                if not queue.renew(job, worker):
                    _log.warning("reef-forensics: %s/%s lease lost", job.name, job.version)
                    return
            except Exception as exc:  # the queue file is busy or gone: try again next beat
                _log.warning("reef-forensics: lease renewal failed: %s", first_line(exc))

    heart = threading.Thread(target=beat, name=f"lease-{job.id}", daemon=True)
    heart.start()
    try:
        yield
    finally:
        done.set()
        heart.join()
