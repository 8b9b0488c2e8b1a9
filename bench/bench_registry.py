"""Registration latency: what the registry-store plugin adds to `create_model_version`.

    python bench/bench_registry.py [--versions 60] [--rounds 3]

Two stores on SQLite files in a scratch folder, in this process (what the MLflow server runs
inside its request handler): MLflow's own `SqlAlchemyStore` (the baseline) and
`ReefRegistryStore` (the same, plus queueing the version in the WAL job queue and tagging it
``reef.status=pending``). Each round registers ``--versions`` versions of one model in each
store, alternating, and the median latency per store is reported with the ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the results as JSON here")
    args = parser.parse_args()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    from reef_forensics.mlops.jobqueue import JobQueue
    from reef_forensics.plugins.store import ReefRegistryStore

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        os.environ["REEF_QUEUE"] = str(root / "queue.sqlite")
        plain = SqlAlchemyStore(f"sqlite:///{root / 'plain.db'}")
        reef = ReefRegistryStore(f"reef+sqlite:///{root / 'reef.db'}")
        times: dict[str, list[float]] = {"mlflow": [], "reef": []}
        for store in (plain, reef):
            store.create_registered_model("bench")
        for _ in range(args.rounds):
            for _ in range(args.versions):
                for name, store in (("mlflow", plain), ("reef", reef)):
                    started = time.perf_counter()
                    store.create_model_version("bench", source=str(root / "model"))
                    times[name].append(time.perf_counter() - started)
        queued = JobQueue(root / "queue.sqlite").counts()["pending"]
    assert queued == args.versions * args.rounds, queued
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}
    ratio = median["reef"] / median["mlflow"]
    print(
        f"create_model_version, median of {len(times['reef'])} (ms): mlflow {median['mlflow']:.2f}, "
        f"reef {median['reef']:.2f}, ratio {ratio:.2f} (+{median['reef'] - median['mlflow']:.2f} ms)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"median_ms": median, "ratio": ratio, "samples": len(times["reef"])}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
