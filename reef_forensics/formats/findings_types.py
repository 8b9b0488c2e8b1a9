"""The types of a findings record's fields: every number a number, every count an integer.

`verify` recomputes the verdict from the recorded scores, but Python's ``float()`` takes the text
``"0.5"`` as readily as the number, and most numbers (the matrices, the stability curve, the
controls) are not needed for the verdict at all: without a type check, a record re-signed with a
number written as text verified. `findings_type_problem` walks the record against `FINDINGS`
and names the first field whose value is not of its type. Fields the table does not name (a
later format's additions) are left to their own checks; fields marked `Maybe` may be absent
(format 3's, or those only some rows have), but hold their type when present. ``extraction``
is the victim fingerprint's own settings, copied as they are: only its being an object is
checked here (``verify --evidence`` compares it with the fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NUMBER = "a number"
NUMBER_OR_NULL = "a number or null"
INTEGER = "an integer"
INTEGER_OR_NULL = "an integer or null"
TEXT = "text"
TEXT_OR_NULL = "text or null"
BOOLEAN = "true or false"
OBJECT = "an object"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_SCALARS = {
    NUMBER: _is_number,
    NUMBER_OR_NULL: lambda v: v is None or _is_number(v),
    INTEGER: _is_integer,
    INTEGER_OR_NULL: lambda v: v is None or _is_integer(v),
    TEXT: lambda v: isinstance(v, str),
    TEXT_OR_NULL: lambda v: v is None or isinstance(v, str),
    BOOLEAN: lambda v: isinstance(v, bool),
    OBJECT: lambda v: isinstance(v, dict),
}


@dataclass(frozen=True)
class Maybe:
    """A field that may be absent; when present, of type ``spec``."""

    spec: Any


@dataclass(frozen=True)
class OrNull:
    """null, or a value of type ``spec`` (an object or a list)."""

    spec: Any


_TEST = {
    "layer": TEXT_OR_NULL,
    "layers_tested": INTEGER,
    "score": NUMBER_OR_NULL,
    "p_value": NUMBER_OR_NULL,
    "empirical_p_value": NUMBER_OR_NULL,
    "margin": NUMBER_OR_NULL,
    "null_mean": NUMBER_OR_NULL,
    "null_sd_fisher_z": NUMBER_OR_NULL,
}
_UNITS_SUMMARY = {
    "log10_p_value": Maybe(NUMBER_OR_NULL),
    "blocks_compared": Maybe(INTEGER),
    "skipped": Maybe(TEXT_OR_NULL),
}
_DESCRIBED = {"name": TEXT, "digest": TEXT, "model_digest": TEXT, "layers": INTEGER}
_REFERENCE = {
    **_DESCRIBED,
    "score": NUMBER_OR_NULL,
    "block_scores": [NUMBER_OR_NULL],
    "units": Maybe(_UNITS_SUMMARY),
}
_PAIR = {"layer_a": TEXT, "layer_b": TEXT, "score": NUMBER_OR_NULL}
_UNITS_BLOCK = {
    "layer_a": TEXT,
    "layer_b": TEXT,
    "units_a": INTEGER,
    "units_b": INTEGER,
    "matched": INTEGER,
    "candidates": INTEGER,
    "agreed": INTEGER,
    "spearman": NUMBER_OR_NULL,
    "log10_p": NUMBER,
}

#: Findings format 2 (and the fields format 3 adds, as `Maybe`).
FINDINGS: dict[str, Any] = {
    "format": TEXT,
    "format_version": INTEGER,
    "tool": {"name": TEXT, "version": TEXT},
    "created": TEXT,
    "verdict": TEXT,
    "score": NUMBER_OR_NULL,
    "statistic": TEXT,
    "p_value": NUMBER_OR_NULL,
    "log10_p_value": Maybe(NUMBER_OR_NULL),
    "p_value_reason": TEXT_OR_NULL,
    "empirical_p_value": NUMBER_OR_NULL,
    "panel_size": INTEGER,
    "null": {"mean": NUMBER_OR_NULL, "sd_fisher_z": NUMBER_OR_NULL},
    "tests": {
        "mean": OrNull(_TEST),
        "layer": OrNull(_TEST),
        "units": Maybe(
            {
                "ran": BOOLEAN,
                "log10_p_value": Maybe(NUMBER_OR_NULL),
                "p_value": Maybe(NUMBER_OR_NULL),
                "blocks_compared": Maybe(INTEGER),
                "lined_up": Maybe(INTEGER),
                "skipped": Maybe(TEXT_OR_NULL),
            }
        ),
        "combination": TEXT,
    },
    "decision_rule": {
        "alpha": NUMBER,
        "unrelated_alpha": NUMBER,
        "margin": NUMBER,
        "min_references": INTEGER,
        "text": TEXT,
    },
    "reasons": [TEXT],
    "identical": BOOLEAN,
    "victim": _DESCRIBED,
    "suspect": _DESCRIBED,
    "probes": {"name": TEXT, "digest": TEXT, "count": INTEGER},
    "extraction": OBJECT,
    "reef_layer": _PAIR,
    "per_layer": {
        "estimator": TEXT,
        "layers_victim": [TEXT],
        "layers_suspect": [TEXT],
        "matrix": [[NUMBER_OR_NULL]],
        "matrix_biased": [[NUMBER_OR_NULL]],
        "alignment": [_PAIR],
        "best_match": [_PAIR],
    },
    "stability": [
        {"n": INTEGER, "score": NUMBER_OR_NULL, "low": NUMBER_OR_NULL, "high": NUMBER_OR_NULL}
    ],
    "stability_method": {
        "layer_a": TEXT,
        "layer_b": TEXT,
        "resamples": INTEGER,
        "seed": INTEGER,
        "level": NUMBER,
        "text": TEXT,
    },
    "controls": {
        "invariance": [{"name": TEXT, "score": NUMBER_OR_NULL}],
        "positive": [
            {
                "name": TEXT,
                "digest": Maybe(TEXT),
                "score": Maybe(NUMBER_OR_NULL),
                "skipped": Maybe(TEXT),
                "units": Maybe(_UNITS_SUMMARY),
            }
        ],
        "positive_skipped": TEXT_OR_NULL,
        "negative": [_REFERENCE],
    },
    "references": [_REFERENCE],
    "units_test": Maybe(
        {
            "ran": BOOLEAN,
            "skipped": Maybe(TEXT_OR_NULL),
            "kinds": Maybe(OBJECT),
            "samples": Maybe(INTEGER),
            "max_rows": Maybe(INTEGER_OR_NULL),
            "blocks": Maybe([_UNITS_BLOCK]),
            "blocks_compared": Maybe(INTEGER),
            "log10_p_value": Maybe(NUMBER_OR_NULL),
            "statistic": Maybe(TEXT),
        }
    ),
}


def findings_type_problem(record: Any) -> str | None:
    """The first field of a findings record that is missing or not of its type, in words; None
    when every field `FINDINGS` names holds its type."""
    return type_problem(record, FINDINGS)


def type_problem(value: Any, spec: Any, where: str = "") -> str | None:
    """Whether ``value`` has the shape ``spec`` describes: a dict (the fields named, others
    free), a one-item list (every item of that type), `OrNull`, `Maybe` (in a dict), or one of
    the scalar names above."""
    label = where or "the record"
    if isinstance(spec, OrNull):
        return None if value is None else type_problem(value, spec.spec, where)
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{label} is {_described(value)} where an object belongs"
        for key, field_spec in spec.items():
            inner = f"{where}.{key}" if where else key
            if isinstance(field_spec, Maybe):
                if key not in value:
                    continue
                field_spec = field_spec.spec
            elif key not in value:
                return f"{inner} is missing"
            problem = type_problem(value[key], field_spec, inner)
            if problem:
                return problem
        return None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{label} is {_described(value)} where a list belongs"
        for index, item in enumerate(value):
            problem = type_problem(item, spec[0], f"{where}[{index}]")
            if problem:
                return problem
        return None
    if not _SCALARS[spec](value):
        return f"{label} is {_described(value)} where {spec} belongs"
    return None


def _described(value: Any) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= 24 else value[:21] + "..."
        return f"the text {shown!r}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"the number {value!r}"
