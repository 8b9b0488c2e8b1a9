"""Screening a fleet of model versions with Ray (the optional extra ``reef-forensics[ray]``).

`screen_fleet` takes N model versions of an MLflow registry and screens each against the M
protected victims (versions tagged ``reef.role=victim`` and the configured ones), calibrated on
the references, as the queue's worker does, but with Ray scheduling the work over a local Ray
instance or a cluster:

1. one Ray task per model version that has no fingerprint yet (the suspects, and any victim or
   reference not fingerprinted yet) materializes it, fingerprints it with the configured probes
   and key, logs the signed fingerprint and tags the version: each fingerprint is extracted
   once. A victim or reference fingerprinted before is downloaded from the registry instead.
   The fingerprint files travel in Ray's object store;
2. one Ray task per (suspect, victim) pair, which Ray starts once the fingerprints it takes are
   ready, runs the calibrated check with the references and writes the signed findings, the
   report and the ``reef.screen.VICTIM.vN`` tag;
3. the driver tags each suspect ``reef.status=done`` once all its pairs are in, or
   ``reef.status=failed`` with the reason.

The per-version steps are the worker's own (`reef_forensics.mlops.screener.Screener`), so the tags and
artifacts are the same; a version already done (tag ``reef.status=done`` with a fingerprint
digest) is skipped, the worker's idempotency rule, unless it lacks the screening tag of a
victim (one added since): it is then screened against those victims, from its published
fingerprint. Every task loads the signing key itself from
the configuration's paths, with the passphrase from its own environment (``REEF_KEY_PASSPHRASE``
or the configured file): the key never travels through Ray. A local Ray instance inherits this
process's environment; a cluster's nodes need the key files and the passphrase, as a worker
host does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reef_forensics.errors import BadInputError, ReefError, first_line
from reef_forensics.mlops.config import Config
from reef_forensics.mlops.fleet_tasks import (
    Files,
    Screening,
    _download_task,
    _fingerprint_task,
    _job,
    _read_local,
    _screen_task,
)
from reef_forensics.mlops.registry import (
    parse_models_uri,
    versions_with_role,
)
from reef_forensics.mlops.screener import (
    Screener,
    already_done,
    is_suspect,
    screened,
)

RAY_MISSING = (
    "the fleet needs Ray: install reef-forensics with its ray extra (docs/mlflow.md, Install)"
)


@dataclass
class FleetResult:
    """What one fleet run did: each version it fingerprinted (once), each published fingerprint
    it reused, each version it skipped as done, each comparison, each failure and its reason."""

    fingerprinted: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    screenings: list[Screening] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    # versions that are no transformers model (a pyfunc, a sklearn model): tagged
    # ``reef.status=skipped`` with the reason, as the worker tags them, and not failures
    not_models: dict[str, str] = field(default_factory=dict)
    workers: int | None = None
    seconds: float = 0.0
    # the tasks' own wall time, summed: "fingerprint" (phase 1, whole), "extract" (the download
    # and fingerprint_model inside it), "compare" (phase 2): the work Ray had to spread
    task_seconds: dict[str, float] = field(
        default_factory=lambda: {"fingerprint": 0.0, "extract": 0.0, "compare": 0.0}
    )

    def as_json(self) -> dict[str, Any]:
        return {
            "fingerprinted": self.fingerprinted,
            "reused": self.reused,
            "skipped": self.skipped,
            "screenings": [s.as_json() for s in self.screenings],
            "failed": self.failed,
            "not_models": self.not_models,
            "comparisons": len(self.screenings),
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
            "task_seconds": {k: round(v, 3) for k, v in self.task_seconds.items()},
        }


@dataclass
class _Plan:
    """The registry versions involved and what becomes of each."""

    versions: dict[str, Any]  # models:/NAME/N -> the registry's ModelVersion
    suspects: list[str]  # to fingerprint and screen
    others: list[str]  # victims and references asked for and not done: to fingerprint
    victims: list[str]  # labels: models:/NAME/N or a fingerprint path
    references: list[str]
    local: dict[str, Files]  # configured fingerprint directories (victims, references), read
    skipped: list[str]


def screen_fleet(
    config: Config,
    versions: Sequence[str] | None = None,
    *,
    num_workers: int | None = None,
    address: str | None = None,
) -> FleetResult:
    """Fingerprint and screen ``versions`` (``models:/NAME/VERSION`` URIs; None: every version
    in the registry) against the victims, on Ray: a local instance with ``num_workers`` CPUs
    (default: all), or the cluster at ``address``. A Ray already started in this process is
    used as it is (``num_workers`` and ``address`` then change nothing). Victims and references
    among ``versions`` are fingerprinted when they have no fingerprint yet, never screened."""
    ray = _import_ray()
    if num_workers is not None and num_workers < 1:
        raise BadInputError(f"the number of workers must be at least 1, got {num_workers}")
    if num_workers is not None and address is not None:
        raise BadInputError("--workers applies to a local Ray instance; a cluster has its own")
    if config.tracking_uri is None:
        raise BadInputError(
            "no tracking URI: set tracking_uri, REEF_TRACKING_URI or MLFLOW_TRACKING_URI"
        )
    started = time.monotonic()
    driver = Screener(config)  # a wrong passphrase or probe file fails here, before Ray starts
    plan = _plan(driver, config, versions)
    ours = not ray.is_initialized()
    if ours:
        _start_ray(ray, num_workers, address)
    try:
        result = _run(ray, driver, config, plan)
        result.workers = int(ray.cluster_resources().get("CPU", 0)) or None
    finally:
        if ours:
            ray.shutdown()
    result.seconds = time.monotonic() - started
    return result


def _start_ray(ray: Any, num_workers: int | None, address: str | None) -> None:
    """A local Ray instance of ``num_workers`` CPUs, or a connection to the cluster at
    ``address``; a cluster that cannot be reached is one line, exit 2."""
    try:
        ray.init(
            address=address,
            num_cpus=num_workers if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
        )
    except Exception as exc:
        if address is not None:
            raise BadInputError(
                f"cannot reach the Ray cluster at {address}: {first_line(exc)}"
            ) from None
        raise ReefError(f"cannot start a local Ray instance: {first_line(exc)}") from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ReefError(RAY_MISSING) from None
    return ray


# --- the plan (driver) ----------------------------------------------------------------------------


def _plan(driver: Screener, config: Config, uris: Sequence[str] | None) -> _Plan:
    """Which versions to fingerprint, which to screen against which victims, which to skip."""
    registry = driver.client
    requested = _all_versions(registry) if uris is None else [_version(registry, u) for u in uris]
    versions = {_uri(v): v for v in requested}
    local: dict[str, Files] = {}

    def role(configured: Sequence[str], tag: str) -> list[str]:
        labels = []
        for entry in configured:
            if entry.startswith("models:/"):
                versions.setdefault(entry, _version(registry, entry))
            else:
                local.setdefault(entry, _read_local(Path(entry)))
            labels.append(entry)
        for version in versions_with_role(registry, tag):
            versions.setdefault(_uri(version), version)
            labels.append(_uri(version))
        return sorted(set(labels))

    victims = role(config.victims, "victim")
    references = role(config.references, "reference")
    suspects: set[str] = set()
    others: set[str] = set()  # victims and references: not screened, fingerprinted if need be
    skipped: set[str] = set()
    for version in requested:
        if not is_suspect(version):
            if not already_done(version):
                others.add(_uri(version))
        elif not already_done(version) or _unscreened(version, victims):
            suspects.add(_uri(version))  # done, but a victim added since: screened against it
        else:
            skipped.add(_uri(version))
    return _Plan(
        versions, sorted(suspects), sorted(others), victims, references, local, sorted(skipped)
    )


def _unscreened(version: Any, victims: list[str]) -> list[str]:
    """The victims a version has no ``reef.screen`` tag for (itself aside)."""
    return [v for v in victims if v != _uri(version) and not screened(version, v)]


def _version(registry: Any, uri: str) -> Any:
    name, number = parse_models_uri(uri)
    try:
        return registry.get_model_version(name, number)
    except Exception as exc:
        raise BadInputError(f"cannot read {uri} from the registry: {first_line(exc)}") from None


def _all_versions(registry: Any) -> list[Any]:
    found: list[Any] = []
    token = None
    while True:
        page = registry.search_model_versions(max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _uri(version: Any) -> str:
    return f"models:/{version.name}/{version.version}"


# --- the run (driver) -----------------------------------------------------------------------------


def _run(ray: Any, driver: Screener, config: Config, plan: _Plan) -> FleetResult:
    """Submit every task at once: Ray starts each comparison when the fingerprints it takes are
    ready. A phase-1 task returns two objects, a small record (which the driver fetches) and the
    fingerprint's files (which only the comparisons fetch, from the object store)."""
    fingerprint = ray.remote(num_cpus=1, num_returns=2)(_fingerprint_task)
    download = ray.remote(num_cpus=1, num_returns=2)(_download_task)
    compare = ray.remote(num_cpus=1)(_screen_task)
    needed = {*plan.suspects, *plan.others}
    for suspect in plan.suspects:
        needed.update(v for v in plan.victims if v != suspect)
        needed.update(r for r in plan.references if r != suspect)
    records: dict[str, Any] = {}
    payloads: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    for label in sorted(needed):
        if label in plan.local:
            kinds[label] = "local"
            records[label] = ray.put({"label": label, "kind": "local", "error": None})
            payloads[label] = ray.put({"label": label, "error": None, "files": plan.local[label]})
        elif already_done(plan.versions[label]):
            kinds[label] = "download"
            records[label], payloads[label] = download.remote(config, label)
        else:
            kinds[label] = "fingerprint"
            finish = label not in plan.suspects  # a victim or reference is done once published
            records[label], payloads[label] = fingerprint.remote(config, label, finish)
    pairs = {
        (suspect, victim): compare.remote(
            config,
            records[suspect],
            victim,
            payloads[suspect],
            payloads[victim],
            *[payloads[r] for r in plan.references if r != suspect],
        )
        for suspect in plan.suspects
        for victim in _unscreened(plan.versions[suspect], plan.victims)
    }
    lost = {"extracted": False, "seconds": 0.0, "extract_seconds": 0.0}
    fetched = {
        label: _outcome(ray, ref, {"label": label, "kind": kinds[label], **lost})
        for label, ref in records.items()
    }
    compared = {pair: _outcome(ray, ref, {"seconds": 0.0}) for pair, ref in pairs.items()}
    return _collect(driver, plan, fetched, compared)


