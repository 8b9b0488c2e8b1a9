"""Fuzzing the parsers of untrusted input with hypothesis: fingerprint manifests (and the probe
texts a manifest vouches for), findings records, signature bundles, probe files, and webhook
deliveries.

Each parser gets random bytes, random JSON, hostile JSON (deep nesting, NaN, huge numbers, lone
surrogates), and mutations of a valid file (bytes changed, inserted, deleted; JSON nodes
replaced, deleted or retyped, then written canonically so that the parser gets past its
canonical-form check). The only allowed outcomes are success or a `ReefError` with a message
(the CLI's one error line, exit 1 or 2); for the webhook, an HTTP status of 200, 400 or 401 with
a JSON answer. Any other exception fails the test, and so does an example slower than the
deadline (2 s): a hang. ``derandomize=True`` makes every run try the same examples.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import math
import select
import shutil
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reef_forensics.analysis.findings import FINDINGS_FILE
from reef_forensics.crypto.bundle import SIGNATURE_NAME, sign_directory, verify_bundle_over
from reef_forensics.crypto.keys import Signer, load_certificates, load_public_key
from reef_forensics.crypto.results import TrustPolicy
from reef_forensics.digests import canonical_json, sha256_bytes
from reef_forensics.errors import ProbeSetError, ReefError
from reef_forensics.evidence.verify import verify_evidence
from reef_forensics.formats.fingerprint import MANIFEST, PROBES, read_fingerprint
from reef_forensics.formats.probes import load_probes
from reef_forensics.mlops.jobqueue import JobQueue
from reef_forensics.plugins.tls import server_context
from reef_forensics.plugins.webhook import handle_delivery, make_server, signature
from reef_forensics.report.render import load_evidence
from tests.conftest import SignedCase
from tests.tls_certs import make_server_certs

FUZZ = settings(
    max_examples=200,
    deadline=2000,  # milliseconds: a parser that hangs fails the test
    derandomize=True,  # the same examples every run: CI stays reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies ---------------------------------------------------------------------------------

#: JSON numbers that survive canonical form (RFC 8785 refuses integers beyond 2**53).
SAFE_INTEGER = 2**53
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-SAFE_INTEGER, SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
#: Values Python's json module reads or writes that a strict parser must still handle.
hostile_values = st.sampled_from(
    [math.nan, math.inf, -math.inf, 10**30, -(10**400), 1e308, "\ud800", "\x00", "", [], {}, 0, -1]
)
#: Whole documents no well-behaved writer produces.
HOSTILE_DOCUMENTS = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"NaN",
    b"-Infinity",
    b"1e400",
    b"9" * 5_000,
    b'"\\ud800"',
    b'{"a": 1, "a": 2}',
    b"\xef\xbb\xbf{}",
    b"\xff\xfe{\x00}\x00",
    b"",
    b"\x00" * 16,
    b"null",
]


def serialize(value: Any, form: str) -> bytes:
    """``value`` as JSON bytes: canonical (RFC 8785) where it can be, else json.dumps's forms."""
    if form == "canonical":
        try:
            return canonical_json(value)
        except ValueError:  # NaN, infinities, huge integers, lone surrogates
            form = "compact"
    if form == "compact":
        return json.dumps(value, separators=(",", ":")).encode()
    return json.dumps(value, indent=1, ensure_ascii=False).encode("utf-8", "surrogatepass")


forms = st.sampled_from(["canonical", "canonical", "compact", "pretty"])


@st.composite
def json_documents(draw: st.DrawFn) -> bytes:
    return serialize(draw(json_values), draw(forms))


@st.composite
def node_path(draw: st.DrawFn, value: Any) -> tuple[Any, ...]:
    """The path (keys and indexes) to a node of a JSON value: from the root, stop or step into
    a random child, level by level, so that shallow fields (a record's decision rule) are
    drawn as often as the leaves of a thousand-cell matrix."""
    path: tuple[Any, ...] = ()
    while isinstance(value, dict | list) and value and draw(st.integers(0, 2)) > 0:
        key = draw(
            st.sampled_from(list(value.keys()) if isinstance(value, dict) else range(len(value)))
        )
        path, value = (*path, key), value[key]
    return path


def retyped(value: Any) -> Any:
    """The same content in another JSON type: what a careless or hostile writer produces."""
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return 0


