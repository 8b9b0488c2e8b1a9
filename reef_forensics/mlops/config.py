"""Deployment configuration: one TOML file plus environment variables (which win).

```toml
tracking_uri = "sqlite:///mlflow.db"   # REEF_TRACKING_URI, else MLFLOW_TRACKING_URI
queue = "reef-queue.sqlite"            # REEF_QUEUE
probes = "builtin:default"             # REEF_PROBES
work_dir = "reef-work"                 # scratch space for downloads and fingerprints

[signing]
key = "keys/signing-key.pem"           # REEF_KEY; passphrase: REEF_KEY_PASSPHRASE or passphrase_file
cert = "keys/signer-cert.pem"          # REEF_CERT
chain = "keys/ca-cert.pem"             # optional
tsa_url = "http://tsa.example/tsr"     # REEF_TSA_URL; optional: reports are PAdES B-T
crls = ["keys/ca.crl"]                 # optional, with tsa_url and chain: PAdES B-LTA

[screening]
victims = ["models:/flagship/1"]       # besides every version tagged reef.role=victim
references = ["models:/indep-a/1", "refs/indep-b"]  # besides versions tagged reef.role=reference
alpha = 0.01
unrelated_alpha = 0.05
margin = 0.05
min_references = 3

[worker]
max_attempts = 5
lease_seconds = 600
backoff_seconds = 5
reconcile_seconds = 300                # a reconciliation pass this often (0: never)

[evidence]
experiment = "reef-evidence"           # the service's own experiment for fingerprints and findings

[webhook]
secret_env = "REEF_WEBHOOK_SECRET"     # the secret itself never sits in the file
max_age_seconds = 300
certfile = "/etc/reef/webhook-cert.pem"  # serve HTTPS (with keyfile); passphrase: REEF_TLS_KEY_PASSPHRASE
keyfile = "/etc/reef/webhook-key.pem"

[metrics]
token_env = "REEF_METRICS_TOKEN"       # the bearer token /metrics asks for (never in the file)
```

Relative paths are relative to the file. `reef-forensics config check` loads it, checks that
every path exists, the key loads and the queue opens, and prints what it found.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reef_forensics.errors import BadInputError
from reef_forensics.report.timestamps import TSA_ENV

if TYPE_CHECKING:
    from reef_forensics.mlops.jobqueue import JobQueue
    from reef_forensics.report.timestamps import Timestamping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_ENV = "REEF_CONFIG"
DEFAULT_QUEUE = Path.home() / ".reef-forensics" / "queue.sqlite"


@dataclass(frozen=True)
class Config:
    source: Path | None = None
    tracking_uri: str | None = None
    queue: Path = DEFAULT_QUEUE
    probes: str = "builtin:default"
    work_dir: Path = field(default_factory=lambda: Path.home() / ".reef-forensics" / "work")
    key: Path | None = None
    cert: Path | None = None
    chain: Path | None = None
    passphrase_file: Path | None = None
    tsa_url: str | None = None
    crls: tuple[Path, ...] = ()
    victims: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    rule: dict[str, Any] = field(default_factory=dict)
    max_attempts: int = 5
    lease_seconds: float = 600.0
    backoff_seconds: float = 5.0
    webhook_secret_env: str = "REEF_WEBHOOK_SECRET"
    webhook_max_age: float = 300.0
    metrics_token_env: str = "REEF_METRICS_TOKEN"
    webhook_certfile: Path | None = None
    webhook_keyfile: Path | None = None
    evidence_experiment: str = "reef-evidence"
    reconcile_seconds: float = 300.0

    def open_queue(self) -> JobQueue:
        """The job queue, with this configuration's lease, attempts and backoff."""
        from reef_forensics.mlops.jobqueue import JobQueue

        return JobQueue(
            self.queue,
            lease_seconds=self.lease_seconds,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
        )

    @property
    def timestamping(self) -> Timestamping | None:
        """Where reports get their timestamps (None: the signer's clock only)."""
        from reef_forensics.report.timestamps import timestamping

        return timestamping(self.tsa_url, self.crls)

    @property
    def webhook_secret(self) -> str | None:
        return os.environ.get(self.webhook_secret_env) or None

    @property
    def metrics_token(self) -> str | None:
        """The bearer token that ``/metrics`` asks for; None: ``/metrics`` answers no one."""
        return os.environ.get(self.metrics_token_env) or None


