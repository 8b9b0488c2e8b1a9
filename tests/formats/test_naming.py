"""Names in findings and reports for local models (`fingerprint --name`), the reproduction
commands a report prints, and records made before names existed."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from reef_forensics.cli.main import main
from reef_forensics.crypto.keys import generate_keys
from reef_forensics.demo.toy_models import derive, make_model
from reef_forensics.formats.findings_record import FindingsRecord
from reef_forensics.formats.naming import label, probe_label, registry_problem, reproduction

PASS = "naming-test"


def test_labels_old_records_as_before_and_registered_ones_by_uri() -> None:
    assert label({"name": "victim"}) == "victim"  # findings made before `registry`
    registry = {"name": "flagship", "version": "3", "uri": "models:/flagship/3"}
    assert label({"name": "flagship", "registry": registry}) == (
        "flagship version 3 (models:/flagship/3)"
    )
    assert registry_problem(registry) is None
    assert registry_problem({**registry, "uri": "models:/other/3"}) is not None
    assert registry_problem({**registry, "version": "x"}) is not None
    assert probe_label("/srv/reef/probes.txt") == "probes.txt"
    assert probe_label("builtin:default") == "builtin:default"


def test_a_named_local_case_reports_its_names_and_real_commands(
    tmp_path: Path, probes: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = probes.texts  # type: ignore[attr-defined]
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASS)
    monkeypatch.chdir(tmp_path)
    keys = generate_keys(tmp_path / "keys", PASS.encode())
    victim = make_model(tmp_path / "models" / "v1-final", texts, seed=0)
    suspect = derive(victim, tmp_path / "models" / "suspect-dir", noise=0.1, prune=0.3)
    refs = [make_model(tmp_path / "models" / f"ref{i}", texts, seed=50 + i) for i in range(3)]
    probe_file = tmp_path / "srv" / "probes.txt"
    probe_file.parent.mkdir()
    probe_file.write_text("\n".join(texts[:40]) + "\n")
    sign = ["--key", str(keys.private_key), "--cert", str(keys.signer_certificate)]
    made = {}
    for model, name in [(victim, "Acme chat 7B"), (suspect, None), *[(r, None) for r in refs]]:
        out = tmp_path / "fp" / model.name
        named = ["--name", name] if name else []
        monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASS)  # each command forgets it once read
        argv = ["fingerprint", str(model), "--out", str(out), "--probes", str(probe_file)]
        assert main([*argv, *named, *sign, "--no-progress"]) == 0
        made[model.name] = out
    manifest = json.loads((made["v1-final"] / "fingerprint.json").read_text())
    assert manifest["model"]["name"] == "Acme chat 7B" and "registry" not in manifest["model"]
    refs_args = [a for r in refs for a in ("--reference", str(made[r.name]))]
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASS)
    code = main(
        ["check", "--victim", str(made["v1-final"]), "--suspect", str(made["suspect-dir"]),
         *refs_args, "--out", str(tmp_path / "case"), "--report", str(tmp_path / "case.pdf"),
         *sign, "--no-progress"]
    )  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "case" / "findings.json").read_text())
    assert record["victim"]["name"] == "Acme chat 7B" and "registry" not in record["victim"]
    text = subprocess.run(
        ["pdftotext", "-layout", str(tmp_path / "case.pdf"), "-"], capture_output=True, text=True
    ).stdout
    flat = " ".join(text.split())
    assert "Victim (protected model) Acme chat 7B" in flat and "Suspect suspect-dir" in flat
    assert str(probe_file.parent) not in text and "probes.txt: 40 texts" in flat
    appendix = re.sub(r"\\\s*\n\s*", " ", text.split("Commands", 1)[1].split("Digests", 1)[0])
    commands = [" ".join(line.split()) for line in appendix.splitlines() if line.strip()]
    unwrapped = [
        " ".join(c.replace("\\\n", " ").split())
        for c in reproduction(FindingsRecord.from_json(record))
    ]
    assert commands == unwrapped and commands[0] == (
        "reef-forensics fingerprint Acme_chat_7B --out Acme_chat_7B.fingerprint --probes probes.txt"
    )
    assert commands[-1].startswith(
        "reef-forensics verify report.pdf --trust CA_CERT --evidence Acme_chat_7B.fingerprint "
        "suspect-dir.fingerprint ref0.fingerprint"
    )
    code = main(
        ["verify", str(tmp_path / "case.pdf"), "--trust", str(keys.ca_certificate),
         "--evidence", *[str(p) for p in made.values()]]
    )  # fmt: skip
    assert code == 0