@st.composite
def mutated_json(draw: st.DrawFn, original: Any) -> bytes:
    """``original`` with one to three nodes replaced, deleted or retyped, then serialized."""
    value = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(node_path(value))
        operation = draw(st.sampled_from(["replace", "hostile", "delete", "retype"]))
        if not path:
            value = draw(json_values) if operation != "retype" else retyped(value)
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        mutate(draw, parent, path[-1], operation)
    return serialize(value, draw(forms))


def mutate(draw: st.DrawFn, parent: Any, key: Any, operation: str) -> None:
    """Delete, retype or replace (random or hostile JSON) ``parent[key]`` in place."""
    if operation == "delete":
        del parent[key]
    elif operation == "retype":
        parent[key] = retyped(parent[key])
    else:
        parent[key] = draw(hostile_values if operation == "hostile" else json_values)


@st.composite
def mutated_fields(draw: st.DrawFn, original: dict[str, Any]) -> bytes:
    """``original`` (an object) with one field, or one field of a field that is an object,
    replaced (random or hostile JSON), retyped or deleted, and written canonically: what a
    record's schema checks must catch."""
    value = copy.deepcopy(original)
    parent = value
    nested = [key for key, child in value.items() if isinstance(child, dict) and child]
    if nested and draw(st.booleans()):
        parent = value[draw(st.sampled_from(nested))]
    key = draw(st.sampled_from(sorted(parent)))
    mutate(draw, parent, key, draw(st.sampled_from(["replace", "hostile", "delete", "retype"])))
    return serialize(value, "canonical")


@st.composite
def mutated_bytes(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with one to four bytes changed, inserted or deleted, or cut short."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["change", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if operation == "change" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif operation == "insert":
            data[position:position] = bytes([draw(st.integers(0, 255))])
        elif operation == "delete" and data:
            del data[position]
        elif operation == "truncate":
            del data[position:]
    return bytes(data)


@st.composite
def mutated_rows(draw: st.DrawFn, rows: list[Any]) -> bytes:
    """JSON lines: ``rows`` with one to three rows replaced (random or hostile JSON, a retyped
    or hostile field), deleted or repeated."""
    rows = copy.deepcopy(rows)
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(rows) - 1))
        operation = draw(st.sampled_from(["replace", "field", "hostile", "delete", "repeat"]))
        if operation == "replace":
            rows[index] = draw(json_values)
        elif operation == "field" and isinstance(rows[index], dict):
            rows[index] = {key: retyped(value) for key, value in rows[index].items()}
        elif operation == "hostile" and isinstance(rows[index], dict):
            rows[index] = {key: draw(hostile_values) for key in rows[index]}
        elif operation == "delete" and len(rows) > 1:
            del rows[index]
        else:
            rows.insert(index, rows[index])
    return b"\n".join(serialize(row, "compact") for row in rows) + b"\n"


def inputs(original_bytes: bytes, original_value: Any) -> st.SearchStrategy[bytes]:
    """Everything a parser of ``original``'s kind is fed: random bytes, random JSON, hostile
    documents, and mutations of the valid file (as JSON and as bytes)."""
    fields = [mutated_fields(original_value)] * 2 if isinstance(original_value, dict) else []
    return st.one_of(
        st.binary(max_size=512),
        json_documents(),
        st.sampled_from(HOSTILE_DOCUMENTS),
        mutated_bytes(original_bytes),
        mutated_json(original_value),
        *fields,
    )


def survives(call: Callable[[], object]) -> None:
    """Success, or a `ReefError` with a message; any other exception propagates (a crash)."""
    try:
        call()
    except ReefError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"


# --- fingerprints -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fingerprint_copy(
    tmp_path_factory: pytest.TempPathFactory, fingerprints: dict[str, Path]
) -> Path:
    target = tmp_path_factory.mktemp("fuzz-fingerprint") / "victim"
    shutil.copytree(fingerprints["victim"], target)
    return target


@FUZZ
@given(data=st.data())
def test_fingerprint_manifests_parse_or_fail_cleanly(
    fingerprint_copy: Path, data: st.DataObject
) -> None:
    original = (fingerprint_copy / MANIFEST).read_bytes()
    document = data.draw(inputs(original, json.loads(original)))
    (fingerprint_copy / MANIFEST).write_bytes(document)
    try:
        survives(lambda: read_fingerprint(fingerprint_copy))
    finally:
        (fingerprint_copy / MANIFEST).write_bytes(original)