_SECTIONS = {
    "": {"tracking_uri", "queue", "probes", "work_dir"},
    "signing": {"key", "cert", "chain", "passphrase_file", "tsa_url", "crls"},
    "screening": {"victims", "references", "alpha", "unrelated_alpha", "margin", "min_references"},
    "worker": {"max_attempts", "lease_seconds", "backoff_seconds", "reconcile_seconds"},
    "evidence": {"experiment"},
    "webhook": {"secret_env", "max_age_seconds", "certfile", "keyfile"},
    "metrics": {"token_env"},
}


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """The configuration from ``path`` (or $REEF_CONFIG, or none), then the environment."""
    chosen = path or os.environ.get(CONFIG_ENV)
    source = Path(chosen) if chosen else None
    data = _read_toml(source) if source is not None else {}
    _check_keys(data, source)
    read = _Reader(source.resolve().parent if source is not None else Path.cwd())
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    signing, screening = data.get("signing", {}), data.get("screening", {})
    worker, webhook = data.get("worker", {}), data.get("webhook", {})
    metrics = data.get("metrics", {})
    evidence = data.get("evidence", {})
    env = os.environ
    config = Config(
        source=source,
        tracking_uri=env.get("REEF_TRACKING_URI")
        or read.text(top.get("tracking_uri"), "tracking_uri")
        or env.get("MLFLOW_TRACKING_URI"),
        queue=_from_env("REEF_QUEUE") or read.path(top.get("queue"), "queue") or DEFAULT_QUEUE,
        probes=env.get("REEF_PROBES")
        or read.text(top.get("probes"), "probes")
        or "builtin:default",
        work_dir=read.path(top.get("work_dir"), "work_dir") or Config().work_dir,
        key=_from_env("REEF_KEY") or read.path(signing.get("key"), "[signing] key"),
        cert=_from_env("REEF_CERT") or read.path(signing.get("cert"), "[signing] cert"),
        chain=read.path(signing.get("chain"), "[signing] chain"),
        passphrase_file=read.path(signing.get("passphrase_file"), "[signing] passphrase_file"),
        tsa_url=env.get(TSA_ENV) or read.text(signing.get("tsa_url"), "[signing] tsa_url"),
        crls=tuple(Path(c) for c in read.strings(signing.get("crls", []), "[signing] crls")),
        victims=read.strings(screening.get("victims", []), "[screening] victims"),
        references=read.strings(screening.get("references", []), "[screening] references"),
        rule=_decision_rule(screening),
        max_attempts=read.count(worker, "max_attempts", 5, "[worker] max_attempts"),
        lease_seconds=read.number(
            worker, "lease_seconds", 600, "[worker] lease_seconds", positive=True
        ),
        backoff_seconds=read.number(worker, "backoff_seconds", 5, "[worker] backoff_seconds"),
        webhook_secret_env=read.text(webhook.get("secret_env"), "[webhook] secret_env")
        or "REEF_WEBHOOK_SECRET",
        webhook_max_age=read.number(
            webhook, "max_age_seconds", 300, "[webhook] max_age_seconds", positive=True
        ),
        metrics_token_env=read.text(metrics.get("token_env"), "[metrics] token_env")
        or "REEF_METRICS_TOKEN",
        webhook_certfile=read.path(webhook.get("certfile"), "[webhook] certfile"),
        webhook_keyfile=read.path(webhook.get("keyfile"), "[webhook] keyfile"),
        evidence_experiment=read.text(evidence.get("experiment"), "[evidence] experiment")
        or "reef-evidence",
        reconcile_seconds=read.number(
            worker, "reconcile_seconds", 300, "[worker] reconcile_seconds"
        ),
    )
    config.timestamping  # noqa: B018 (a bad TSA URL, or CRLs without one, fail at load)
    return config


