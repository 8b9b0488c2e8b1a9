"""The command line: happy paths, JSON output, and the bad-input matrix (exit 2, one line)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reef_forensics import ProbeSet, read_fingerprint
from reef_forensics.cli.main import main
from reef_forensics.formats.fingerprint import REPRESENTATIONS


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_probes(path: Path, texts: tuple[str, ...] | list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture
def probe_file(tmp_path: Path, small_probes: ProbeSet) -> Path:
    return write_probes(tmp_path / "probes.jsonl", small_probes.texts)


def test_fingerprint_then_compare(
    capsys: pytest.CaptureFixture[str], zoo: dict[str, Path], probe_file: Path, tmp_path: Path
) -> None:
    for name in ("victim", "derived"):
        code, out, err = run_cli(
            capsys,
            "fingerprint",
            zoo[name],
            "--out",
            tmp_path / name,
            "--probes",
            probe_file,
            "--batch-size",
            8,
        )
        assert code == 0, err
        assert f"fingerprint {tmp_path / name}" in out and "probes digest" in out
    code, out, err = run_cli(
        capsys, "compare", tmp_path / "victim", tmp_path / "derived", "--json", tmp_path / "c.json"
    )
    assert code == 0, err
    assert "Headline (REEF's relative depth): A block_2 vs B block_2" in out
    assert "Sample-size stability" in out
    record = json.loads((tmp_path / "c.json").read_text())
    assert {"estimator", "matrix", "layers_a", "layers_b", "headline", "probes_digest"} <= set(
        record
    )
    assert f"CKA {record['headline']['score']:6.4f}" in out
    assert record["probes_digest"] == read_fingerprint(tmp_path / "victim").probes_digest


def test_json_to_stdout_is_only_json(
    capsys: pytest.CaptureFixture[str], fingerprints: dict[str, Path]
) -> None:
    code, out, _ = run_cli(
        capsys,
        "compare",
        fingerprints["victim"],
        fingerprints["bert"],
        "--estimator",
        "rbf-biased",
        "--json",
        "-",
    )
    assert code == 0
    assert json.loads(out)["estimator"] == "rbf-biased"
    code, out, _ = run_cli(capsys, "probes", "builtin:qa", "--json", "-")
    assert code == 0 and json.loads(out)["count"] >= 400


def test_fingerprint_json_summary(
    capsys: pytest.CaptureFixture[str], zoo: dict[str, Path], probe_file: Path, tmp_path: Path
) -> None:
    code, out, _ = run_cli(
        capsys,
        "fingerprint",
        zoo["bert"],
        "--out",
        tmp_path / "fp",
        "--probes",
        probe_file,
        "--json",
        "-",
        "--pooling",
        "last",
        "--max-length",
        "8",
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["pooling"] == "last" and summary["num_samples"] == 40
    assert read_fingerprint(tmp_path / "fp").manifest["extraction"]["truncated"] > 0


def poison_model(src: Path, dst: Path) -> Path:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(src)
    with torch.no_grad():
        model.norm.weight.fill_(float("inf"))
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def t5_model(dst: Path, texts: tuple[str, ...]) -> Path:
    from transformers import T5Config, T5Model

    from reef_forensics.demo.toy_models import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=200)
    T5Model(
        T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
    ).save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


BAD_INPUTS = {
    "missing-model": (
        "model not found",
        lambda z, t, p, f: ["fingerprint", t / "nope", "--out", t / "o", "--probes", p],
    ),
    "folder-not-a-model": (
        "not a model folder",
        lambda z, t, p, f: ["fingerprint", t, "--out", t / "o", "--probes", p],
    ),
    "truncated-safetensors": (
        "ends past the end of the file",
        lambda z, t, p, f: ["fingerprint", _truncated(z, t), "--out", t / "o", "--probes", p],
    ),
    "pickle-only": (
        "--allow-pickle",
        lambda z, t, p, f: ["fingerprint", _pickled(z, t), "--out", t / "o", "--probes", p],
    ),
    "no-usable-hidden-states": (
        "encoder-decoder",
        lambda z, t, p, f: [
            "fingerprint",
            t5_model(t / "t5", f.texts),
            "--out",
            t / "o",
            "--probes",
            p,
        ],
    ),
    "empty-probe-file": (
        "has 0 text",
        lambda z, t, p, f: [
            "fingerprint",
            z["victim"],
            "--out",
            t / "o",
            "--probes",
            _text(t / "e.txt", ""),
        ],
    ),
    "one-line-probe-file": (
        "has 1 text",
        lambda z, t, p, f: [
            "fingerprint",
            z["victim"],
            "--out",
            t / "o",
            "--probes",
            _text(t / "one.txt", "hello\n"),
        ],
    ),
    "text-tokenizes-to-nothing": (
        "tokenizes to nothing",
        lambda z, t, p, f: [
            "fingerprint",
            z["bert"],
            "--out",
            t / "o",
            "--probes",
            write_probes(t / "n.jsonl", [*f.texts[:12], "\x07"]),
        ],
    ),
    "inf-activations": (
        "NaN or infinite activations",
        lambda z, t, p, f: [
            "fingerprint",
            poison_model(z["victim"], t / "inf"),
            "--out",
            t / "o",
            "--probes",
            p,
        ],
    ),
    "different-probe-digests": (
        "different probe sets",
        lambda z, t, p, f: ["compare", f_a(z, t, p), f_b(z, t, f)],
    ),
    "fingerprint-missing-file": (
        "representations.safetensors is missing",
        lambda z, t, p, f: ["compare", _damaged(t, f_a(z, t, p), "delete"), f_a(z, t, p)],
    ),
    "fingerprint-edited-file": (
        "does not match the digest",
        lambda z, t, p, f: ["compare", _damaged(t, f_a(z, t, p), "edit"), f_a(z, t, p)],
    ),
    "fingerprint-not-a-directory": (
        "not a directory",
        lambda z, t, p, f: ["compare", t / "nothing", t / "nothing"],
    ),
    "unknown-estimator": (
        "unknown estimator",
        lambda z, t, p, f: ["compare", f_a(z, t, p), f_a(z, t, p), "--estimator", "cosine"],
    ),
    "batch-size-zero": (
        "--batch-size must be at least 1",
        lambda z, t, p, f: [
            "fingerprint",
            z["victim"],
            "--out",
            t / "o",
            "--probes",
            p,
            "--batch-size",
            "0",
        ],
    ),
    "out-exists": (
        "already exists",
        lambda z, t, p, f: ["fingerprint", z["victim"], "--out", f_a(z, t, p), "--probes", p],
    ),
    "no-cuda": (
        "no CUDA device",
        lambda z, t, p, f: [
            "fingerprint",
            z["victim"],
            "--out",
            t / "o",
            "--probes",
            p,
            "--device",
            "cuda",
        ],
    ),
}


def _text(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


def _truncated(zoo: dict[str, Path], tmp: Path) -> Path:
    folder = tmp / "trunc"
    shutil.copytree(zoo["victim"], folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])
    return folder


def _pickled(zoo: dict[str, Path], tmp: Path) -> Path:
    folder = tmp / "pickled"
    shutil.copytree(zoo["victim"], folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle payload that must never be loaded")
    return folder


def f_a(zoo: dict[str, Path], tmp: Path, probe_file: Path) -> Path:
    out = tmp / "fa"
    if not out.exists():
        assert (
            main(
                [
                    "fingerprint",
                    str(zoo["victim"]),
                    "--out",
                    str(out),
                    "--probes",
                    str(probe_file),
                    "--no-progress",
                ]
            )
            == 0
        )
    return out


def f_b(zoo: dict[str, Path], tmp: Path, small: ProbeSet) -> Path:
    out = tmp / "fb"
    other = write_probes(tmp / "other.jsonl", small.texts[::-1])
    assert (
        main(
            [
                "fingerprint",
                str(zoo["victim"]),
                "--out",
                str(out),
                "--probes",
                str(other),
                "--no-progress",
            ]
        )
        == 0
    )
    return out


def _damaged(tmp: Path, src: Path, how: str) -> Path:
    copy = tmp / f"damaged-{how}"
    shutil.copytree(src, copy)
    if how == "delete":
        (copy / REPRESENTATIONS).unlink()
    else:
        data = bytearray((copy / REPRESENTATIONS).read_bytes())
        data[-5] ^= 0xFF
        (copy / REPRESENTATIONS).write_bytes(bytes(data))
    return copy


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            marks=pytest.mark.skipif(
                c == "no-cuda" and torch.cuda.is_available(), reason="a GPU is present"
            ),
        )
        for c in sorted(BAD_INPUTS)
    ],
)
def test_bad_input_gives_one_line_exit_2_and_no_partial_output(
    capsys: pytest.CaptureFixture[str],
    zoo: dict[str, Path],
    tmp_path: Path,
    probe_file: Path,
    small_probes: ProbeSet,
    case: str,
) -> None:
    message, build = BAD_INPUTS[case]
    args = build(zoo, tmp_path, probe_file, small_probes)
    capsys.readouterr()
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reef-forensics: error: "), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new, nothing half-written


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fingerprint"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


def test_internal_errors_exit_1_with_one_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fingerprints: dict[str, Path],
) -> None:
    import reef_forensics.cli.fingerprints as cli

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "compare_fingerprints", explode)
    code, _, err = run_cli(capsys, "compare", fingerprints["victim"], fingerprints["victim"])
    assert code == 1
    assert err.strip().splitlines() == [
        "reef-forensics: error: internal error: RuntimeError: boom second line (set REEF_DEBUG=1 for a traceback)"
    ]


def test_console_script_runs_as_a_real_process(
    fingerprints: dict[str, Path], tmp_path: Path
) -> None:
    exe = shutil.which("reef-forensics", path=os.path.dirname(sys.executable)) or "reef-forensics"
    ok = subprocess.run(
        [exe, "compare", str(fingerprints["victim"]), str(fingerprints["derived"]), "--json", "-"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["headline"]["score"] > 0.9
    bad = subprocess.run(
        [exe, "fingerprint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"reef-forensics: error: model not found: {tmp_path / 'missing'}"
    ]
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    assert version.stdout.startswith("reef-forensics ")


def test_progress_bar_goes_to_stderr_when_asked(
    capsys: pytest.CaptureFixture[str], zoo: dict[str, Path], probe_file: Path, tmp_path: Path
) -> None:
    code, out, err = run_cli(
        capsys,
        "fingerprint",
        zoo["victim"],
        "--out",
        tmp_path / "fp",
        "--probes",
        probe_file,
        "--progress",
    )
    assert code == 0
    assert "fingerprint victim" in err and "40/40" in err
    assert "40/40" not in out
    code, _, err = run_cli(capsys, "compare", tmp_path / "fp", tmp_path / "fp", "--progress")
    assert code == 0 and "compare" in err and "10/10" in err
    code, _, err = run_cli(capsys, "compare", tmp_path / "fp", tmp_path / "fp", "--no-progress")
    assert code == 0 and err == ""