def _outcome(ray: Any, ref: Any, lost: dict[str, Any]) -> dict[str, Any]:
    """A task's record; when Ray lost the task (its worker process died, retries spent), the
    ``lost`` record with the reason, so that one crash fails its versions, not the run."""
    try:
        record: dict[str, Any] = ray.get(ref)
    except Exception as exc:
        return {**lost, "error": f"the Ray task failed: {first_line(exc)}"}
    return record


def _collect(
    driver: Screener,
    plan: _Plan,
    fetched: dict[str, dict[str, Any]],
    compared: dict[tuple[str, str], dict[str, Any]],
) -> FleetResult:
    """The result, and the suspects' final status: done when every comparison went through."""
    result = FleetResult(skipped=plan.skipped)
    for label, record in sorted(fetched.items()):
        if record["kind"] == "fingerprint":
            result.task_seconds["fingerprint"] += record["seconds"]
            result.task_seconds["extract"] += record["extract_seconds"]
        if record["kind"] == "fingerprint" and record["extracted"]:
            result.fingerprinted.append(label)
        elif record["kind"] == "download" and record["error"] is None:
            result.reused.append(label)
        if record["kind"] == "fingerprint" and record.get("not_a_model"):
            result.not_models[label] = record["error"]
        elif record["kind"] == "fingerprint" and record["error"] is not None:
            result.failed[label] = record["error"]  # the fleet's own attempt at this version
    for (suspect, victim), outcome in sorted(compared.items()):
        result.task_seconds["compare"] += outcome["seconds"]
        if suspect in result.not_models:  # nothing to compare: skipped, with its reason
            continue
        if outcome["error"] is not None:
            result.failed.setdefault(suspect, outcome["error"])
            continue
        result.screenings.append(
            Screening(
                suspect,
                victim,
                outcome["verdict"],
                outcome["score"],
                outcome["p_value"],
                outcome["references"],
                outcome["log10_p_value"],
            )
        )
    for label in plan.suspects:
        if label not in result.failed and label not in result.not_models:
            driver.finish(_job(label))
    for label, reason in result.not_models.items():
        driver.tag_status(_job(label), "skipped", reason)
    for label, reason in result.failed.items():
        driver.tag_status(_job(label), "failed", reason)  # as the worker tags a spent job
    return result


# --- fingerprints in the object store -------------------------------------------------------------


# --- the Ray tasks ------------------------------------------------------------------------------