def _read_toml(source: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInputError(
            f"cannot read the configuration {source}: {exc.strerror or exc}"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{source} is not valid TOML: {exc}") from None


def _from_env(name: str) -> Path | None:
    """A path from the environment: relative to the working directory, not the file."""
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else None


def _decision_rule(screening: dict[str, Any]) -> dict[str, Any]:
    """The [screening] section's decision-rule settings, checked by building the rule."""
    rule: dict[str, Any] = {
        k: screening[k]
        for k in ("alpha", "unrelated_alpha", "margin", "min_references")
        if k in screening
    }
    if rule:
        from reef_forensics.analysis.verdict import DecisionRule

        try:
            DecisionRule(**rule)
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"[screening] decision rule: {exc}") from None
    return rule


@dataclass(frozen=True)
class _Reader:
    """Values read from the file, each checked for its type; ``base``: where relative paths
    start (the file's folder)."""

    base: Path

    def path(self, value: Any, what: str) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise BadInputError(f"{what} must be a path (a non-empty string)")
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else self.base / candidate

    def strings(self, value: Any, what: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise BadInputError(f"{what} must be a list of strings")
        return tuple(
            v if v.startswith(("models:/", "runs:/")) else str(self.path(v, what)) for v in value
        )

    def number(
        self,
        section: dict[str, Any],
        key: str,
        default: float,
        what: str,
        *,
        positive: bool = False,
    ) -> float:
        """A number from the file: never negative; ``positive`` where zero would make the
        deployment refuse everything (a webhook max age of 0 s, a lease of 0 s)."""
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise BadInputError(f"{what} must be a non-negative number")
        if positive and not value > 0:
            raise BadInputError(f"{what} must be greater than 0, got {value}")
        return float(value)

    def count(self, section: dict[str, Any], key: str, default: int, what: str) -> int:
        value = self.number(section, key, default, what)
        if value < 1 or not value.is_integer():
            raise BadInputError(f"{what} must be a whole number of at least 1, got {value:g}")
        return int(value)

    def text(self, value: Any, what: str) -> str | None:
        if value is not None and (not isinstance(value, str) or not value):
            raise BadInputError(f"{what} must be a non-empty string")
        return value


def _check_keys(data: dict[str, Any], source: Path | None) -> None:
    where = source or "the configuration"
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in _SECTIONS:
                raise BadInputError(f"{where}: unknown section [{key}]")
            unknown = set(value) - _SECTIONS[key]
            if unknown:
                raise BadInputError(
                    f"{where}: unknown key(s) in [{key}]: {', '.join(sorted(unknown))}"
                )
        elif key not in _SECTIONS[""]:
            raise BadInputError(f"{where}: unknown key {key!r}")


def check_config(config: Config) -> list[tuple[str, bool, str]]:
    """What `config check` reports: each item (name, ok, detail)."""
    from reef_forensics.crypto.keys import load_signer, read_passphrase
    from reef_forensics.formats.probes import load_probes

    results: list[tuple[str, bool, str]] = []

    def attempt(name: str, action: Any) -> None:
        try:
            results.append((name, True, str(action())))
        except Exception as exc:  # every problem is reported, none stops the others
            from reef_forensics.errors import first_line

            results.append((name, False, first_line(exc)))

    if config.tracking_uri is None:
        results.append(
            (
                "tracking uri",
                False,
                "not set (REEF_TRACKING_URI, MLFLOW_TRACKING_URI or tracking_uri)",
            )
        )
    else:
        attempt("tracking uri", lambda: contact_tracking_server(str(config.tracking_uri)))
    attempt("queue", lambda: f"{config.queue} ({config.open_queue().counts()})")
    attempt(
        "probes",
        lambda: (lambda p: f"{p.name}: {len(p)} texts, {p.digest}")(load_probes(config.probes)),
    )
    if config.key is None:
        results.append(
            (
                "signing key",
                False,
                "no key: fingerprints would be unsigned ([signing] key or REEF_KEY)",
            )
        )
    else:
        attempt(
            "signing key",
            lambda: (
                "loaded"
                + (
                    " with its certificate"
                    if load_signer(
                        config.key,
                        passphrase=read_passphrase(config.passphrase_file),
                        certificate=config.cert,
                        chain=config.chain,
                    ).certificate
                    else " (no certificate: reports need one)"
                )
            ),
        )
    results.append(
        (
            "timestamps",
            True,
            f"reports are timestamped by {config.tsa_url}"
            + (" with validation data (PAdES B-LTA)" if config.crls else " (PAdES B-T)")
            if config.tsa_url
            else f"none: a report's time is the signer's clock ([signing] tsa_url or {TSA_ENV})",
        )
    )
    for reference in config.references:
        if not reference.startswith(("models:/", "runs:/")):
            results.append(
                (
                    f"reference {reference}",
                    Path(reference).exists(),
                    "exists" if Path(reference).exists() else "missing",
                )
            )
    results.append(
        ("victims", True, f"{len(config.victims)} listed, plus versions tagged reef.role=victim")
    )
    return results


def contact_tracking_server(uri: str, timeout: float = 5.0) -> str:
    """Ask an ``http(s)`` tracking server for one registered model (the registry API the worker
    uses) and say what answered; raises with one line when nothing did, or refused. A local
    store (``sqlite:///``, a folder) is not contacted."""
    import base64
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return f"{uri} (a local store: no server to contact)"
    request = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/registered-models/search?max_results=1"
    )
    env = os.environ
    if env.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {env['MLFLOW_TRACKING_TOKEN']}")
    elif env.get("MLFLOW_TRACKING_USERNAME"):
        pair = f"{env['MLFLOW_TRACKING_USERNAME']}:{env.get('MLFLOW_TRACKING_PASSWORD', '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read(1 << 16)
    except urllib.error.HTTPError as exc:
        raise BadInputError(
            f"{uri} answered HTTP {exc.code} {exc.reason} to a registry search"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise BadInputError(f"cannot reach the tracking server {uri}: {why}") from None
    return f"{uri} (the MLflow server answered)"
