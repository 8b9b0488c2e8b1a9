"""Shared fixtures: tiny models built on the spot, and their fingerprints (session-scoped)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reef_forensics import ProbeSet, fingerprint_model, load_probes
from reef_forensics.toy_models import derive, make_model

from .gguf_export import export_llama_gguf


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
