"""reef-forensics check from the command line, on fingerprints and on models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reef_forensics.cli.main import main
from reef_forensics.crypto.keys import generate_keys
from reef_forensics.demo.toy_models import make_model


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory, probes) -> list[Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("refs")
    return [
        make_model(root / f"ref{i}", probes.texts, family="llama", seed=100 + i) for i in range(3)
    ]


def test_check_on_models_finds_the_derivative_and_signs_the_findings(
    capsys: pytest.CaptureFixture[str],
    zoo: dict[str, Path],
    references: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", "check-test")
    keys = generate_keys(tmp_path / "keys", b"check-test")
    refs = [arg for r in references for arg in ("--reference", r)]
    code, out, err = run_cli(
        capsys, "check", "--victim", zoo["victim"], "--suspect", zoo["derived"], *refs,
        "--probes", "builtin:qa", "--out", tmp_path / "findings", "--key", keys.private_key,
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("VERDICT: derived")
    record = json.loads((tmp_path / "findings" / "findings.json").read_text())
    assert record["verdict"] == "derived" and record["probes"]["count"] == 440
    positive = {c["name"]: c for c in record["controls"]["positive"]}
    assert record["controls"]["positive_skipped"] is None and len(positive) == 4
    assert positive["MLP hidden-unit permutation (function-preserving)"]["score"] == pytest.approx(
        1.0, abs=1e-6
    )
    assert all(c["score"] > 0.8 for c in positive.values())  # every derivative reads as derived
    code, out, _ = run_cli(capsys, "verify", tmp_path / "findings", "--key", keys.public_key)
    assert code == 0 and "ok    findings consistency" in out
    (tmp_path / "findings" / "findings.json").write_text(
        json.dumps({**record, "verdict": "unrelated"})
    )
    code, out, _ = run_cli(capsys, "verify", tmp_path / "findings", "--key", keys.public_key)
    assert code == 1 and "FAIL  file findings.json" in out


def test_check_on_fingerprints_with_json_to_stdout(
    capsys: pytest.CaptureFixture[str], fingerprints: dict[str, Path]
) -> None:
    code, out, _ = run_cli(
        capsys, "check", "--victim", fingerprints["victim"], "--suspect", fingerprints["unrelated"],
        "--reference", fingerprints["bert"], "--json", "-",
    )  # fmt: skip
    assert code == 0
    record = json.loads(out)
    assert record["verdict"] == "inconclusive" and record["panel_size"] == 1
    assert record["references"][0]["digest"].startswith("sha256:")


def test_check_bad_inputs(
    capsys: pytest.CaptureFixture[str],
    fingerprints: dict[str, Path],
    zoo: dict[str, Path],
    tmp_path: Path,
) -> None:
    cases = [
        (["--victim", tmp_path / "none", "--suspect", fingerprints["victim"]], "model not found"),
        (
            [
                "--victim",
                fingerprints["victim"],
                "--suspect",
                fingerprints["derived"],
                "--resamples",
                "3",
            ],
            "--resamples must be at least 200",
        ),
        (
            [
                "--victim",
                fingerprints["victim"],
                "--suspect",
                fingerprints["derived"],
                "--probes",
                "builtin:qa",
            ],
            "--probes applies only when the victim is a model",
        ),
        (
            [
                "--victim",
                fingerprints["victim"],
                "--suspect",
                zoo["victim"],
                "--reference",
                fingerprints["bert"],
                "--reference",
                fingerprints["bert"],
            ],
            "is the same model as",
        ),
    ]
    cases.append(
        (
            [
                "--victim",
                fingerprints["victim"],
                "--suspect",
                fingerprints["derived"],
                "--merge-with",
                zoo["unrelated"],
            ],
            "--merge-with adds a positive control",
        )
    )
    for args, message in cases:
        code, _, err = run_cli(capsys, "check", *args)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, err)


def test_nan_in_a_fingerprint_is_a_clear_error_not_a_number(
    capsys: pytest.CaptureFixture[str], fingerprints: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from reef_forensics.digests import canonical_json, sha256_file

    target = tmp_path / "nan"
    shutil.copytree(fingerprints["derived"], target)
    tensors = load_file(target / "representations.safetensors")
    tensors["block_3"][0, 0] = np.nan
    save_file(tensors, target / "representations.safetensors")
    manifest = json.loads((target / "fingerprint.json").read_text())
    manifest["files"]["representations.safetensors"] = sha256_file(
        target / "representations.safetensors"
    )
    (target / "fingerprint.json").write_bytes(canonical_json(manifest))
    code, out, err = run_cli(
        capsys,
        "check",
        "--victim",
        fingerprints["victim"],
        "--suspect",
        target,
    )
    assert code == 2 and out == ""
    assert "'block_3' holds NaN or infinite values" in err.strip()


def test_a_suspect_whose_tokenizer_cannot_encode_the_probes_is_refused(
    capsys: pytest.CaptureFixture[str], zoo: dict[str, Path], tmp_path: Path
) -> None:
    probes = tmp_path / "p.jsonl"
    probes.write_text(
        "".join(
            json.dumps({"text": t}) + "\n"
            for t in [f"text number {i}" for i in range(12)] + ["\x07\x07"]
        )
    )
    code, _, err = run_cli(
        capsys,
        "check",
        "--victim",
        zoo["victim"],
        "--suspect",
        zoo["bert"],
        "--probes",
        probes,
        "--no-positive-controls",
    )
    assert code == 2 and "tokenizes to nothing" in err


def test_verify_catches_a_verdict_that_its_own_numbers_do_not_support(
    capsys: pytest.CaptureFixture[str], fingerprints: dict[str, Path], tmp_path: Path
) -> None:
    """A canonical, re-signed record whose verdict was edited: only the consistency check sees it."""
    from reef_forensics.crypto.bundle import sign_directory
    from reef_forensics.crypto.keys import load_signer
    from reef_forensics.digests import canonical_json

    keys = generate_keys(tmp_path / "keys", b"pw")
    code, _, err = run_cli(
        capsys, "check", "--victim", fingerprints["victim"], "--suspect", fingerprints["unrelated"],
        "--reference", fingerprints["gpt2"], "--reference", fingerprints["bert"], "--out", tmp_path / "case",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "case" / "findings.json").read_text())
    # two references: the CKA tests do not decide, and the neuron-matching test finds nothing
    assert record["verdict"] == "inconclusive"
    signer = load_signer(keys.private_key, passphrase=b"pw")
    sign_directory(tmp_path / "case", signer)
    code, out, _ = run_cli(capsys, "verify", tmp_path / "case", "--key", keys.public_key)
    assert code == 0, out
    (tmp_path / "case" / "findings.json").write_bytes(
        canonical_json({**record, "verdict": "derived"})
    )
    sign_directory(tmp_path / "case", signer)  # the signer vouches for the edited record
    code, out, _ = run_cli(capsys, "verify", tmp_path / "case", "--key", keys.public_key)
    assert code == 1
    assert (
        "FAIL  findings consistency: findings.json says 'derived', but its own numbers and rule give 'inconclusive'"
        in out
    )


def test_verify_recomputes_the_tests_from_the_recorded_block_scores(
    capsys: pytest.CaptureFixture[str], fingerprints: dict[str, Path], tmp_path: Path
) -> None:
    """An edited per-block reference score changes the layer test: the recorded p-values no
    longer follow, and verify says which field."""
    from reef_forensics.crypto.bundle import sign_directory
    from reef_forensics.crypto.keys import load_signer
    from reef_forensics.digests import canonical_json

    keys = generate_keys(tmp_path / "keys", b"pw")
    code, _, err = run_cli(
        capsys, "check", "--victim", fingerprints["victim"], "--suspect", fingerprints["derived"],
        "--reference", fingerprints["unrelated"], "--reference", fingerprints["bert"],
        "--reference", fingerprints["gpt2"], "--out", tmp_path / "case", "--no-positive-controls",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "case" / "findings.json").read_text())
    assert record["tests"]["layer"]["layers_tested"] == len(record["references"][0]["block_scores"])
    signer = load_signer(keys.private_key, passphrase=b"pw")
    layer = record["tests"]["layer"]["layer"]
    index = [a["layer_a"] for a in record["per_layer"]["alignment"] if a["layer_a"] != "embeddings"]
    edited = json.loads(json.dumps(record))
    edited["references"][0]["block_scores"][index.index(layer)] = 0.0
    (tmp_path / "case" / "findings.json").write_bytes(canonical_json(edited))
    sign_directory(tmp_path / "case", signer)
    code, out, _ = run_cli(capsys, "verify", tmp_path / "case", "--key", keys.public_key)
    assert code == 1
    assert "findings consistency: findings.json:" in out and "does not follow" in out, out


def test_check_report_names_the_evidence_a_ca_cannot_check_and_is_right(
    capsys: pytest.CaptureFixture[str],
    fingerprints: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 16: signing fingerprints with --key alone, then the report with a certificate, made a
    report that `verify --trust CA` finds NOT VALID, and nothing said so. Now each command that
    signs warns when it signs with a bare key, and `check --report` names each fingerprint the
    CA cannot check; the warnings are borne out by `verify --trust`."""
    import shutil

    monkeypatch.setenv("REEF_KEY_PASSPHRASE", "check-test")
    keys = generate_keys(tmp_path / "keys", b"check-test")
    victim = Path(shutil.copytree(fingerprints["victim"], tmp_path / "victim"))
    code, _, err = run_cli(capsys, "sign", victim, "--key", keys.private_key)
    assert code == 0
    assert f"warning: {victim} is signed with a bare key (no --cert)" in err
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", "check-test")  # read once, then dropped
    code, _, err = run_cli(
        capsys, "check", "--victim", victim, "--suspect", fingerprints["unrelated"],
        "--out", tmp_path / "case", "--key", keys.private_key, "--cert", keys.signer_certificate,
        "--report", tmp_path / "case.pdf",
    )  # fmt: skip
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("reef-forensics: warning: ")]
    assert len(warnings) == 2, err
    assert f"the victim fingerprint {victim} is signed with a bare key" in warnings[0]
    assert "will find the report NOT VALID" in warnings[0]
    assert f"the fingerprint {fingerprints['unrelated']} is not signed" in warnings[1]
    code, out, _ = run_cli(capsys, "verify", tmp_path / "case.pdf", "--trust", keys.ca_certificate)
    assert code == 1 and "FAIL  attached victim fingerprint: certificate chain" in out
    code, out, _ = run_cli(capsys, "verify", tmp_path / "case.pdf", "--key", keys.public_key)
    assert code == 0  # what the bare key can check, it checks
