"""Shared fixtures: tiny models built on the spot, and their fingerprints (session-scoped)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from reef_forensics import ProbeSet, fingerprint_model, load_probes
from reef_forensics.crypto.bundle import sign_directory
from reef_forensics.crypto.keys import GeneratedKeys, Signer, generate_keys, load_signer
from reef_forensics.demo.toy_models import derive, make_model
from tests.gguf_export import export_llama_gguf

SIGNED_CASE_PASSPHRASE = b"passphrase of the signed case"


@pytest.fixture(scope="session")
def probes() -> ProbeSet:
    return load_probes()


@pytest.fixture(scope="session")
def small_probes(probes: ProbeSet) -> ProbeSet:
    """The first 40 built-in texts: enough for CKA, fast for extraction tests."""
    return ProbeSet(name="builtin:default[:40]", texts=probes.texts[:40])


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory, probes: ProbeSet) -> dict[str, Path]:
    """victim, a derivative of it, an unrelated model of the same family, GPT-2, BERT, RoBERTa,
    and the victim as a GGUF file."""
    root = tmp_path_factory.mktemp("zoo")
    models = {
        "victim": make_model(root / "victim", probes.texts, family="llama", seed=0),
        "unrelated": make_model(root / "unrelated", probes.texts, family="llama", seed=7),
        "gpt2": make_model(root / "gpt2", probes.texts, family="gpt2", seed=0),
        "bert": make_model(root / "bert", probes.texts, family="bert", seed=0),
        "roberta": make_model(root / "roberta", probes.texts, family="roberta", seed=0),
    }
    models["derived"] = derive(models["victim"], root / "derived", noise=0.1, prune=0.3)
    gguf_dir = root / "victim-gguf"
    gguf_dir.mkdir()
    models["gguf"] = export_llama_gguf(models["victim"], gguf_dir / "victim.gguf")
    return models


@pytest.fixture(scope="session")
def fingerprints(
    tmp_path_factory: pytest.TempPathFactory, zoo: dict[str, Path], probes: ProbeSet
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fingerprints")
    return {
        name: fingerprint_model(zoo[name], root / name, probes=probes).path
        for name in ("victim", "derived", "unrelated", "bert", "gpt2")
    }


@dataclass(frozen=True)
class SignedCase:
    """Keys (a P-256 key with a CA-issued certificate), signed copies of the session's
    fingerprints, the signed findings `check` draws from them, and the signed PDF report."""

    keys: GeneratedKeys
    signer: Signer
    fingerprints: dict[str, Path]
    findings: Path
    report: Path


@pytest.fixture(scope="session")
def signed_case(
    tmp_path_factory: pytest.TempPathFactory, fingerprints: dict[str, Path]
) -> SignedCase:
    """What `check --key --cert --report` writes, made once per session through the library
    (the tamper and fuzz tests start from these valid files)."""
    from reef_forensics.analysis.check_paths import check_paths
    from reef_forensics.report.render import write_report

    root = tmp_path_factory.mktemp("signed-case")
    keys = generate_keys(root / "keys", SIGNED_CASE_PASSPHRASE)
    signer = load_signer(
        keys.private_key, passphrase=SIGNED_CASE_PASSPHRASE, certificate=keys.signer_certificate
    )
    signed = {}
    for name in ("victim", "derived", "unrelated", "bert", "gpt2"):
        shutil.copytree(fingerprints[name], root / name)
        sign_directory(root / name, signer)
        signed[name] = root / name
    findings = check_paths(
        signed["victim"],
        signed["derived"],
        [signed[name] for name in ("unrelated", "bert", "gpt2")],
        workdir=root / "work",
    )
    findings_dir = findings.write(root / "findings", signer=signer).parent
    report = write_report(findings_dir, root / "report.pdf", signer, victim=signed["victim"])
    return SignedCase(keys, signer, signed, findings_dir, report)


# --- the long runs: `pytest --long` (CI passes it once per build: `make test PYTEST_ARGS=--long`) ---


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="also run the tests marked long (faults, load, kills: about 10 minutes)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="a long run: pass --long (CI does, once per build)")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


# --- the secret-leak scan (tests/leaks.py): every captured output and log file of the session ---

_outputs: list[tuple[str, str]] = []
_basetemp: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _remember_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _basetemp.append(tmp_path_factory.getbasetemp())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for title, text in report.sections:
        _outputs.append((f"{report.nodeid} [{title}]", text))
    if report.failed:
        _outputs.append((f"{report.nodeid} [failure report]", str(report.longrepr)))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.leaks import find_leaks, known_passphrases, log_files

    files = [(str(p), p.read_text(errors="replace")) for root in _basetemp for p in log_files(root)]
    leaks = find_leaks([*_outputs, *files], known_passphrases())
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "secret leak scan", red=True)
            for leak in dict.fromkeys(leaks):  # a test's sections repeat in its teardown report
                reporter.write_line(f"SECRET LEAK: {leak}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
