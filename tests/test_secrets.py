"""Secrets: passphrases and keys stay out of outputs and logs, readable key and passphrase files
are warned about, the webhook's HMAC is compared in constant time inside a replay window.

The session-wide scan of every captured output and log file lives in conftest.py (tests/leaks.py);
the first tests here prove that scan can fail."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reef_forensics.cli.main import main
from reef_forensics.crypto.keys import generate_keys
from reef_forensics.mlops.config import Config
from reef_forensics.mlops.jobqueue import JobQueue
from tests.leaks import find_leaks, known_passphrases, log_files

SECRET_PASSPHRASE = "never-print-me-7Qx"


def test_the_leak_scan_finds_a_passphrase_or_a_key_and_nothing_else(tmp_path: Path) -> None:
    assert SECRET_PASSPHRASE in known_passphrases()  # collected from this module by convention
    assert "mlflow-test" not in known_passphrases() or "tests.mlops.test_mlflow" in sys.modules
    texts = [
        ("clean", "verified 3 files with key sha256:ab12"),
        ("said", f"error: wrong passphrase {SECRET_PASSPHRASE}"),
        ("pem", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB..."),
    ]
    leaks = find_leaks(texts, {SECRET_PASSPHRASE})
    assert leaks == [
        "said: a test passphrase (18 characters)",
        "pem: private key material",
    ]
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "server.log").write_text("ok\n")
    (tmp_path / "notes.txt").write_text("not a log\n")
    assert log_files(tmp_path) == [tmp_path / "deep" / "server.log"]


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def passphrase_file(folder: Path) -> Path:
    """The test passphrase in a file only its owner can read."""
    path = folder / "passphrase.txt"
    path.write_text(SECRET_PASSPHRASE + "\n")
    path.chmod(0o600)
    return path


def test_no_command_shows_the_passphrase_or_the_key(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fingerprints: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_file = passphrase_file(tmp_path)
    outputs = []
    code, text = run(capsys, "keys", "generate", "--out", tmp_path / "keys", "--passphrase-file", secret_file, "--json", "-")  # fmt: skip
    outputs.append(text)
    assert code == 0
    key = tmp_path / "keys" / "signing-key.pem"
    target = tmp_path / "fp"
    shutil.copytree(fingerprints["victim"], target)
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", SECRET_PASSPHRASE)
    code, text = run(capsys, "sign", target, "--key", key, "--json", "-")
    outputs.append(text)
    assert code == 0
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", SECRET_PASSPHRASE + "-wrong")
    code, text = run(capsys, "sign", target, "--key", key)
    outputs.append(text)
    assert code == 2 and "passphrase" in text
    code, text = run(capsys, "keys", "show", key, "--passphrase-file", secret_file, "--json", "-")
    outputs.append(text)
    assert code == 0
    outputs.extend(record.getMessage() for record in caplog.records)
    for text in outputs:
        assert SECRET_PASSPHRASE not in text
        assert "PRIVATE KEY" not in text
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def test_readable_key_and_passphrase_files_are_warned_about(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fingerprints: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = generate_keys(tmp_path / "keys", SECRET_PASSPHRASE.encode())
    secret_file = passphrase_file(tmp_path)
    target = tmp_path / "fp"
    shutil.copytree(fingerprints["victim"], target)
    args = ["sign", target, "--key", keys.private_key, "--passphrase-file", secret_file]
    args += ["--cert", keys.signer_certificate]  # no warning that a bare key cannot chain to a CA
    code, text = run(capsys, *args)
    assert code == 0 and "warning" not in text  # 0600 files: nothing to say
    secret_file.chmod(0o644)
    code, text = run(capsys, *args)
    assert code == 0
    assert f"warning: {secret_file} can be read by other users; chmod 600 it" in text
    keys.private_key.chmod(0o640)
    caplog.set_level(logging.WARNING, logger="reef_forensics.mlops.worker")
    from reef_forensics.mlops.worker import Worker

    config = Config(
        tracking_uri="http://127.0.0.1:9",
        queue=tmp_path / "queue.sqlite",
        key=keys.private_key,
        passphrase_file=secret_file,
        probes="builtin:default",
    )
    Worker(config, JobQueue(config.queue))  # the worker loads the key at start and says so
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"{keys.private_key} can be read by other users" in said
    assert f"{secret_file} can be read by other users" in said


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="Linux /proc only")
def test_the_passphrase_leaves_proc_environ_once_the_key_is_loaded(tmp_path: Path) -> None:
    """The attack: another process of the same user reads ``/proc/PID/environ`` of a running
    worker. ``os.environ.pop`` left the passphrase there for the life of the process; now the
    worker wipes it from its initial environment block once the key is loaded (and leaves the
    other variables as they were)."""
    keys = generate_keys(tmp_path / "keys", SECRET_PASSPHRASE.encode())
    JobQueue(tmp_path / "queue.sqlite")
    config = tmp_path / "reef.toml"
    config.write_text(
        f'tracking_uri = "sqlite:///{tmp_path / "mlflow.db"}"\nqueue = "queue.sqlite"\n'
        f'work_dir = "work"\n[signing]\nkey = "{keys.private_key}"\n'
        f'cert = "{keys.signer_certificate}"\n'
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("REEF_", "MLFLOW_"))},
        "REEF_KEY_PASSPHRASE": SECRET_PASSPHRASE,
        "REEF_NEIGHBOUR": "kept-as-it-was",
    }
    reef = Path(sys.executable).parent / "reef-forensics"
    process = subprocess.Popen(
        [str(reef), "worker", "--config", str(config), "--poll", "0.2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    environ = Path(f"/proc/{process.pid}/environ")
    secret = SECRET_PASSPHRASE.encode()
    try:
        deadline = time.monotonic() + 120
        while not environ.read_bytes():  # the kernel is still setting up the new program
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert secret in environ.read_bytes()  # there at the start: what the attack reads
        while secret in environ.read_bytes():
            assert process.poll() is None, "the worker stopped before loading its key"
            assert time.monotonic() < deadline, "the passphrase stayed in /proc/PID/environ"
            time.sleep(0.1)
        left = environ.read_bytes()
        assert process.poll() is None  # wiped while it runs, not gone because it ended
        assert b"REEF_KEY_PASSPHRASE" not in left and b"REEF_NEIGHBOUR=kept-as-it-was" in left
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


def test_the_webhook_signature_is_compared_in_constant_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every delivery's signature goes through hmac.compare_digest, and its answer decides."""
    import time

    from reef_forensics.plugins import webhook

    calls: list[tuple[bytes, bytes]] = []
    real = webhook.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhook.hmac, "compare_digest", spy)
    queue = JobQueue(tmp_path / "q.sqlite")
    body = (
        b'{"entity": "model_version", "action": "created", "data": {"name": "m", "version": "1"}}'
    )
    stamp = str(int(time.time()))
    good = webhook.signature("s3cret", "d-1", stamp, body)
    headers = {"X-MLflow-Delivery-Id": "d-1", "X-MLflow-Timestamp": stamp}
    bad = "v1," + "A" * (len(good) - 3)
    status, _ = webhook.handle_delivery(
        queue, "s3cret", {**headers, "X-MLflow-Signature": bad}, body
    )
    assert status == 401 and calls[-1] == (bad.encode(), good.encode())
    status, _ = webhook.handle_delivery(
        queue, "s3cret", {**headers, "X-MLflow-Signature": good}, body
    )
    assert status == 200 and calls[-1] == (good.encode(), good.encode()) and len(calls) == 2


@pytest.mark.parametrize("age", [-301, 301, 10_000])
def test_deliveries_outside_the_replay_window_are_refused(tmp_path: Path, age: int) -> None:
    import time

    from reef_forensics.plugins import webhook

    queue = JobQueue(tmp_path / "q.sqlite")
    body = (
        b'{"entity": "model_version", "action": "created", "data": {"name": "m", "version": "1"}}'
    )
    stamp = str(int(time.time()) - age)
    headers = {
        "X-MLflow-Delivery-Id": f"d-{age}",
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": webhook.signature("s3cret", f"d-{age}", stamp, body),
    }
    status, answer = webhook.handle_delivery(queue, "s3cret", headers, body, max_age=300)
    assert status == 401 and answer == {"error": "stale or future timestamp"}
    assert queue.counts()["pending"] == 0
    inside = {**headers, "X-MLflow-Timestamp": str(int(time.time()) - 299)}
    inside["X-MLflow-Signature"] = webhook.signature(
        "s3cret", f"d-{age}", inside["X-MLflow-Timestamp"], body
    )
    assert webhook.handle_delivery(queue, "s3cret", inside, body, max_age=300)[0] == 200
    assert webhook.handle_delivery(queue, "s3cret", inside, body, max_age=300)[1] == {
        "status": "replay ignored"
    }