@FUZZ
@given(data=st.data())
def test_probe_texts_a_manifest_vouches_for_parse_or_fail_cleanly(
    fingerprint_copy: Path, data: st.DataObject
) -> None:
    """The manifest records the new probes.jsonl's digest, so that its lines are parsed."""
    manifest_bytes = (fingerprint_copy / MANIFEST).read_bytes()
    probes_bytes = (fingerprint_copy / PROBES).read_bytes()
    lines = [json.loads(line) for line in probes_bytes.splitlines()]
    texts = data.draw(
        st.one_of(
            st.binary(max_size=512),
            mutated_bytes(probes_bytes),
            st.lists(json_documents(), max_size=12).map(b"\n".join),
            st.lists(st.sampled_from(HOSTILE_DOCUMENTS[2:]), max_size=12).map(b"\n".join),
            mutated_rows(lines),
        )
    )
    manifest = json.loads(manifest_bytes)
    manifest["files"][PROBES] = sha256_bytes(texts)
    (fingerprint_copy / PROBES).write_bytes(texts)
    (fingerprint_copy / MANIFEST).write_bytes(canonical_json(manifest))
    try:
        survives(lambda: read_fingerprint(fingerprint_copy))
    finally:
        (fingerprint_copy / PROBES).write_bytes(probes_bytes)
        (fingerprint_copy / MANIFEST).write_bytes(manifest_bytes)


# --- findings -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_signer(signed_case: SignedCase) -> Signer:
    """The case's key without its certificate: bundles it signs verify under ``--key``."""
    return Signer(private_key=signed_case.signer.private_key)


@pytest.fixture(scope="module")
def trusts(signed_case: SignedCase) -> dict[str, TrustPolicy]:
    return {
        "key": TrustPolicy(public_key=load_public_key(signed_case.keys.public_key)),
        "ca": TrustPolicy(roots=tuple(load_certificates(signed_case.keys.ca_certificate))),
    }


@pytest.fixture(scope="module")
def findings_copy(tmp_path_factory: pytest.TempPathFactory, signed_case: SignedCase) -> Path:
    target = tmp_path_factory.mktemp("fuzz-findings") / "findings"
    shutil.copytree(signed_case.findings, target)
    return target


@FUZZ
@given(data=st.data())
def test_findings_records_parse_or_fail_cleanly(
    findings_copy: Path,
    signed_case: SignedCase,
    bare_signer: Signer,
    trusts: dict[str, TrustPolicy],
    data: st.DataObject,
) -> None:
    """Each record is signed first, so that verify reads past the signature into the record
    (its form, verdict, decision rule and numbers), and so does the report's evidence loader."""
    original = (signed_case.findings / FINDINGS_FILE).read_bytes()
    (findings_copy / FINDINGS_FILE).write_bytes(data.draw(inputs(original, json.loads(original))))
    sign_directory(findings_copy, bare_signer)
    survives(lambda: verify_evidence(findings_copy, trusts["key"]))
    survives(
        lambda: load_evidence(
            findings_copy, trusts["key"], victim=signed_case.fingerprints["victim"]
        )
    )


# --- signature bundles --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(
    tmp_path_factory: pytest.TempPathFactory, signed_case: SignedCase, bare_signer: Signer
) -> list[tuple[bytes, dict[str, bytes]]]:
    """Two valid bundles over the findings (one carries the certificate, one a key hint), each
    with the files it signs."""
    bare = tmp_path_factory.mktemp("fuzz-bundle") / "findings"
    shutil.copytree(signed_case.findings, bare)
    sign_directory(bare, bare_signer)
    files = {FINDINGS_FILE: (signed_case.findings / FINDINGS_FILE).read_bytes()}
    return [
        ((folder / SIGNATURE_NAME).read_bytes(), files) for folder in (signed_case.findings, bare)
    ]


def compact(value: Any) -> bytes:
    """A bundle's written form: anything else fails its first check."""
    return json.dumps(value, separators=(",", ":")).encode()


