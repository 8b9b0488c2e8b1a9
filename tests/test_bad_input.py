"""The bad-input matrix: every command, given input it cannot use, exits 2 (or the code its
documentation gives), prints exactly one stderr line that starts ``reef-forensics: error:`` and
names the problem, never a traceback, and leaves nothing behind.

One table, `CASES`, holds every case; each builds its input in a fresh folder, and the folder
(recursively) and the shared inputs must look the same before and after the command. `serve` and
`worker` run forever when their configuration is sound, so only their start-up checks are here.
Usage errors that argparse itself reports (usage text plus an error line) are counted apart, in
`USAGE_ERRORS`: their contract is exit 2 and a last line naming the argument.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reef_forensics import ProbeSet, fingerprint_model
from reef_forensics.cli.main import main
from reef_forensics.crypto.bundle import sign_directory
from reef_forensics.crypto.keys import generate_keys, load_signer
from reef_forensics.mlops.jobqueue import JobQueue
from tests.tls_certs import encrypt_key, make_server_certs

PASS = "bad-input-passphrase"
REEF = str(Path(sys.executable).parent / "reef-forensics")


@dataclass
class World:
    """Sound inputs shared by every case (made once): keys, probes, fingerprints, findings."""

    root: Path
    keys: Path
    other_keys: Path
    probes: Path
    fp: Path
    fp_suspect: Path
    fp_other_probes: Path
    findings: Path
    victim: Path

    @property
    def key(self) -> Path:
        return self.keys / "signing-key.pem"

    @property
    def pub(self) -> Path:
        return self.keys / "signing-key.pub.pem"

    @property
    def cert(self) -> Path:
        return self.keys / "signer-cert.pem"


@dataclass
class Ctx:
    """One case's folder, the shared inputs, and what must stay alive while the case runs."""

    tmp: Path
    world: World
    hold: list[Any] = field(default_factory=list)

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def config(self, text: str, *, queue: bool = True) -> Path:
        """A TOML configuration in the case folder; with ``queue``, the deployment's queue
        exists already (`config check` and every deployment make it), so that creating it is not
        mistaken for output left behind."""
        if queue:
            JobQueue(self.tmp / "queue.sqlite")
            text = 'queue = "queue.sqlite"\nwork_dir = "work"\n' + text
        return self.file("reef.toml", text)

    def tracking(self) -> str:
        return f'tracking_uri = "sqlite:///{self.tmp / "mlflow.db"}"\n'

    def copy(self, source: Path, name: str) -> Path:
        return Path(shutil.copytree(source, self.tmp / name))


@dataclass(frozen=True)
class Case:
    build: Callable[[Ctx], list[object]]
    #: what the error line says (every part, for a tuple)
    message: str | tuple[str, ...]
    code: int = 2
    env: dict[str, str] = field(default_factory=dict)
    #: for a documented result that is not an error (verify: exit 1, NOT VALID): the line that
    #: stdout must hold instead of an error line
    result: str | None = None


