"""The ``reef-forensics queue`` commands: a thin adapter over `reef_forensics.mlops.queue_admin`.

``queue list [--state S]``, ``queue retry ID ...``, ``queue cancel ID ...``, each with
``--config FILE`` and ``--json FILE`` (``-``: stdout). Exit 0 when every id was changed, 1 when
one was left as it was (its state did not allow the action), 2 for an unknown id.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reef_forensics.cli.output import emit
from reef_forensics.errors import BadInputError

if TYPE_CHECKING:
    from reef_forensics.mlops.config import Config


def add_queue_commands(
    commands: Any, add_config_option: Callable[[argparse.ArgumentParser], None]
) -> None:
    queue = commands.add_parser(
        "queue",
        help="list, retry or cancel the jobs of the worker's queue",
        description="Operate the job queue that the registry plugin and the webhook receiver "
        "fill and the workers drain.",
    )
    actions = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every job, oldest first")
    listing.add_argument("--state", help="only the jobs in this state (pending, failed, ...)")
    listing.set_defaults(handler=_cmd_list)
    retry = actions.add_parser(
        "retry", help="queue failed, skipped or cancelled jobs again (attempts reset)"
    )
    cancel = actions.add_parser("cancel", help="cancel pending jobs (no worker takes them)")
    retry.set_defaults(handler=_cmd_retry)
    cancel.set_defaults(handler=_cmd_cancel)
    for parser in (retry, cancel):
        parser.add_argument("ids", nargs="+", type=_job_id, metavar="ID", help="job ids")
    for parser in (listing, retry, cancel):
        add_config_option(parser)
        parser.add_argument("--json", metavar="FILE", help="write the result as JSON ('-': stdout)")


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a whole number)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a whole number)")
    return value


def _queue(args: argparse.Namespace) -> Any:
    from reef_forensics.mlops.config import load_config

    return load_config(args.config).open_queue()


def _cmd_list(args: argparse.Namespace) -> int:
    from reef_forensics.mlops.queue_admin import list_jobs

    queue = _queue(args)
    rows = list_jobs(queue, args.state)
    if emit(args.json, {"queue": str(queue.path), "jobs": rows}):
        print(f"{'id':>5}  {'state':<9}  {'tries':>5}  {'updated':<20}  model  (reason)")
        for row in rows:
            reason = f"  ({row['last_error']})" if row["last_error"] else ""
            print(
                f"{row['id']:>5}  {row['state']:<9}  {row['attempts']:>5}  {row['updated']:<20}"
                f"  {row['name']}/{row['version']}{reason}"
            )
        print(f"{len(rows)} job(s) in {queue.path}")
    return 0


def _outcomes(args: argparse.Namespace, action: Callable[[Any, list[int]], list[Any]]) -> int:
    queue = _queue(args)
    outcomes = action(queue, args.ids)
    if emit(args.json, {"queue": str(queue.path), "jobs": [o.as_json() for o in outcomes]}):
        for o in outcomes:
            print(f"job {o.id}: {o.state} ({o.detail})")
    left = [o for o in outcomes if not o.changed]
    for o in left:
        print(f"reef-forensics: job {o.id} {o.detail}", file=sys.stderr)
    return 1 if left else 0


def _cmd_retry(args: argparse.Namespace) -> int:
    from reef_forensics.mlops.queue_admin import retry_jobs

    return _outcomes(args, retry_jobs)


def _cmd_cancel(args: argparse.Namespace) -> int:
    from reef_forensics.mlops.queue_admin import cancel_jobs

    return _outcomes(args, cancel_jobs)


# --- the long-running commands: worker and serve -------------------------------------------------


def add_metrics_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /healthz and /metrics (bearer token: $REEF_METRICS_TOKEN) on this port",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)"
    )


def _port(value: int, option: str) -> int:
    from reef_forensics.errors import BadInputError

    if not 0 <= value <= 65535:
        raise BadInputError(f"{option} must be between 0 and 65535, got {value}")
    return value


def run_worker(args: argparse.Namespace) -> int:
    """`reef-forensics worker`: JSON log lines on stderr, SIGTERM/SIGINT hand the current job
    back and exit 0, an optional metrics endpoint."""
    from reef_forensics.crypto.keys import forget_passphrase
    from reef_forensics.errors import BadInputError
    from reef_forensics.mlops.config import load_config
    from reef_forensics.mlops.observability import configure_logging, log_event, serve_metrics
    from reef_forensics.mlops.worker import Worker
    from reef_forensics.mlops.worker_ops import stop_signals

    if args.metrics_port is not None:
        _port(args.metrics_port, "--metrics-port")
    config = load_config(args.config)
    if config.tracking_uri is None:
        raise BadInputError(
            "no tracking URI: set tracking_uri, REEF_TRACKING_URI or MLFLOW_TRACKING_URI"
        )
    configure_logging()
    queue = config.open_queue()
    worker = Worker(config, queue)
    forget_passphrase()  # the key is loaded: no model code or child inherits the passphrase
    server = None
    if args.metrics_port is not None:
        assert worker.metrics is not None
        try:
            server, _ = serve_metrics(
                args.metrics_host, args.metrics_port, worker.metrics, config.metrics_token
            )
        except OSError as exc:
            raise BadInputError(
                f"cannot listen on {args.metrics_host}:{args.metrics_port}: {exc.strerror or exc}"
            ) from None
        log_event("metrics.listening", port=server.server_address[1], host=args.metrics_host)
        if config.metrics_token is None:
            log_event(
                "metrics.no_token",
                level=30,
                detail=f"/metrics answers 401 to everyone until {config.metrics_token_env} is set",
            )
    try:
        with stop_signals(worker.request_stop):
            handled = worker.run(until_empty=args.until_empty, poll_seconds=args.poll)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    counts = queue.counts()
    if emit(args.json, {"handled": handled, "jobs": counts}):
        print(
            f"worker: {handled} job(s) handled; queue: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
        )
    return 0


def _serve_tls(args: argparse.Namespace, config: Config) -> ssl.SSLContext | None:
    """The TLS context `serve` speaks with, from --certfile/--keyfile or the configuration's
    [webhook] certfile/keyfile (the options win, as a pair); None for plain HTTP."""
    from reef_forensics.plugins.tls import server_context

    if args.certfile or args.keyfile:
        certfile, keyfile = args.certfile, args.keyfile
        if not certfile:
            raise BadInputError("--keyfile needs --certfile (the certificate it is the key of)")
        return server_context(Path(certfile), Path(keyfile) if keyfile else None)
    if config.webhook_keyfile and not config.webhook_certfile:
        raise BadInputError("[webhook] keyfile needs [webhook] certfile")
    if config.webhook_certfile:
        return server_context(config.webhook_certfile, config.webhook_keyfile)
    return None


def run_serve(args: argparse.Namespace) -> int:
    """`reef-forensics serve`: the webhook receiver, /healthz and /metrics, JSON request logs."""
    from pathlib import Path

    from reef_forensics.errors import BadInputError
    from reef_forensics.mlops.config import load_config
    from reef_forensics.mlops.observability import configure_logging
    from reef_forensics.mlops.worker_ops import stop_signals
    from reef_forensics.plugins.webhook import make_server

    _port(args.port, "--port")
    config = load_config(args.config)
    secret = config.webhook_secret
    if not secret:
        raise BadInputError(
            f"no webhook secret: set {config.webhook_secret_env} to the secret given to MLflow's webhook"
        )
    tls = _serve_tls(args, config)
    made = (
        [] if config.queue.exists() else [Path(f"{config.queue}{s}") for s in ("", "-wal", "-shm")]
    )
    queue = config.open_queue()
    try:
        server = make_server(
            args.host,
            args.port,
            queue,
            secret,
            config.webhook_max_age,
            metrics_token=config.metrics_token,
            tls=tls,
        )
    except OSError as exc:  # the port is taken, the address is not this machine's, ...
        for path in made:  # a queue made just now is not left behind
            path.unlink(missing_ok=True)
        raise BadInputError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    configure_logging()
    print(
        f"receiving MLflow webhooks on {'https' if tls else 'http'}://{args.host}:"
        f"{server.server_address[1]}/ (queue {config.queue})",
        flush=True,
    )

    def stop() -> None:  # SIGTERM or SIGINT, even where the parent left SIGINT ignored
        # No exception raised into the accept loop (an except clause on the way could take it):
        # the loop is asked to end, from a thread, since shutdown() waits for the loop to end.
        threading.Thread(target=server.shutdown, name="serve-stop", daemon=True).start()

    try:
        with stop_signals(stop):
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