@st.composite
def mutated_bundles(draw: st.DrawFn, raw: bytes) -> bytes:
    """A bundle with its statement, or its certificate, changed underneath valid base64 and
    written in the compact form, so that the parser reaches what lies inside."""
    bundle = json.loads(raw)
    if draw(st.booleans()) or "x509CertificateChain" not in bundle["verificationMaterial"]:
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        payload = draw(mutated_json(statement))
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode("ascii")
    else:
        certificates = bundle["verificationMaterial"]["x509CertificateChain"]["certificates"]
        der = base64.b64decode(certificates[0]["rawBytes"])
        new = draw(st.one_of(mutated_bytes(der), st.binary(max_size=256)))
        certificates[0]["rawBytes"] = base64.b64encode(new).decode("ascii")
    return compact(bundle)


@FUZZ
@given(data=st.data())
def test_signature_bundles_parse_or_fail_cleanly(
    bundles: list[tuple[bytes, dict[str, bytes]]],
    trusts: dict[str, TrustPolicy],
    data: st.DataObject,
) -> None:
    raw, files = data.draw(st.sampled_from(bundles))
    document = data.draw(
        st.one_of(
            inputs(raw, json.loads(raw)),
            mutated_json(json.loads(raw)).map(lambda doc: compact(json.loads(doc))),
            mutated_bundles(raw),
            mutated_bundles(raw),
        )
    )
    trust = trusts[data.draw(st.sampled_from(sorted(trusts)))]
    survives(lambda: verify_bundle_over(document, files, trust, path=Path("fuzzed")))


# --- probe files --------------------------------------------------------------------------------

#: CSV's own troublemakers, for random CSV-like text.
CSV_ALPHABET = st.sampled_from(list(",\"'\n\r\t \x00;text,id\ufeff\u2028é"))


@pytest.fixture(scope="module")
def probe_files(tmp_path_factory: pytest.TempPathFactory, small_probes: Any) -> dict[str, bytes]:
    """A valid probe file of each kind (the first 12 built-in texts), by suffix."""
    texts = small_probes.texts[:12]
    rows = "".join(f"{i},{json.dumps(text)}\n" for i, text in enumerate(texts))
    return {
        ".txt": "\n".join(texts).encode(),
        ".jsonl": b"".join(compact({"text": text}) + b"\n" for text in texts),
        ".csv": f"id,text\n{rows}".encode(),
    }


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-probes")


@FUZZ
@given(data=st.data())
def test_probe_files_load_or_fail_cleanly(
    probe_files: dict[str, bytes], probe_dir: Path, data: st.DataObject
) -> None:
    """`load_probes` on each kind of file, and the digest a fingerprint records of its texts."""
    suffix = data.draw(st.sampled_from(sorted(probe_files)))
    original = probe_files[suffix]
    content = data.draw(
        st.one_of(
            st.binary(max_size=512),
            mutated_bytes(original),
            st.text(CSV_ALPHABET, max_size=400).map(lambda text: text.encode()),
            st.lists(json_documents(), max_size=14).map(b"\n".join),
            mutated_rows([json.loads(line) for line in probe_files[".jsonl"].splitlines()]),
        )
    )
    column = data.draw(st.sampled_from([None, "text", "id", ""]))
    path = probe_dir / f"probes{suffix}"
    path.write_bytes(content)
    survives(lambda: load_probes(path, column=column).digest)


#: Files a fuzzer seldom writes: CSV past its field limit, lone surrogates, a NUL in the header.
HOSTILE_PROBE_FILES = {
    "a header field past the CSV field limit": (".csv", b"x" * 200_000 + b"\n"),
    "a text past the CSV field limit": (".csv", b"text\n" + b"y" * 200_000 + b"\n"),
    "a NUL in the CSV header": (".csv", b"te\x00xt\n" + b"a\n" * 12),
    "an unterminated CSV quote": (".csv", b'text\n"' + b"a\n" * 12),
    "lone surrogates in JSON lines": (".jsonl", b'{"text": "\\ud800 ok"}\n' * 12),
    "a lone surrogate in a CSV text": (
        ".csv",
        b"text\n" + "\ud800\n".encode("utf-8", "surrogatepass") * 12,
    ),
    "deeply nested JSON lines": (".jsonl", b"[" * 100_000 + b"\n"),
    "a byte-order mark and nothing else": (".txt", b"\xef\xbb\xbf"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_PROBE_FILES))
