"""Models and fingerprints in an MLflow registry: `models:/name/version` to files on disk.

MLflow's transformers flavor stores a version as ``model/`` (config and weights) and
``components/tokenizer/``; `materialize` downloads a version and lays the two out as one
Hugging Face folder that `loading.resolve_model` accepts (safetensors only, as ever). A version's
signed fingerprint lives as run artifacts under ``reef/`` (never inside the model's own
directory, so it never enters the model digest), and the tag ``reef.fingerprint.uri`` says where.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from reef_forensics.errors import BadInputError, ModelLoadError, first_line

MODELS_URI = re.compile(r"^models:/(?P<name>[^/]+)/(?P<version>\d+)$")
LOGGED_MODEL_URI = re.compile(r"^models:/m-[0-9a-f]+$")
TAG_STATUS = "reef.status"
TAG_REASON = "reef.status.reason"
TAG_MODEL_DIGEST = "reef.model.digest"
TAG_FINGERPRINT_DIGEST = "reef.fingerprint.digest"
TAG_PROBES_DIGEST = "reef.probes.digest"
TAG_FINGERPRINT_URI = "reef.fingerprint.uri"
TAG_ROLE = "reef.role"
SCREEN_PREFIX = "reef.screen."


class NotTransformersModel(ModelLoadError):
    """A model version that MLflow logged with flavors other than transformers (a pyfunc, a
    sklearn model): nothing reef-forensics can fingerprint, and nothing wrong with it."""


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


def parse_models_uri(uri: str) -> tuple[str, str]:
    match = MODELS_URI.match(uri)
    if match is None:
        raise BadInputError(f"{uri} is not a model version URI (models:/NAME/VERSION)")
    return match["name"], match["version"]


def client(tracking_uri: str | None = None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def materialize(uri: str, dest: str | os.PathLike[str], tracking_uri: str | None = None) -> Path:
    """Download ``models:/name/version`` into ``dest`` and return a folder holding the model's
    config, weights and tokenizer files together."""
    import mlflow

    if LOGGED_MODEL_URI.match(uri):
        source = uri  # a logged model (what mlflow.models.evaluate hands an evaluator)
    else:
        name, version = parse_models_uri(uri)
        source = f"models:/{name}/{version}"
    target = Path(dest)
    download = target / "download"
    saved = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    try:
        if tracking_uri:  # for this download only: the caller's own settings are restored
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(download))
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot download {uri}: {first_line(exc)}") from None
    finally:
        if tracking_uri:
            mlflow.set_tracking_uri(saved[0])
            mlflow.set_registry_uri(saved[1])
    return assemble(local, target / "model")


def localize(
    values: list[str | None], scratch: Path, tracking_uri: str | None = None
) -> list[str | None]:
    """Each ``models:/...`` value replaced by a local folder of the version's files (downloaded
    once per URI); paths and None pass through."""
    done: dict[str, str] = {}
    out: list[str | None] = []
    for value in values:
        if value is not None and value.startswith("models:/"):
            if value not in done:
                done[value] = str(
                    materialize(value, scratch / f"registry-{len(done) + 1}", tracking_uri)
                )
            value = done[value]
        out.append(value)
    return out


def assemble(local: Path, out: Path) -> Path:
    """One folder with the weights folder's files and the tokenizer component's files."""
    weights = next(
        (p.parent for p in sorted(local.rglob("config.json")) if _has_weights(p.parent)), None
    )
    if weights is None:
        flavors = mlflow_flavors(local)
        if flavors and "transformers" not in flavors:
            raise NotTransformersModel(
                f"not a transformers model (MLflow flavors: {', '.join(flavors)}): "
                "reef-forensics fingerprints transformers models (safetensors) only"
            )
        raise ModelLoadError(  # no path: the download folder is scratch, gone by the time read
            "the model version's files hold no config.json beside weights: "
            "reef-forensics reads transformers models (safetensors)"
        )
    out.mkdir(parents=True, exist_ok=True)
    tokenizers = [p for p in local.rglob("*") if p.is_file() and p.name in TOKENIZER_FILES]
    for source in [*sorted(p for p in weights.iterdir() if p.is_file()), *sorted(tokenizers)]:
        target = out / source.name
        if target.exists():
            continue
        try:
            os.link(source, target)  # no copy of the weights when the file system allows
        except OSError:
            shutil.copy2(source, target)
    return out


def mlflow_flavors(local: Path) -> list[str]:
    """The flavors that the MLmodel file of a downloaded version lists (none: no MLmodel)."""
    import yaml

    found = [local / "MLmodel"] if (local / "MLmodel").is_file() else sorted(local.rglob("MLmodel"))
    if not found:
        return []
    try:
        data = yaml.safe_load(found[0].read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    flavors = data.get("flavors") if isinstance(data, dict) else None
    return sorted(str(f) for f in flavors) if isinstance(flavors, dict) else []


def _has_weights(folder: Path) -> bool:
    return (
        any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.gguf"))
    )


def fingerprint_of(version: Any, dest: Path, mlflow_client: Any) -> Path | None:
    """The signed fingerprint logged for a model version, downloaded to ``dest``; None when the
    version has not been fingerprinted (yet)."""
    import mlflow

    uri = version.tags.get(TAG_FINGERPRINT_URI)
    if not uri or version.tags.get(TAG_STATUS) != "done":
        return None
    dest.mkdir(parents=True, exist_ok=True)
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=str(dest), tracking_uri=mlflow_client.tracking_uri
        )
    )


def versions_with_role(mlflow_client: Any, role: str) -> list[Any]:
    return list(mlflow_client.search_model_versions(f"tags.`{TAG_ROLE}` = '{role}'"))


def register_model_folder(
    path: str | os.PathLike[str], name: str, *, role: str | None = None
) -> str:
    """Log a causal-LM folder with MLflow's transformers flavor, in a run of the active
    experiment, and register it as ``name`` (the URIs set in ``mlflow`` decide where: with
    ``reef+sqlite://`` as registry the store plugin queues it). ``role`` tags the version
    ``reef.role`` (``victim`` or ``reference``). Returns the new version."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with mlflow.start_run(run_name=name):
        info = mlflow.transformers.log_model(
            {
                "model": AutoModelForCausalLM.from_pretrained(path),
                "tokenizer": AutoTokenizer.from_pretrained(path),
            },
            name="model",
            task="text-generation",
            registered_model_name=name,
            pip_requirements=["transformers"],  # else MLflow goes looking for torchvision
        )
    version = str(info.registered_model_version)
    if role:
        mlflow.MlflowClient().set_model_version_tag(name, version, TAG_ROLE, role)
    return version
