"""Every example runs, as a user would run it, and does what it says (small models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    "HF_HUB_OFFLINE": "1",
    "REEF_KEY_PASSPHRASE": "example-test",
}


def run(*command: object, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def python_api(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("python-api")
    done = run(sys.executable, ROOT / "examples/python_api.py", out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verdict: derived" in done.stdout and "(VALID)" in done.stdout, done.stdout
    return out


def test_python_api_fingerprints_checks_and_verifies(python_api: Path) -> None:
    record = json.loads((python_api / "findings" / "findings.json").read_text())
    assert record["verdict"] == "derived" and record["panel_size"] == 3
    assert (python_api / "report.pdf").read_bytes().startswith(b"%PDF-2.0")


def test_the_auditor_example_uses_public_tools_only(python_api: Path, tmp_path: Path) -> None:
    report, ca = python_api / "report.pdf", python_api / "keys" / "ca-cert.pem"
    done = run("bash", ROOT / "examples/auditor.sh", report, ca, tmp_path / "work")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "AUDIT PASSED" in done.stdout and "Verified OK" in done.stdout
    assert "verdict: derived" in done.stdout
    data = bytearray(report.read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "changed.pdf").write_bytes(bytes(data))
    refused = run(
        "bash", ROOT / "examples/auditor.sh", tmp_path / "changed.pdf", ca, tmp_path / "w2"
    )
    assert refused.returncode != 0 and "AUDIT PASSED" not in refused.stdout


def test_screening_on_registration_with_a_real_mlflow_server(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run("bash", ROOT / "examples/mlflow_server.sh", tmp_path / "registry", port, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    section = out[out.index("suspect-derived v1:") :]
    assert "reef.screen.victim.v1 = derived" in section.split("suspect-unrelated v1:")[0]
    assert "reef.screen.victim.v1 = unrelated" in section.split("suspect-unrelated v1:")[1]
    assert out.count("reef.status = done") == 6


def test_the_command_line_walkthrough(tmp_path: Path) -> None:
    done = run("bash", ROOT / "examples/quickstart.sh", tmp_path / "q", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "VERDICT: derived" in done.stdout and "VERDICT: unrelated" in done.stdout
    assert done.stdout.count("VALID: ") >= 3 and "NOT VALID" not in done.stdout


def test_the_accuracy_benchmark_runs_on_small_models(tmp_path: Path, probes) -> None:  # type: ignore[no-untyped-def]
    from reef_forensics.demo.toy_models import make_model

    victim = make_model(tmp_path / "victim", probes.texts, seed=0)
    unrelated = [make_model(tmp_path / f"u{s}", probes.texts, seed=s) for s in (31, 32)]
    encoder = make_model(tmp_path / "bert", probes.texts, seed=7, family="bert")  # as MiniLM
    done = run(
        sys.executable, ROOT / "bench/accuracy.py", "--smollm2", victim,
        "--unrelated", unrelated[0], "--unrelated", unrelated[1], "--minilm", encoder,
        "--finetune-steps", 5, "--tiny-steps", 5, "--same-arch-steps", 2, "--bert-steps", 2,
        "--probes-limit", 200,
        "--cache", tmp_path / "cache", "--json", tmp_path / "accuracy.json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "accuracy.json").read_text())
    assert result["confusion"]["unrelated"]["derived"] == 0  # no false positive
    assert sum(result["confusion"]["derived"].values()) == 11  # 10 of the decoder, 1 encoder
    rows = result["rows"]
    assert sum(r["suspect"].startswith("same architecture") for r in rows) == 6
    for row in rows:  # every test's p-value is in every row
        assert row["mean_test_p_value"] is not None and row["layer_test"]["p_value"] is not None
        assert row["units_test"]["ran"] and row["log10_p_value"] is not None
    assert "combined p" in done.stdout and "units p" in done.stdout
