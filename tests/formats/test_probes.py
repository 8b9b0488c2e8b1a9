"""Probe sets: the built-in set, file and dataset loaders, digests, and bad files."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import rfc8785

from reef_forensics import ProbeSetError, load_probes
from reef_forensics.formats.probes import MIN_PROBES, builtin_kinds

TEXTS = [f"Q: What is {i} plus {i}? A: {2 * i}." for i in range(12)]


def test_builtin_default_has_at_least_500_mixed_texts() -> None:
    probes = load_probes("builtin:default")
    kinds = Counter(builtin_kinds())
    assert len(probes) >= 500
    assert len(set(probes.texts)) == len(probes)
    assert kinds["qa_true"] == kinds["qa_false"] >= 200
    assert kinds["everyday"] >= 50 and kinds["instruction"] >= 50
    # every prefix is a mix: the first 50 texts hold all four kinds
    assert len(set(builtin_kinds()[:50])) == 4
    qa = load_probes("builtin:qa")
    assert len(qa) == kinds["qa_true"] + kinds["qa_false"]
    assert all(t.startswith("Q: ") and " A: " in t for t in qa.texts)


def test_digest_is_sha256_of_rfc8785_json_of_the_ordered_texts() -> None:
    probes = load_probes()
    expected = "sha256:" + hashlib.sha256(rfc8785.dumps(list(probes.texts))).hexdigest()
    assert probes.digest == expected


def test_digest_depends_on_order_but_not_on_source_format(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("\n".join(TEXTS) + "\n")
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS))
    )
    (tmp_path / "p.csv").write_text(
        "id,prompt\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS))
    )
    (tmp_path / "r.txt").write_text("\n".join(reversed(TEXTS)))
    txt = load_probes(tmp_path / "p.txt")
    assert txt.texts == tuple(TEXTS)
    assert load_probes(tmp_path / "p.jsonl").digest == txt.digest
    assert load_probes(tmp_path / "p.csv", column="prompt").digest == txt.digest
    assert load_probes(tmp_path / "r.txt").digest != txt.digest


def test_limit_keeps_the_first_texts(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("\n".join(TEXTS))
    assert load_probes(tmp_path / "p.txt", limit=10).texts == tuple(TEXTS[:10])


def test_jsonl_texts_may_hold_newlines_and_unicode(tmp_path: Path) -> None:
    texts = [f"line one\nline two {i} — café" for i in range(MIN_PROBES)]
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    )
    assert load_probes(tmp_path / "p.jsonl").texts == tuple(texts)


def test_csv_quoted_newlines_and_unicode_separators_are_kept(tmp_path: Path) -> None:
    texts = [f'row {i} says "hi"\nand more' for i in range(MIN_PROBES)]
    rows = "".join('"' + t.replace('"', '""') + '"\n' for t in texts)
    (tmp_path / "p.csv").write_text("text\n" + rows, newline="")
    assert load_probes(tmp_path / "p.csv").texts == tuple(texts)
    odd = [f"a\u2028b {i}\x85c" for i in range(MIN_PROBES)]
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in odd)
    )
    (tmp_path / "p.txt").write_text("\r\n".join(odd), newline="")
    assert load_probes(tmp_path / "p.jsonl").texts == tuple(odd)
    assert load_probes(tmp_path / "p.txt").texts == tuple(odd)


def test_local_huggingface_dataset_loads_offline(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"sentence": TEXTS}),
            "test": datasets.Dataset.from_dict({"sentence": TEXTS[::-1]}),
        }
    ).save_to_disk(tmp_path / "ds")
    probes = load_probes(f"hf:{tmp_path / 'ds'}", column="sentence")
    assert probes.texts == tuple(TEXTS)
    assert load_probes(f"hf:{tmp_path / 'ds'}", column="sentence", split="test").texts == tuple(
        TEXTS[::-1]
    )
    with pytest.raises(ProbeSetError, match="no split 'validation'"):
        load_probes(f"hf:{tmp_path / 'ds'}", column="sentence", split="validation")
    with pytest.raises(ProbeSetError, match="no column 'text'"):
        load_probes(f"hf:{tmp_path / 'ds'}")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", "", "has 0 text"),
        ("one.txt", "just one line\n", "has 1 text"),
        ("blank.txt", "\n\n   \n", "has 0 text"),
        ("bad.jsonl", '{"text": "a"}\nnot json\n', r"bad.jsonl:2: not valid JSON"),
        ("nofield.jsonl", '{"prompt": "a"}\n', "expected an object with a 'text' field"),
        ("number.jsonl", '{"text": 5}\n', "must be a string"),
        ("emptytext.jsonl", '{"text": "  "}\n', "empty text"),
        ("nocol.csv", "a,b\n1,2\n", r"no column 'text' in the header \(columns: a, b\)"),
        ("data.parquet", "x", "unsupported probe file type .parquet"),
        ("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", "deep.jsonl:1: not valid JSON"),
        ("bigint.jsonl", '{"text": ' + "7" * 5000 + "}\n", "bigint.jsonl:1: not valid JSON"),
    ],
)
def test_bad_probe_files_give_one_clear_error(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ProbeSetError, match=message):
        load_probes(path)


def test_non_utf8_file_and_missing_file_and_unknown_builtin(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 20)
    with pytest.raises(ProbeSetError, match="not UTF-8"):
        load_probes(tmp_path / "latin1.txt")
    (tmp_path / "utf16.txt").write_bytes(
        "What is the capital of France?\n".encode("utf-16-le") * 20
    )
    with pytest.raises(ProbeSetError, match="holds NUL bytes"):
        load_probes(tmp_path / "utf16.txt")
    with pytest.raises(ProbeSetError, match="not found"):
        load_probes(tmp_path / "missing.txt")
    with pytest.raises(ProbeSetError, match="unknown built-in probe set 'nope'"):
        load_probes("builtin:nope")
    with pytest.raises(ProbeSetError, match="at least 10"):
        load_probes(limit=3)
