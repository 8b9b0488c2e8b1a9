"""The registry-store plugin: MLflow's SQL registry store, plus one step on `create_model_version`:
queue the new version for fingerprinting and tag it ``reef.status=pending``.

Registered under the entry-point group ``mlflow.model_registry_store`` for the schemes
``reef+sqlite``, ``reef+postgresql``, ``reef+postgresql+psycopg``, ``reef+mysql``,
``reef+mysql+pymysql`` and ``reef+mssql``: the store URI without the ``reef+`` prefix is the
database MLflow uses as usual. The registration itself always comes
first and is never undone or blocked: anything that goes wrong while queueing is logged and the
version is tagged ``reef.status=not-queued`` (best effort). The ``reef.status=pending`` tag is
written with the version, in the same transaction.

The queue is the one named by $REEF_QUEUE or the configuration ($REEF_CONFIG); with neither, a
SQLite store keeps it beside its database (``mlflow.db`` -> ``mlflow.db.reef-queue``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersionTag
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

from reef_forensics.mlops.jobqueue import JobQueue

PREFIX = "reef+"
STATUS_TAG = "reef.status"
_log = logging.getLogger(__name__)


def queue_path(db_uri: str) -> Path:
    """Where this store's queue lives."""
    from reef_forensics.mlops.config import CONFIG_ENV, load_config

    if os.environ.get("REEF_QUEUE") or os.environ.get(CONFIG_ENV):
        return load_config().queue
    if db_uri.startswith("sqlite:///"):
        database = db_uri.removeprefix("sqlite:///").split("?")[0]
        if database and database != ":memory:":
            return Path(database + ".reef-queue")
    return load_config().queue


class ReefRegistryStore(SqlAlchemyStore):
    def __init__(self, store_uri: str, tracking_uri: str | None = None) -> None:
        db_uri = store_uri.removeprefix(PREFIX)
        super().__init__(db_uri)
        self.reef_queue_path = queue_path(db_uri)
        self._reef_queue: JobQueue | None = None  # opened on the first registration

    def create_model_version(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _with_pending_tag(super().create_model_version, args, kwargs)
        version = super().create_model_version(*args, **kwargs)  # the registration comes first
        try:
            if self._reef_queue is None:
                self._reef_queue = JobQueue(self.reef_queue_path)
            self._reef_queue.enqueue(version.name, version.version, version.source)
        except Exception as exc:  # never lose or block a registration
            _log.warning(
                "reef-forensics could not queue %s/%s: %s", version.name, version.version, exc
            )
            try:
                self.set_model_version_tag(
                    version.name, version.version, ModelVersionTag(STATUS_TAG, "not-queued")
                )
            except Exception as tag_error:
                _log.warning(
                    "reef-forensics could not tag %s/%s: %s",
                    version.name,
                    version.version,
                    tag_error,
                )
        return version


def _with_pending_tag(
    method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with ``reef.status=pending`` among its tags, so that the tag is
    written in the registration's own transaction; the arguments unchanged if anything about
    them is unexpected (MLflow then reports the problem itself)."""
    import inspect

    try:
        bound = inspect.signature(method).bind(*args, **kwargs)
        tags = list(bound.arguments.get("tags") or [])
        if not any(getattr(t, "key", None) == STATUS_TAG for t in tags):
            tags.append(ModelVersionTag(STATUS_TAG, "pending"))
        bound.arguments["tags"] = tags
        return bound.args, bound.kwargs
    except Exception:
        return args, kwargs