def busy_port(ctx: Ctx) -> int:
    """A port that something else listens on, for as long as the case runs."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    ctx.hold.append(held)
    return int(held.getsockname()[1])


def edited_manifest(ctx: Ctx) -> Path:
    copy = ctx.copy(ctx.world.fp, "edited")
    manifest = json.loads((copy / "fingerprint.json").read_text())
    manifest["model"]["name"] = "someone-else"
    (copy / "fingerprint.json").write_text(json.dumps(manifest, indent=1))
    return copy


def tampered_findings(ctx: Ctx) -> Path:
    copy = ctx.copy(ctx.world.findings, "findings")
    record = json.loads((copy / "findings.json").read_text())
    record["score"] = 0.999
    (copy / "findings.json").write_text(json.dumps(record))
    return copy


def signed_by_another_key(ctx: Ctx) -> Path:
    """The victim's fingerprint, signed with a key the report's signer does not trust: `check
    --report` gets as far as the report before it is refused (issue 16: it left the signed
    findings behind)."""
    copy = ctx.copy(ctx.world.fp, "victim")
    other = ctx.world.other_keys
    sign_directory(
        copy,
        load_signer(
            other / "signing-key.pem",
            passphrase=PASS.encode(),
            certificate=other / "signer-cert.pem",
        ),
    )
    return copy


def truncated_gguf(ctx: Ctx) -> Path:
    data = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", 1 << 40)
    return ctx.file("model.gguf", data)


def fp(ctx: Ctx, model: Path, *extra: object) -> list[object]:
    """`fingerprint MODEL` into the case folder, on the small probe file."""
    return ["fingerprint", model, "--out", ctx.tmp / "out", "--probes", ctx.world.probes, *extra]


def victim(ctx: Ctx, *extra: object) -> list[object]:
    return fp(ctx, ctx.world.victim, *extra)


def check_fps(ctx: Ctx, *extra: object, victim: Path | None = None) -> list[object]:
    """`check` of the derived model's fingerprint against the victim's."""
    chosen = victim or ctx.world.fp
    return ["check", "--victim", chosen, "--suspect", ctx.world.fp_suspect, *extra]


def report(ctx: Ctx, findings: Path, *extra: object, out: Path | None = None) -> list[object]:
    target = out or ctx.tmp / "report.pdf"
    return ["report", findings, "--out", target, "--key", ctx.world.key, *extra]


RANDOM = bytes(range(256)) * 16
CASES: dict[str, Case] = {
    # fingerprint
    "fingerprint/missing-model": Case(lambda c: fp(c, c.tmp / "nope"), "model not found"),
    "fingerprint/file-is-not-a-model": Case(
        lambda c: fp(c, c.file("weights.bin", RANDOM)), "is not a model: give a Hugging Face"
    ),
    "fingerprint/folder-is-not-a-model": Case(
        lambda c: fp(c, c.copy(c.world.fp, "a-fingerprint")), "not a model folder"
    ),
    "fingerprint/hostile-gguf": Case(
        lambda c: fp(c, truncated_gguf(c)), "is not a valid GGUF file"
    ),
    "fingerprint/out-exists": Case(
        lambda c: ["fingerprint", c.world.victim, "--out", c.file("taken", "mine")],
        "already exists (pass --overwrite to replace it)",
    ),
    "fingerprint/empty-probe-file": Case(
        lambda c: victim(c, "--probes", c.file("empty.txt", "")), "has 0 text(s)"
    ),
    "fingerprint/probe-file-not-utf8": Case(
        lambda c: victim(c, "--probes", c.file("p.txt", "probe\n".encode("utf-16") * 12)),
        "is not UTF-8 text (byte 0)",
    ),
    "fingerprint/unknown-device": Case(
        lambda c: victim(c, "--device", "tpu"), "unknown device 'tpu'"
    ),
    "fingerprint/batch-size-0": Case(
        lambda c: victim(c, "--batch-size", "0"), "--batch-size must be at least 1, got 0"
    ),
    "fingerprint/json-into-a-folder": Case(
        lambda c: victim(c, "--json", c.world.root), "is a directory: give a file name"
    ),
    # compare
    "compare/different-probe-sets": Case(
        lambda c: ["compare", c.world.fp, c.world.fp_other_probes], "different probe sets"
    ),
    "compare/edited-manifest": Case(
        lambda c: ["compare", edited_manifest(c), c.world.fp], "edited by hand?"
    ),
    "compare/not-a-fingerprint": Case(
        lambda c: ["compare", c.file("x.bin", RANDOM), c.world.fp], "is not a directory"
    ),
    "compare/unknown-estimator": Case(
        lambda c: ["compare", c.world.fp, c.world.fp, "--estimator", "cosine"],
        "unknown estimator",
    ),
    # probes
    "probes/missing-file": Case(lambda c: ["probes", c.tmp / "none.txt"], "probe file not found"),
    "probes/unknown-builtin": Case(
        lambda c: ["probes", "builtin:nope"], "unknown built-in probe set 'nope'"
    ),
    "probes/limit-below-10": Case(
        lambda c: ["probes", "--limit", "3"], "--limit must be at least 10, got 3"
    ),
    "probes/jsonl-line-not-json": Case(
        lambda c: ["probes", c.file("p.jsonl", '{"text": "a"}\n{not json\n')],
        "p.jsonl:2: not valid JSON",
    ),
    # check
    "check/victim-missing": Case(
        lambda c: ["check", "--victim", c.tmp / "gone", "--suspect", c.world.fp],
        "model not found",
    ),
    "check/resamples-below-200": Case(
        lambda c: check_fps(c, "--resamples", "50"),
        "--resamples must be at least 200, got 50",
    ),
    "check/out-is-not-findings": Case(
        lambda c: check_fps(c, "--out", c.copy(c.world.fp, "not-findings"), "--overwrite"),
        "is not a findings directory: refusing to replace it",
    ),
    "check/report-without-key": Case(
        lambda c: check_fps(c, "--report", c.tmp / "r.pdf"),
        "--report needs --out, --key and --cert",
    ),
    "check/report-fails-after-the-findings-are-made": Case(
        lambda c: check_fps(
            c,
            "--out",
            c.tmp / "case",
            "--key",
            c.world.key,
            "--cert",
            c.world.cert,
            "--report",
            c.tmp / "case.pdf",
            victim=signed_by_another_key(c),
        ),
        ("refusing to render: the victim fingerprint", "does not verify"),
    ),
    # report
    "report/findings-fail-verification": Case(
        lambda c: report(c, tampered_findings(c), "--cert", c.world.cert),
        "do not verify (file findings.json: findings.json was changed after signing",
    ),
    "report/cert-does-not-match-key": Case(
        lambda c: report(c, c.world.findings, "--cert", c.world.other_keys / "signer-cert.pem"),
        "the certificate does not match the key",
    ),
    "report/out-in-missing-folder": Case(
        lambda c: report(c, c.world.findings, "--cert", c.world.cert, out=c.tmp / "no" / "r.pdf"),
        "/no does not exist",
    ),
    "report/not-a-findings-folder": Case(
        lambda c: report(c, c.world.fp, "--cert", c.world.cert), "holds no findings.json"
    ),
    # the case identifier is printed on every page: a label, not a sentence (issue 16, item 1)
    "report/case-id-is-a-sentence": Case(
        lambda c: report(
            c, c.world.findings, "--cert", c.world.cert, "--case-id", "Verdict: unrelated"
        ),
        ("--case-id 'Verdict: unrelated' is not a case identifier", "letters, digits"),
    ),
    # verify (a file that is not a valid report is a result, exit 1, as documented)
    "verify/random-file": Case(
        lambda c: ["verify", c.file("blob", RANDOM), "--key", c.world.pub],
        "is not a PDF file",
        code=1,
        result="FAIL  pdf:",
    ),
    "verify/not-a-pdf-with-pdf-suffix": Case(
        lambda c: ["verify", c.file("report.pdf", RANDOM), "--key", c.world.pub],
        "is not a PDF file",
        code=1,
        result="FAIL  pdf:",
    ),
    "verify/unsigned-folder": Case(
        lambda c: ["verify", c.world.fp_suspect, "--key", c.world.pub],
        "is not signed: model.sig is missing",
    ),
    "verify/private-key-given-as-public": Case(
        lambda c: ["verify", c.world.fp, "--key", c.world.key],
        "is a private key: give the public key",
    ),
    # keys
    "keys/generate-into-existing-keys": Case(
        lambda c: ["keys", "generate", "--out", c.copy(c.world.keys, "keys")],
        "refusing to overwrite keys",
    ),
    "keys/generate-without-passphrase": Case(
        lambda c: ["keys", "generate", "--out", c.tmp / "new"],
        "a passphrase is needed",
        env={"REEF_KEY_PASSPHRASE": ""},
    ),
    "keys/show-corrupt-pem": Case(
        lambda c: [
            "keys",
            "show",
            c.file("k.pem", "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"),
        ],
        "is not a readable PEM public key",
    ),
    # sign
    "sign/wrong-passphrase": Case(
        lambda c: ["sign", c.copy(c.world.fp_suspect, "fp"), "--key", c.world.key],
        "wrong passphrase for",
        env={"REEF_KEY_PASSPHRASE": "not-the-passphrase"},
    ),
    "sign/not-a-fingerprint": Case(
        lambda c: ["sign", c.copy(c.world.findings, "f"), "--key", c.world.key],
        "is not a fingerprint",
    ),
    # queue: the job administration commands
    "queue/retry-unknown-job": Case(
        lambda c: ["queue", "retry", "99", "--config", c.config("")], "no job 99 in the queue"
    ),
    "queue/cancel-unknown-jobs": Case(
        lambda c: ["queue", "cancel", "7", "8", "--config", c.config("")],
        "no job 7, 8 in the queue",
    ),
    # reconcile and evidence: the registry commands
    "reconcile/bad-period": Case(
        lambda c: ["reconcile", "--config", c.config('[worker]\nreconcile_seconds = "x"\n')],
        "[worker] reconcile_seconds must be a non-negative number",
    ),
    "evidence/bad-config": Case(
        lambda c: [
            "evidence",
            "models:/m/1",
            "--out",
            c.tmp / "evidence",
            "--config",
            c.config('[worker]\nreconcile_seconds = "x"\n'),
        ],
        "[worker] reconcile_seconds must be a non-negative number",
    ),
    # serve: start-up checks only
    "serve/no-secret": Case(
        lambda c: ["serve", "--config", c.config("")], "no webhook secret: set REEF_WEBHOOK_SECRET"
    ),
    "serve/port-in-use": Case(
        lambda c: ["serve", "--config", c.config(""), "--port", busy_port(c)],
        ("cannot listen on 127.0.0.1:", "Address already in use"),
        env={"REEF_WEBHOOK_SECRET": "s3cret"},
    ),
    "serve/port-out-of-range": Case(
        lambda c: ["serve", "--config", c.config(""), "--port", "70000"],
        "--port must be between 0 and 65535, got 70000",
        env={"REEF_WEBHOOK_SECRET": "s3cret"},
    ),
    "serve/max-age-zero": Case(
        lambda c: ["serve", "--config", c.config("[webhook]\nmax_age_seconds = 0\n")],
        "[webhook] max_age_seconds must be greater than 0",
        env={"REEF_WEBHOOK_SECRET": "s3cret"},
    ),
    "serve/tls-certfile-missing": Case(
        lambda c: ["serve", "--config", c.config(""), "--certfile", c.tmp / "none.pem"],
        "cannot read the TLS certificate",
        env={"REEF_WEBHOOK_SECRET": "s3cret"},
    ),
    "serve/tls-config-keyfile-missing": Case(
        lambda c: [
            "serve",
            "--config",
            c.config(
                f'[webhook]\ncertfile = "{make_server_certs(c.tmp).cert}"\nkeyfile = "no.pem"\n'
            ),
        ],
        "cannot read the TLS key",
        env={"REEF_WEBHOOK_SECRET": "s3cret"},
    ),
    "serve/tls-keyfile-without-certfile": Case(
        lambda c: ["serve", "--config", c.config(""), "--keyfile", make_server_certs(c.tmp).key],
        "--keyfile needs --certfile",
        env={"REEF_WEBHOOK_SECRET": "s3cret"},
    ),
    "serve/tls-key-of-another-certificate": Case(
        lambda c: [
            "serve",
            "--config",
            c.config(""),
            "--certfile",
            make_server_certs(c.tmp / "a").cert,
            "--keyfile",
            make_server_certs(c.tmp / "b").key,
        ],
        "is not the key of the certificate",
        env={"REEF_WEBHOOK_SECRET": "s3cret"},
    ),
    "serve/tls-certfile-not-pem": Case(
        lambda c: [
            "serve",
            "--config",
            c.config(""),
            "--certfile",
            c.file("cert.pem", RANDOM),
            "--keyfile",
            make_server_certs(c.tmp).key,
        ],
        "are not a PEM certificate and its private key",
        env={"REEF_WEBHOOK_SECRET": "s3cret"},
    ),
    "serve/tls-key-encrypted-no-passphrase": Case(
        lambda c: [
            "serve",
            "--config",
            c.config(""),
            "--certfile",
            make_server_certs(c.tmp).cert,
            "--keyfile",
            encrypt_key(c.tmp / "server-key.pem", b"pw", c.tmp / "enc.pem"),
        ],
        "is encrypted: set REEF_TLS_KEY_PASSPHRASE",
        env={"REEF_WEBHOOK_SECRET": "s3cret", "REEF_TLS_KEY_PASSPHRASE": ""},
    ),
    "serve/tls-key-wrong-passphrase": Case(
        lambda c: [
            "serve",
            "--config",
            c.config(""),
            "--certfile",
            make_server_certs(c.tmp).cert,
            "--keyfile",
            encrypt_key(c.tmp / "server-key.pem", b"pw", c.tmp / "enc.pem"),
        ],
        "wrong passphrase for the TLS key",
        env={"REEF_WEBHOOK_SECRET": "s3cret", "REEF_TLS_KEY_PASSPHRASE": "not-pw"},
    ),
    # worker: start-up checks only
    "worker/missing-key": Case(
        lambda c: [
            "worker",
            "--config",
            c.config(c.tracking() + '[signing]\nkey = "no-such-key.pem"\n'),
        ],
        "cannot read the key",
    ),
    "worker/missing-probes": Case(
        lambda c: ["worker", "--config", c.config(c.tracking() + 'probes = "none.txt"\n')],
        "probe file not found",
    ),
    "worker/corrupt-queue": Case(
        lambda c: [
            "worker",
            "--config",
            c.config(c.tracking() + f'queue = "{c.file("q.sqlite", RANDOM)}"\n', queue=False),
        ],
        "cannot be opened as a job queue: file is not a database",
    ),
    "worker/no-tracking-uri": Case(
        lambda c: ["worker", "--config", c.config("")], "no tracking URI"
    ),
    # demo
    "demo/dir-is-a-file": Case(
        lambda c: ["demo", "--dir", c.file("demo", "x")], "is a file: choose an empty or new --dir"
    ),
    "demo/dir-not-empty": Case(
        lambda c: ["demo", "--dir", c.copy(c.world.fp, "d")], "exists and is not a demo folder"
    ),
    "demo/zero-steps": Case(
        lambda c: ["demo", "--dir", c.tmp / "d", "--steps", "0"], "--steps must be at least 1"
    ),
    "demo/negative-steps": Case(
        lambda c: ["demo", "--dir", c.tmp / "d", "--steps", "-3"], "--steps must be at least 1"
    ),
    # config check
    "config/missing-file": Case(
        lambda c: ["config", "check", "--config", c.tmp / "none.toml"],
        "cannot read the configuration",
    ),
    "config/invalid-toml": Case(
        lambda c: ["config", "check", "--config", c.file("r.toml", "queue = \n")],
        "is not valid TOML",
    ),
    "config/unknown-key": Case(
        lambda c: ["config", "check", "--config", c.file("r.toml", "queu = 'q'\n")],
        "unknown key 'queu'",
    ),
    "config/wrong-type": Case(
        lambda c: ["config", "check", "--config", c.file("r.toml", "queue = 5\n")],
        "queue must be a path",
    ),
    "config/fractional-attempts": Case(
        lambda c: [
            "config",
            "check",
            "--config",
            c.file("r.toml", "[worker]\nmax_attempts = 2.5\n"),
        ],
        "[worker] max_attempts must be a whole number of at least 1",
    ),
}

#: argparse's own errors: usage text, then ``reef-forensics CMD: error: ...`` (exit 2)
USAGE_ERRORS: dict[str, tuple[list[str], str]] = {
    "unknown-dtype": (["fingerprint", "m", "--out", "o", "--dtype", "int8"], "invalid choice"),
    "batch-size-not-a-number": (["fingerprint", "m", "--out", "o", "--batch-size", "x"], "x"),
    "verify-without-trust": (["verify", "p"], "one of the arguments --key --trust is required"),
    "unknown-command": (["no-such-command"], "invalid choice"),
}


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, zoo: dict[str, Path], small_probes: ProbeSet
) -> World:
    root = tmp_path_factory.mktemp("bad-input-world")
    keys = generate_keys(root / "keys", PASS.encode())
    other = generate_keys(root / "other-keys", PASS.encode())
    signer = load_signer(
        keys.private_key, passphrase=PASS.encode(), certificate=keys.signer_certificate
    )
    probes = root / "probes.jsonl"
    probes.write_text("".join(json.dumps({"text": t}) + "\n" for t in small_probes.texts))
    reversed_probes = ProbeSet("reversed", small_probes.texts[::-1])
    fp_victim = fingerprint_model(zoo["victim"], root / "fp", probes=small_probes, signer=signer)
    fp_suspect = fingerprint_model(zoo["derived"], root / "fp-suspect", probes=small_probes)
    fp_other = fingerprint_model(zoo["victim"], root / "fp-other", probes=reversed_probes)
    from reef_forensics.analysis.check import check

    findings = check(fp_victim, fp_suspect, [], positive_controls=[])
    findings.write(root / "findings", signer=signer)
    return World(
        root=root,
        keys=root / "keys",
        other_keys=other.private_key.parent,
        probes=probes,
        fp=fp_victim.path,
        fp_suspect=fp_suspect.path,
        fp_other_probes=fp_other.path,
        findings=root / "findings",
        victim=zoo["victim"],
    )


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def never_started(*args: object, **kwargs: object) -> None:
    raise RuntimeError("started: the bad input was not refused")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No deployment settings from the environment, the test key's passphrase, and a serve or
    worker that gets past its checks fails the case instead of running forever."""
    import socketserver

    from reef_forensics.mlops.worker import Worker

    monkeypatch.setattr(socketserver.BaseServer, "serve_forever", never_started)
    monkeypatch.setattr(Worker, "run", never_started)
    for name in ("REEF_CONFIG", "REEF_TRACKING_URI", "MLFLOW_TRACKING_URI", "REEF_QUEUE",
                 "REEF_PROBES", "REEF_KEY", "REEF_CERT", "REEF_WEBHOOK_SECRET"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", PASS)


def check_outcome(case: Case, code: int, out: str, err: str) -> None:
    parts = (case.message,) if isinstance(case.message, str) else case.message
    assert code == case.code, err
    assert "Traceback" not in out + err
    if case.result is None:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("reef-forensics: error: "), err
        assert all(part in lines[0] for part in parts), lines[0]
    else:  # a documented verification result: on stdout, and nothing on stderr
        assert err == ""
        assert any(
            line.startswith(case.result) and all(part in line for part in parts)
            for line in out.splitlines()
        ), out


@pytest.fixture
def run_case(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> Iterator[Callable[[str, Callable[[list[str]], tuple[int, str, str]]], None]]:
    """Build a case's input, run it with ``runner``, and check the outcome and that nothing
    was left behind (in the case folder, recursively, and among the shared inputs)."""
    held: list[Any] = []

    def run(name: str, runner: Callable[[list[str]], tuple[int, str, str]]) -> None:
        case = CASES[name]
        for variable, value in case.env.items():
            monkeypatch.setenv(variable, value)
        ctx = Ctx(tmp_path / "case", world, held)
        ctx.tmp.mkdir()
        args = [str(a) for a in case.build(ctx)]
        before = (listing(ctx.tmp), listing(world.root))
        code, out, err = runner(args)
        check_outcome(case, code, out, err)
        assert (listing(ctx.tmp), listing(world.root)) == before, "files were left behind"

    yield run
    for resource in held:
        resource.close()


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line_and_leaves_nothing_behind(
    run_case: Callable[[str, Callable[[list[str]], tuple[int, str, str]]], None],
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    def in_process(args: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    run_case(name, in_process)


REAL_PROCESS_CASES = [
    "fingerprint/probe-file-not-utf8",
    "report/not-a-findings-folder",
    "verify/not-a-pdf-with-pdf-suffix",
    "serve/port-in-use",
    "serve/tls-certfile-missing",
    "worker/corrupt-queue",
    "config/invalid-toml",
]


@pytest.mark.parametrize("name", REAL_PROCESS_CASES)
def test_a_real_process_shows_no_traceback_either(
    run_case: Callable[[str, Callable[[list[str]], tuple[int, str, str]]], None], name: str
) -> None:
    def real_process(args: list[str]) -> tuple[int, str, str]:
        done = subprocess.run(
            [REEF, *args],
            capture_output=True,
            text=True,
            check=False,
            env=dict(os.environ),
            timeout=120,  # serve and worker run forever if their checks let them start
        )
        return done.returncode, done.stdout, done.stderr

    run_case(name, real_process)


@pytest.mark.parametrize("name", sorted(USAGE_ERRORS))
def test_argparse_usage_errors_exit_2_with_the_argument_named_last(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    args, message = USAGE_ERRORS[name]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: reef-forensics")
    assert lines[-1].startswith("reef-forensics") and ": error: " in lines[-1]
    assert message in lines[-1] and "Traceback" not in err


#: commands with no case here, and why
NOT_COVERED = {
    "fleet": "Ray screening, added alongside this matrix; its bad inputs are tested with it",
}


def test_the_matrix_covers_every_command() -> None:
    from reef_forensics.cli.main import build_parser

    commands = next(
        a.choices for a in build_parser()._actions if isinstance(a.choices, dict)
    )  # the subcommands
    covered = {name.split("/")[0] for name in CASES}
    assert set(commands) - set(NOT_COVERED) <= covered
    assert len(CASES) >= 30


def test_serve_on_a_busy_port_leaves_no_new_queue_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REEF_WEBHOOK_SECRET", "s3cret")
    config = tmp_path / "reef.toml"
    config.write_text('queue = "fresh/queue.sqlite"\n')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--config", str(config), "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot listen on 127.0.0.1:" in err
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == []
