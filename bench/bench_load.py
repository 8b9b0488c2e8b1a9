"""Load: a burst of registrations against real MLflow servers on 127.0.0.1, then the queue drained.

    python bench/bench_load.py [--versions 100] [--threads 16] [--workers 2]

Two `mlflow server` processes on SQLite files in a scratch folder: a plain one (the baseline) and
one with the reef registry-store plugin. A toy model is logged once on each; then ``--versions``
versions of it are registered in a burst from ``--threads`` client threads, on each server in
turn. Reported: the burst's throughput (registrations per second) and the per-registration
latency (median and 95th percentile) on each server, with the reef/plain ratios; then the time
``--workers`` `reef-forensics worker` processes take to fingerprint every queued version.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' server starter: one way to run `mlflow server`

PASS = "bench-load"


def burst(url: str, source: object, versions: int, threads: int) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(url, url)
    client.create_registered_model("load")
    model_id = source.model_id or source.source.removeprefix("models:/")  # type: ignore[attr-defined]

    def one(_: int) -> float:
        started = time.perf_counter()
        client.create_model_version(
            "load",
            source.source,
            source.run_id,
            model_id=model_id,
        )
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        latencies = sorted(pool.map(one, range(versions)))
    elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "per_second": versions / elapsed,
        "median_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write the results as JSON here")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["REEF_KEY_PASSPHRASE"] = PASS
    import mlflow
    from mlflow import MlflowClient

    from reef_forensics.crypto.keys import generate_keys
    from reef_forensics.demo.toy_models import make_model
    from reef_forensics.formats.probes import load_probes
    from reef_forensics.mlops.jobqueue import JobQueue
    from reef_forensics.mlops.registry import register_model_folder
    from tests.mlops.test_mlflow import start_server

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        texts = load_probes().texts[:60]
        model = make_model(root / "toy", texts, family="llama", seed=0)
        keys = generate_keys(root / "keys", PASS.encode())
        (root / "probes.txt").write_text("\n".join(texts) + "\n")
        queue = root / "queue.sqlite"
        for name, plugin in (("mlflow", False), ("reef", True)):
            server = start_server(root / name, plugin=plugin, env={"REEF_QUEUE": str(queue)})
            url = next(server)
            try:
                mlflow.set_tracking_uri(url)
                mlflow.set_registry_uri(url)
                register_model_folder(model, "flagship")
                source = MlflowClient(url, url).get_model_version("flagship", "1")
                results[name] = burst(url, source, args.versions, args.threads)
                if plugin:
                    results["drain"] = drain(root, url, queue, keys, args.workers)
            finally:
                server.close()
        pending = JobQueue(queue).counts()
    assert pending["done"] == args.versions + 1, pending
    results["ratio"] = {
        "per_second": results["reef"]["per_second"] / results["mlflow"]["per_second"],
        "median_ms": results["reef"]["median_ms"] / results["mlflow"]["median_ms"],
    }
    for name in ("mlflow", "reef"):
        r = results[name]
        print(
            f"{name:6s} burst of {args.versions} from {args.threads} threads: {r['seconds']:.2f} s, "
            f"{r['per_second']:.1f}/s, latency median {r['median_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms"
        )
    print(
        f"ratio reef/mlflow: throughput {results['ratio']['per_second']:.2f}, "
        f"median latency {results['ratio']['median_ms']:.2f}"
    )
    d = results["drain"]
    print(
        f"{args.versions + 1} versions fingerprinted by {args.workers} worker(s) in "
        f"{d['seconds']:.1f} s ({d['per_minute']:.1f}/min)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def drain(root: Path, url: str, queue: Path, keys: object, workers: int) -> dict[str, float]:
    """Start ``workers`` worker processes and time them until every queued job is done."""
    from reef_forensics.mlops.jobqueue import JobQueue

    config = root / "reef.toml"
    config.write_text(
        f'tracking_uri = "{url}"\nqueue = "{queue}"\nprobes = "{root / "probes.txt"}"\n'
        f'work_dir = "{root / "work"}"\n[signing]\nkey = "{keys.private_key}"\n'  # type: ignore[attr-defined]
    )
    reef = str(Path(sys.executable).parent / "reef-forensics")
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [reef, "worker", "--config", str(config), "--poll", "0.2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        while True:
            counts = JobQueue(queue).counts()
            if counts["pending"] == 0 and counts["running"] == 0:
                break
            time.sleep(0.5)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait()
    elapsed = time.perf_counter() - started
    done = JobQueue(queue).counts()["done"]
    return {"seconds": elapsed, "per_minute": done * 60 / elapsed, "done": done}


if __name__ == "__main__":
    main()
