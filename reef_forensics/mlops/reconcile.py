"""Reconciliation: no registration is missed, and no (version, victim) pair is left unscreened.

Events can be lost (a webhook delivered while the receiver was down, a queue that could not be
written), and a victim can be added, or a role set, after the versions it should be screened
against were done. `reconcile` walks the whole registry and queues:

- every version with no ``reef.status`` (never queued) or ``reef.status=not-queued``;
- every version that is done, is a suspect (no ``reef.role``), and lacks the tag
  ``reef.screen.VICTIM.vN`` of some victim (a version tagged ``reef.role=victim``, or a
  configured one): the worker then screens it against the missing victims only, from its
  published fingerprint.

The worker runs it when it starts and every ``[worker] reconcile_seconds``; `reef-forensics
reconcile` runs it once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reef_forensics.mlops.config import Config
from reef_forensics.mlops.jobqueue import JobQueue
from reef_forensics.mlops.registry import TAG_ROLE, TAG_STATUS, client


@dataclass
class Reconciliation:
    """What one pass found and queued (``models:/NAME/N``)."""

    versions: int = 0
    unqueued: list[str] = field(default_factory=list)
    unscreened: dict[str, list[str]] = field(default_factory=dict)  # version -> victims

    def as_json(self) -> dict[str, Any]:
        return {
            "versions": self.versions,
            "unqueued": self.unqueued,
            "unscreened": self.unscreened,
        }


def all_versions(registry: Any) -> list[Any]:
    """Every version in the registry, page by page."""
    found: list[Any] = []
    token = None
    while True:
        page = registry.search_model_versions(max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def reconcile(config: Config, queue: JobQueue, registry: Any = None) -> Reconciliation:
    """Queue every version never queued and every done suspect with a victim missing."""
    from reef_forensics.mlops.screener import already_done, is_suspect, screened

    registry = registry if registry is not None else client(config.tracking_uri)
    versions = all_versions(registry)
    victims = sorted(
        {f"models:/{v.name}/{v.version}" for v in versions if v.tags.get(TAG_ROLE) == "victim"}
        | set(config.victims)
    )
    result = Reconciliation(versions=len(versions))
    for version in versions:
        uri = f"models:/{version.name}/{version.version}"
        status = version.tags.get(TAG_STATUS)
        if status in (None, "not-queued"):
            if queue.requeue(version.name, str(version.version), version.source):
                result.unqueued.append(uri)
            continue
        if not (already_done(version) and is_suspect(version)):
            continue
        missing = [v for v in victims if v != uri and not screened(version, v)]
        if missing and queue.requeue(version.name, str(version.version), version.source):
            result.unscreened[uri] = missing
    return result