def test_hostile_probe_files_fail_with_one_probe_set_error(case: str, tmp_path: Path) -> None:
    suffix, content = HOSTILE_PROBE_FILES[case]
    path = tmp_path / f"probes{suffix}"
    path.write_bytes(content)
    with pytest.raises(ProbeSetError) as raised:
        load_probes(path).digest  # noqa: B018 - the digest is computed on access
    assert str(raised.value).strip() and "\n" not in str(raised.value)


# --- webhook deliveries -------------------------------------------------------------------------

SECRET = "fuzz-secret"
NOW = 1_800_000_000  # the receiver's clock reads a float, as time.time() does: NOW + 0.25
ALLOWED = {200, 400, 401}
VALID_PAYLOAD = {
    "entity": "model_version",
    "action": "created",
    "timestamp": "2027-01-15T08:00:00Z",
    "data": {"name": "m", "version": "1", "source": "models:/m-1", "run_id": None},
}


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> JobQueue:
    return JobQueue(tmp_path_factory.mktemp("fuzz-webhook") / "queue.sqlite")


def answered(queue: JobQueue, headers: dict[str, str], body: bytes) -> int:
    """handle_delivery's answer, which must be 200, 400 or 401 with a JSON object."""
    status, answer = handle_delivery(queue, SECRET, headers, body, now=NOW + 0.25)
    assert status in ALLOWED and isinstance(answer, dict), (status, answer)
    json.dumps(answer)
    return int(status)


payload_bytes = compact(VALID_PAYLOAD)
bodies = st.one_of(
    st.binary(max_size=512),
    json_documents(),
    st.sampled_from(HOSTILE_DOCUMENTS),
    mutated_bytes(payload_bytes),
    mutated_json(VALID_PAYLOAD),
    mutated_fields(VALID_PAYLOAD),
    mutated_fields(VALID_PAYLOAD),
)
timestamps = st.one_of(
    st.integers(NOW - 300, NOW + 300).map(str),
    st.integers(NOW - 300, NOW + 300).map(str),
    st.integers().map(str),
    st.sampled_from(["9" * 400, "-" + "9" * 400, "1e9", " 1800000000 ", "NaN", "0x10", ""]),
    st.text(max_size=20),
)


@FUZZ
@given(body=bodies, delivery_id=st.text(min_size=1, max_size=40), timestamp=timestamps)
def test_signed_webhook_deliveries_get_200_400_or_401(
    queue: JobQueue, body: bytes, delivery_id: str, timestamp: str
) -> None:
    """A valid HMAC over each body, so that the payload parser (and the queue) are reached."""
    headers = {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": signature(SECRET, delivery_id, timestamp, body),
    }
    answered(queue, headers, body)


header_names = st.sampled_from(
    ["X-MLflow-Delivery-Id", "X-MLflow-Timestamp", "X-MLflow-Signature", "Content-Type"]
)


@FUZZ
@given(
    headers=st.dictionaries(header_names | st.text(max_size=12), st.text(max_size=80), max_size=5),
    body=bodies,
)
def test_webhook_deliveries_with_random_headers_get_200_400_or_401(
    queue: JobQueue, headers: dict[str, str], body: bytes
) -> None:
    answered(queue, headers, body)


