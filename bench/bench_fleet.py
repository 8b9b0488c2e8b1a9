"""The Ray fleet's speed-up from 1 to 2 local workers, on the same registry.

    python bench/bench_fleet.py [--suspects 8] [--probes 200] [--hidden 64] [--blocks 4]
                                [--rounds 1] [--json FILE]

A local `mlflow server` (SQLite) holds 2 victims, 3 references and ``--suspects`` suspects (half
derived from a victim, half unrelated), all toy Llama-style models built on the spot.
`screen_fleet` then fingerprints all of them (each once) and screens every suspect against
both victims (signed fingerprints, findings and reports, as the worker), on a fresh local Ray
instance of 1 CPU, then of 2 (each task runs torch on its one CPU). Between runs every
``reef.*`` tag but the roles is deleted, so each run does the same work from the start. The
time is the whole of `screen_fleet`: Ray's start, its workers' imports, the registry's
downloads and uploads included; the tasks' own time, summed, is printed beside it (the work Ray
spread: phase 1 whole, the download and extraction inside it, phase 2). Rounds alternate 1 and
2 workers; the best of each is kept.

A control runs before each round: a pure-Python CPU loop, alone and then two at once in two
processes. Its throughput ratio is the most any two processes could gain over one on this
machine at that moment (2.0 on two idle CPUs; less when other jobs hold the CPUs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PASS = "bench-fleet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suspects", type=int, default=8)
    parser.add_argument("--probes", type=int, default=200, help="built-in probe texts used")
    parser.add_argument("--hidden", type=int, default=64, help="the toy models' width")
    parser.add_argument("--blocks", type=int, default=4, help="the toy models' blocks")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", help="write the results as JSON here")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    os.environ["REEF_KEY_PASSPHRASE"] = PASS  # the Ray workers inherit it
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        root = Path(scratch)
        with mlflow_server(root / "server") as (url, server_group):
            config = deployment(root, url, args.probes)
            shape = {"hidden_size": args.hidden, "num_layers": args.blocks}
            names = populate(root / "models", url, args.suspects, shape)
            times: dict[int, list[float]] = {1: [], 2: []}
            loads: dict[int, list[float]] = {1: [], 2: []}
            server_cpu: dict[int, list[float]] = {1: [], 2: []}
            controls: list[float] = []
            results: dict[int, Any] = {}
            for _ in range(args.rounds):
                controls.append(cpu_control())
                print(f"control: 2 CPU-bound processes {controls[-1]:.2f}x one", flush=True)
                for workers in (1, 2):
                    reset(url, names)
                    cpu_before = group_cpu_seconds(server_group)
                    seconds, results[workers] = run(config, workers)
                    server_cpu[workers].append(group_cpu_seconds(server_group) - cpu_before)
                    times[workers].append(seconds)
                    loads[workers].append(os.getloadavg()[0])  # the other jobs on the machine
                    busy = results[workers]["task_seconds"]
                    print(
                        f"{workers} worker(s): {seconds:.1f} s; tasks: fingerprint "
                        f"{busy['fingerprint']:.1f} s (extract {busy['extract']:.1f} s), compare "
                        f"{busy['compare']:.1f} s; mlflow server CPU "
                        f"{server_cpu[workers][-1]:.1f} s (1-minute load average "
                        f"{loads[workers][-1]:.1f} after it)",
                        flush=True,
                    )
    best = {w: min(t) for w, t in times.items()}
    ratio = best[1] / best[2]
    summary = results[2]
    print(
        f"{len(summary['fingerprinted'])} fingerprints, {summary['comparisons']} comparisons: "
        f"1 worker {best[1]:.1f} s, 2 workers {best[2]:.1f} s, speed-up {ratio:.2f}x "
        f"({os.cpu_count()} CPUs; the control's best {max(controls):.2f}x)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "seconds": times,
                    "load_average_after": loads,
                    "mlflow_server_cpu_seconds": server_cpu,
                    "control_speedup": controls,
                    "best": best,
                    "speedup": ratio,
                    "fingerprints": len(summary["fingerprinted"]),
                    "comparisons": summary["comparisons"],
                    "verdicts": {
                        f"{s['suspect']} vs {s['victim']}": s["verdict"]
                        for s in summary["screenings"]
                    },
                    "task_seconds": {w: r["task_seconds"] for w, r in results.items()},
                    "probes": args.probes,
                    "shape": shape,
                    "cpu_count": os.cpu_count(),
                },
                indent=2,
            )
            + "\n"
        )


def run(config: Path, workers: int) -> tuple[float, dict[str, Any]]:
    from reef_forensics.mlops.config import load_config
    from reef_forensics.mlops.fleet import screen_fleet

    started = time.perf_counter()
    result = screen_fleet(load_config(config), None, num_workers=workers)
    seconds = time.perf_counter() - started
    if result.failed:
        raise SystemExit(f"the fleet failed: {result.failed}")
    return seconds, result.as_json()


def deployment(root: Path, url: str, probes: int) -> Path:
    """Keys, a probe file and the configuration the fleet reads."""
    from reef_forensics.crypto.keys import generate_keys
    from reef_forensics.formats.probes import load_probes

    keys = generate_keys(root / "keys", PASS.encode())
    probe_file = root / "probes.txt"
    probe_file.write_text("\n".join(load_probes().texts[:probes]) + "\n")
    config = root / "reef.toml"
    config.write_text(
        f'tracking_uri = "{url}"\nprobes = "{probe_file}"\nwork_dir = "{root / "work"}"\n'
        f'queue = "{root / "queue.sqlite"}"\n'
        f'[signing]\nkey = "{keys.private_key}"\ncert = "{keys.signer_certificate}"\n'
    )
    return config


def populate(root: Path, url: str, suspects: int, shape: dict[str, int]) -> list[str]:
    """Register the victims, references and suspects; returns every registered name."""
    import mlflow

    from reef_forensics.demo.toy_models import derive, make_model
    from reef_forensics.formats.probes import load_probes
    from reef_forensics.mlops.registry import register_model_folder

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # after mlflow set up its own logging
    texts = load_probes().texts
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    mlflow.set_experiment("bench")
    victims = [make_model(root / f"victim-{i}", texts, seed=i, **shape) for i in range(2)]
    roles: dict[str, tuple[Path, str | None]] = {
        f"victim-{i}": (folder, "victim") for i, folder in enumerate(victims)
    }
    for i in range(3):
        reference = make_model(root / f"ref-{i}", texts, seed=300 + i, **shape)
        roles[f"reference-{i}"] = (reference, "reference")
    for i in range(suspects):
        if i % 2 == 0:
            noise = 0.05 + 0.05 * (i // 2)
            folder = derive(victims[(i // 2) % 2], root / f"suspect-{i}", noise=noise, seed=i)
        else:
            folder = make_model(root / f"suspect-{i}", texts, seed=500 + i, **shape)
        roles[f"suspect-{i}"] = (folder, None)
    for name, (folder, role) in roles.items():
        register_model_folder(folder, name, role=role)
    return list(roles)


def reset(url: str, names: list[str]) -> None:
    """Every ``reef.*`` tag but ``reef.role`` deleted: the next run starts from nothing."""
    from mlflow import MlflowClient

    client = MlflowClient(url, url)
    for name in names:
        for key in client.get_model_version(name, "1").tags:
            if key.startswith("reef.") and key != "reef.role":
                client.delete_model_version_tag(name, "1", key)


SPIN = "for i in range(25_000_000): pass"


def cpu_control() -> float:
    """Throughput of two CPU-bound processes at once over one alone (2.0: two free CPUs)."""

    def spin(copies: int) -> float:
        started = time.perf_counter()
        runs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(copies)]
        for process in runs:
            process.wait()
        return time.perf_counter() - started

    alone = spin(1)
    return 2 * alone / spin(2)


def group_cpu_seconds(group: int) -> float:
    """User and system CPU time of every live process in a process group (Linux /proc): what
    the MLflow server's processes have used, on the same CPUs as the fleet."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(fields[2]) == group:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


@contextmanager
def mlflow_server(root: Path) -> Iterator[tuple[str, int]]:
    """A plain `mlflow server` on 127.0.0.1 with a SQLite backend, stopped on exit; yields its
    URL and its process group."""
    root.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = f"sqlite:///{root / 'mlflow.db'}"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", db,
        "--registry-store-uri", db, "--default-artifact-root", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with (root / "server.log").open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=1) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("mlflow server did not start: see its log") from None
                    time.sleep(0.5)
            yield url, process.pid
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
