"""One exception hierarchy for everything a user can get wrong or that can go wrong.

The CLI maps `BadInputError` (and its subclasses) to exit code 2 and prints the message as one
line; any other `ReefError` maps to exit code 1.
"""

from __future__ import annotations


class ReefError(Exception):
    """Base class of every error reef-forensics raises on purpose."""

    exit_code = 1


class BadInputError(ReefError):
    """The user's input (a path, a file, an option) cannot be used; exit code 2."""

    exit_code = 2


class ProbeSetError(BadInputError):
    """A probe set cannot be read or is unusable (empty, too short, malformed)."""


class ModelLoadError(BadInputError):
    """A model cannot be loaded safely (missing, corrupt, pickle-only, needs remote code)."""


class TokenizerError(ModelLoadError):
    """A model's tokenizer crashed (a Rust panic) or ran past its time limit on the probe texts."""


class ExtractionError(BadInputError):
    """Representations cannot be extracted (no hidden states, NaN/inf activations, empty text)."""


class FingerprintError(BadInputError):
    """A fingerprint directory is missing, malformed, or its files do not match its manifest."""


class KeyMaterialError(BadInputError):
    """A key, certificate or passphrase cannot be used (never quotes the key or passphrase)."""


class SignatureError(BadInputError):
    """A signature bundle is missing or malformed (an invalid signature is a verify result)."""


class ComparisonError(BadInputError):
    """Two fingerprints cannot be compared (different probes, different sample counts)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name): enough for one error line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_native_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust panic surfacing through pyo3 (``pyo3_runtime.PanicException``,
    raised by tokenizers, safetensors and other Rust extensions). It derives from
    `BaseException`, not `Exception`, so ``except Exception`` lets it through."""
    kind = type(exc)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"