# --- the webhook's HTTP handler -----------------------------------------------------------------


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real receiver on a free local port, dropping silent clients after 1 s."""
    server = make_server(
        "127.0.0.1", 0, JobQueue(tmp_path / "queue.sqlite"), SECRET, 300, read_timeout=1.0
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    server.server_close()


def exchange(address: tuple[str, int], request: bytes, *, wait: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes; a server that neither answers nor closes
    within ``wait`` seconds fails the test (socket timeout)."""
    with socket.create_connection(address, timeout=wait) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def post(length: bytes, body: bytes = b"") -> bytes:
    return b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    "length", [b"abc", b"-1", b"-5", b"+5", b"1.5", b"0x10", b"1_0", b"\xb2", b"1 2", b"9" * 30]
)
def test_a_content_length_that_is_not_a_plain_number_gets_400(
    receiver: tuple[str, int], length: bytes
) -> None:
    """``int()`` of it raised (no answer at all), and ``-1`` read until the client hung up."""
    answer = exchange(receiver, post(length, b"{}"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400"), answer
    assert json.loads(body) == {"error": "bad Content-Length"}


def test_a_client_that_sends_less_than_it_announced_is_dropped(receiver: tuple[str, int]) -> None:
    """The server stops waiting after its read timeout (1 s here) and still serves others."""
    started = time.monotonic()
    with socket.create_connection(receiver, timeout=10) as connection:
        connection.sendall(post(b"100", b"{}"))  # 98 bytes short, and the connection kept open
        assert connection.recv(65536) == b""  # closed by the server, with no answer
    assert time.monotonic() - started < 5
    answer = exchange(receiver, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200"), answer


# --- what one client can hold (issue 16, item 7) --------------------------------------------------


@contextlib.contextmanager
def running_receiver(queue: JobQueue, **options: Any) -> Iterator[tuple[str, int]]:
    server = make_server("127.0.0.1", 0, queue, SECRET, 300, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def signed_post(delivery_id: str, *, now: int | None = None) -> bytes:
    """A delivery that the receiver accepts, as raw HTTP."""
    body = compact(VALID_PAYLOAD)
    stamp = str(int(time.time()) if now is None else now)
    return (
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-MLflow-Delivery-Id: {delivery_id}\r\nX-MLflow-Timestamp: {stamp}\r\n".encode()
        + f"X-MLflow-Signature: {signature(SECRET, delivery_id, stamp, body)}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def trickle_until_closed(address: tuple[str, int], request: bytes, give_up: float) -> float | None:
    """Send ``request`` a byte every 0.3 s (well inside any read timeout) and return the seconds
    until the server closed the connection, or None if it still held it after ``give_up``."""
    started = time.monotonic()
    with socket.create_connection(address, timeout=5) as connection:
        for byte in request:
            if time.monotonic() - started > give_up:
                return None
            try:
                connection.sendall(bytes([byte]))
            except OSError:  # reset by a server that closed
                return time.monotonic() - started
            readable, _, _ = select.select([connection], [], [], 0.3)
            if readable:
                try:
                    if connection.recv(65536) == b"":
                        return time.monotonic() - started
                except OSError:
                    return time.monotonic() - started
    return None  # the whole request went through: nothing stopped it


def test_a_client_trickling_a_byte_at_a_time_is_dropped_at_the_request_deadline(
    tmp_path: Path,
) -> None:
    """The attack: a byte every 0.3 s never trips a 1 s read timeout, so a receiver that bounds
    each read, not the request, gives the client its thread for as long as it keeps trickling
    (the signed delivery below would take over 100 s). The deadline (2 s) ends it."""
    request = signed_post("trickle")
    assert len(request) * 0.3 > 100
    with running_receiver(
        JobQueue(tmp_path / "q.sqlite"), read_timeout=1.0, request_timeout=2.0
    ) as address:
        held = trickle_until_closed(address, request, give_up=15)
        assert held is not None, "the receiver still held the trickling client after 15 s"
        assert 1.5 < held < 6, held
        answer = exchange(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 200"), answer


def test_connections_beyond_the_handler_cap_are_refused_at_once(tmp_path: Path) -> None:
    """The attack: open connections and send nothing. Each held a thread of its own, with no cap;
    now the third of a cap of 2 is answered 503 at once, and served again once one is freed."""
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with running_receiver(
        JobQueue(tmp_path / "q.sqlite"), read_timeout=30.0, request_timeout=30.0, max_handlers=2
    ) as address:
        idle = [socket.create_connection(address, timeout=5) for _ in range(2)]
        try:
            time.sleep(0.5)  # both accepted, each holding a handler
            started = time.monotonic()
            answer = exchange(address, get)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 503"), answer
            assert b"Retry-After: 5" in head and json.loads(body)["error"].startswith("busy")
            assert time.monotonic() - started < 2
        finally:
            for connection in idle:
                connection.close()  # the handlers see the hang-up and free their slots
        deadline = time.monotonic() + 5
        while (answer := exchange(address, get)).startswith(b"HTTP/1.0 503"):
            assert time.monotonic() < deadline, "the slots were not freed"
            time.sleep(0.1)
        assert answer.startswith(b"HTTP/1.0 200"), answer


def client_hello() -> bytes:
    """The first bytes a TLS client sends (its ClientHello), made without a network."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="x")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_tls_handshakes_are_held_to_the_same_timeouts(tmp_path: Path) -> None:
    """The attacks of the plain receiver, at the TLS handshake: a client that connects and says
    nothing, and one that trickles its ClientHello a byte every 0.3 s. Neither stops others
    from being served (the handshake is not done in the accepting loop), the silent one is
    dropped after the read timeout (1 s), the trickling one at the request deadline (2 s)."""
    certs = make_server_certs(tmp_path / "tls")
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    with running_receiver(
        JobQueue(tmp_path / "q.sqlite"),
        read_timeout=1.0,
        request_timeout=2.0,
        tls=server_context(certs.cert, certs.key),
    ) as address:
        with socket.create_connection(address, timeout=10) as silent:
            started = time.monotonic()
            with (
                socket.create_connection(address, timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as secure,
            ):
                secure.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert secure.recv(65536).startswith(b"HTTP/1.0 200")
            assert silent.recv(1) == b""  # closed by the receiver, unanswered
            assert 0.8 < time.monotonic() - started < 5
        hello = client_hello()
        assert len(hello) * 0.3 > 30
        held = trickle_until_closed(address, hello, give_up=15)
        assert held is not None, "the receiver still held the trickling handshake after 15 s"
        assert 1.5 < held < 6, held


class SlowQueue(JobQueue):
    """A queue whose enqueue takes 0.5 s: time for the client to hang up before the answer."""

    def enqueue(self, *args: Any, **kwargs: Any) -> bool:
        time.sleep(0.5)
        return super().enqueue(*args, **kwargs)


def test_a_client_that_hangs_up_before_its_answer_draws_no_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: send a delivery, then reset the connection before the answer is written.
    socketserver printed the BrokenPipe/ConnectionReset traceback on stderr; now it is one line
    in the receiver's log."""
    caplog.set_level(logging.INFO, logger="reef_forensics.plugins.webhook")
    queue = SlowQueue(tmp_path / "q.sqlite")
    with running_receiver(queue) as address:
        connection = socket.create_connection(address, timeout=5)
        connection.sendall(signed_post("hang-up"))
        time.sleep(0.2)  # the receiver has read it and is queueing the version
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()  # a reset: the answer has nowhere to go
        deadline = time.monotonic() + 5
        while not any("connection ended" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
    assert [(j.name, j.version) for j in queue.jobs()] == [("m", "1")]  # queued all the same
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err


def test_get_tells_unauthenticated_callers_no_queue_counts(tmp_path: Path) -> None:
    """``GET /`` answered the queue's counts (pending, running, failed ...) to anyone. Now
    ``/healthz`` says ok, ``/metrics`` wants the bearer token, every other path is 404."""
    queue = JobQueue(tmp_path / "q.sqlite")
    queue.enqueue("secret-model", "1", None)
    with running_receiver(queue, metrics_token="t0ken") as address:
        for path in (b"/", b"/webhook", b"/status", b"/metricsx", b"/healthz/"):
            answer = exchange(address, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 404") and b"pending" not in body, (path, answer)
        answer = exchange(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") and json.loads(body) == {"status": "ok"}
        for auth in (b"", b"Authorization: Bearer wrong\r\n", b"Authorization: t0ken\r\n"):
            request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
            answer = exchange(address, request)
            assert answer.startswith(b"HTTP/1.0 401") and b"reef_jobs" not in answer, answer
        auth = b"Authorization: Bearer t0ken\r\n"
        answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
        assert answer.startswith(b"HTTP/1.0 200"), answer
        assert b'reef_jobs{state="pending"} 1.0' in answer


@pytest.mark.parametrize(
    "data",
    [
        {"name": "\ud800", "version": "1"},
        {"name": "m", "version": "1", "source": {"uri": "models:/m-1"}},
        {"name": "m", "version": "1", "source": 5},
    ],
)
def test_a_model_version_the_queue_cannot_store_gets_400(queue: JobQueue, data: Any) -> None:
    """A lone surrogate (JSON's ``"\\ud800"``) or a source that is not a string reached SQLite
    and raised there; now the payload is refused."""
    body = compact({**VALID_PAYLOAD, "data": data})
    delivery_id = f"store-{sorted(data.items())!r}"
    headers = {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": str(NOW),
        "X-MLflow-Signature": signature(SECRET, delivery_id, str(NOW), body),
    }
    assert answered(queue, headers, body) == 400
