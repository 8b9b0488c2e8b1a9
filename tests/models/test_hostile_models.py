"""Hostile models: nothing a suspect checkpoint carries runs, whatever the command, and no header
makes reef-forensics allocate what it declares.

Each pickle payload is a canary: unpickling it writes a file (a test proves it does). Each
command that can meet a model gets the hostile one; the canary file must never appear.
"""

from __future__ import annotations

import json
import os
import pickle
import runpy
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reef_forensics import ProbeSet, fingerprint_model
from reef_forensics.cli.main import main
from reef_forensics.crypto.keys import generate_keys
from reef_forensics.errors import BadInputError, ModelLoadError
from reef_forensics.formats.gguf_file import (
    FREE_ARRAY_ITEMS,
    MAX_ARRAY_ITEMS,
    MAX_METADATA_BYTES,
    TENSOR_BYTES_PER_ITEM,
    read_gguf_header,
)
from reef_forensics.formats.safetensors_file import MAX_HEADER
from reef_forensics.models.loading import resolve_model
from tests.mlops.test_mlflow import deployment, offline  # noqa: F401  (fixtures: a real MLflow server)

REEF = str(Path(sys.executable).parent / "reef-forensics")
#: The most memory (bytes, traced by tracemalloc) refusing one hostile file may take.
MEMORY_BOUND = 200 * 1024 * 1024


class Canary:
    """Unpickling this writes ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "pickle code ran"))


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reef-forensics: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def victim_fp(
    tmp_path_factory: pytest.TempPathFactory, zoo: dict[str, Path], small_probes: ProbeSet
) -> Path:
    """The victim's fingerprint on 40 texts: what `check` compares a hostile suspect with."""
    return fingerprint_model(
        zoo["victim"], tmp_path_factory.mktemp("hostile") / "victim-fp", probes=small_probes
    ).path


def pickle_suspect(zoo: dict[str, Path], folder: Path, marker: Path, protocol: int) -> Path:
    """The victim with its safetensors weights replaced by a canary pickle."""
    shutil.copytree(zoo["victim"], folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Canary(marker), protocol=protocol))
    return folder


def test_the_canary_fires_when_unpickled(zoo: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    suspect = pickle_suspect(zoo, tmp_path / "suspect", marker, protocol=4)
    pickle.loads((suspect / "pytorch_model.bin").read_bytes())
    assert marker.read_text() == "pickle code ran"


# --- pickle: every command, without --allow-pickle ---------------------------------------------

#: command -> (its arguments from the suspect, the victim's fingerprint and a scratch folder
#: that holds keys/), and what its error line says
PICKLE_COMMANDS: dict[str, tuple[Callable[[Path, Path, Path], list[object]], str]] = {
    "fingerprint": (
        lambda s, v, t: ["fingerprint", s, "--out", t / "out", "--no-progress"],
        "--allow-pickle",
    ),
    "check-suspect": (
        lambda s, v, t: ["check", "--victim", v, "--suspect", s, "--no-progress"],
        "--allow-pickle",
    ),
    "check-victim": (
        lambda s, v, t: ["check", "--victim", s, "--suspect", v, "--no-progress"],
        "--allow-pickle",
    ),
    "check-reference": (
        lambda s, v, t: ["check", "--victim", v, "--suspect", v, "--reference", s],
        "--allow-pickle",
    ),
    "check-victim-model": (
        lambda s, v, t: ["check", "--victim", v, "--suspect", v, "--victim-model", s],
        "--allow-pickle",
    ),
    "compare": (lambda s, v, t: ["compare", v, s], "fingerprint.json is missing"),
    "sign": (
        lambda s, v, t: ["sign", s, "--key", t / "keys" / "signing-key.pem"],
        "is not a fingerprint",
    ),
    "verify": (
        lambda s, v, t: ["verify", s, "--key", t / "keys" / "signing-key.pub.pem"],
        "model.sig is missing",
    ),
}


@pytest.mark.parametrize("command", sorted(PICKLE_COMMANDS))
def test_a_pickle_suspect_is_refused_by_every_command_and_never_run(
    capsys: pytest.CaptureFixture[str],
    zoo: dict[str, Path],
    victim_fp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    marker = tmp_path / "pwned"
    suspect = pickle_suspect(zoo, tmp_path / "suspect", marker, protocol=4)
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", "hostile-test")
    generate_keys(tmp_path / "keys", b"hostile-test")
    build, message = PICKLE_COMMANDS[command]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(capsys, *build(suspect, victim_fp, tmp_path))
    assert code == 2 and out == "", err
    assert message in one_error_line(err)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("command", ["fingerprint", "check-suspect"])
def test_with_allow_pickle_torch_refuses_the_payload_and_nothing_runs(
    capsys: pytest.CaptureFixture[str],
    zoo: dict[str, Path],
    victim_fp: Path,
    tmp_path: Path,
    command: str,
    protocol: int,
) -> None:
    """--allow-pickle reads pickle weights with torch's weights-only unpickler: a payload that
    is not tensors is refused, with the reason, and its code does not run."""
    marker = tmp_path / "pwned"
    suspect = pickle_suspect(zoo, tmp_path / "suspect", marker, protocol=protocol)
    args = PICKLE_COMMANDS[command][0](suspect, victim_fp, tmp_path)
    code, _, err = run_cli(capsys, *args, "--allow-pickle")
    assert code == 2, err
    line = one_error_line(err)
    assert "weights-only unpickler refused them" in line and "nothing in them was run" in line
    assert "weights_only` set to `False`" not in line  # torch's advice to load it unsafely
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_real_process_refuses_the_pickle_in_one_line(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    suspect = pickle_suspect(zoo, tmp_path / "suspect", marker, protocol=4)
    for extra in ([], ["--allow-pickle"]):
        done = subprocess.run(
            [REEF, "fingerprint", str(suspect), "--out", str(tmp_path / "out"), *extra],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        one_error_line(done.stderr)
        assert done.stdout == ""
        assert not marker.exists() and not (tmp_path / "out").exists()


# --- pickle: the MLflow worker, with a local SQLite registry (no server) ---------------------


@pytest.fixture
def pickle_version(
    zoo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, object]:
    """A registered model version whose only weights are the canary pickle."""
    from mlflow import MlflowClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    marker = tmp_path / "pwned"
    suspect = pickle_suspect(zoo, tmp_path / "suspect", marker, protocol=4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("hostile", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(suspect), artifact_path="model")
    client.create_registered_model("hostile")
    client.create_model_version("hostile", f"runs:/{run.info.run_id}/model", run.info.run_id)
    return {"uri": uri, "marker": marker, "client": client, "root": tmp_path}


def test_registry_downloads_of_a_pickle_version_are_refused_to_load(
    pickle_version: dict[str, object], tmp_path: Path
) -> None:
    from reef_forensics.mlops.registry import localize, materialize

    uri = str(pickle_version["uri"])
    folder = materialize("models:/hostile/1", tmp_path / "materialized", uri)
    assert (folder / "pytorch_model.bin").is_file()  # the files came down as they are
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        resolve_model(folder)
    (local,) = localize(["models:/hostile/1"], tmp_path / "localized", uri)
    assert local is not None
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        resolve_model(local)
    assert not Path(str(pickle_version["marker"])).exists()


def test_the_worker_never_loads_a_pickle_version(
    pickle_version: dict[str, object], tmp_path: Path
) -> None:
    from reef_forensics.mlops.config import Config
    from reef_forensics.mlops.jobqueue import JobQueue
    from reef_forensics.mlops.worker import Worker

    probes = tmp_path / "probes.txt"
    probes.write_text("".join(f"probe text number {i} for the worker\n" for i in range(12)))
    config = Config(
        tracking_uri=str(pickle_version["uri"]),
        queue=tmp_path / "queue.sqlite",
        probes=str(probes),
        work_dir=tmp_path / "work",
    )
    queue = config.open_queue()
    queue.enqueue("hostile", "1")
    worker = Worker(config, JobQueue(config.queue, max_attempts=5))
    job = queue.claim("test")
    assert job is not None
    assert worker.handle(job) == "failed"  # at once: retrying cannot make pickle safe
    (record,) = queue.jobs()
    assert record.state == "failed" and record.attempts == 1
    assert "only pickle weights" in (record.last_error or "")
    assert "the worker never loads pickle files" in (record.last_error or "")
    assert "--allow-pickle" not in (record.last_error or "")  # no option the worker lacks
    client = pickle_version["client"]
    tags = client.get_model_version("hostile", "1").tags  # type: ignore[attr-defined]
    assert tags["reef.status"] == "failed" and "pickle" in tags["reef.status.reason"]
    assert not Path(str(pickle_version["marker"])).exists()


# --- remote code -------------------------------------------------------------------------------

CODE_CANARY = "from pathlib import Path\nPath({marker!r}).write_text('model code ran')\n"


def remote_code_model(zoo: dict[str, Path], folder: Path, marker: Path) -> Path:
    """The victim claiming an architecture transformers lacks, with its code beside it."""
    shutil.copytree(zoo["victim"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="evil-arch",
        auto_map={
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModel": "modeling_evil.EvilModel",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (folder / name).write_text(CODE_CANARY.format(marker=str(marker)))
    return folder


def test_the_code_canary_fires_when_imported(zoo: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = remote_code_model(zoo, tmp_path / "remote", marker)
    runpy.run_path(str(folder / "modeling_evil.py"))
    assert marker.read_text() == "model code ran"


@pytest.mark.parametrize("command", ["fingerprint", "check-suspect", "check-victim"])
def test_remote_code_is_refused_through_the_cli_unless_trusted(
    capsys: pytest.CaptureFixture[str],
    zoo: dict[str, Path],
    victim_fp: Path,
    tmp_path: Path,
    command: str,
) -> None:
    marker = tmp_path / "pwned"
    folder = remote_code_model(zoo, tmp_path / "remote", marker)
    args = PICKLE_COMMANDS[command][0](folder, victim_fp, tmp_path)
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    line = one_error_line(err)
    assert "auto_map in config.json" in line and "--trust-remote-code" in line
    assert not marker.exists() and not (tmp_path / "out").exists()
    # trusting the code is never done next to a decrypted key
    code, _, err = run_cli(capsys, *args, "--trust-remote-code", "--key", tmp_path / "k.pem")
    assert code == 2 and "--key cannot be combined" in one_error_line(err)
    assert not marker.exists()


def test_a_tokenizer_asking_for_its_own_code_never_gets_it(
    capsys: pytest.CaptureFixture[str],
    zoo: dict[str, Path],
    small_probes: ProbeSet,
    tmp_path: Path,
) -> None:
    """auto_map in tokenizer_config.json: a known tokenizer class is used instead of the
    model's code; an unknown one is refused. The code runs in neither case."""
    marker = tmp_path / "pwned"
    folder = tmp_path / "tok"
    shutil.copytree(zoo["victim"], folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["auto_map"] = {"AutoTokenizer": ["tokenization_evil.Evil", "tokenization_evil.Evil"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "tokenization_evil.py").write_text(CODE_CANARY.format(marker=str(marker)))
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(small_probes.texts[:12]) + "\n")
    fp = ["fingerprint", folder, "--probes", probes, "--no-progress", "--out"]
    code, _, err = run_cli(capsys, *fp, tmp_path / "fp")
    assert code == 0, err
    settings["tokenizer_class"] = "EvilTokenizer"  # now no built-in class can stand in
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    code, _, err = run_cli(capsys, *fp, tmp_path / "fp2")
    assert code == 2 and "contains custom code" in one_error_line(err)
    assert not marker.exists() and not (tmp_path / "fp2").exists()


# --- GGUF headers ------------------------------------------------------------------------------


def gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def tensor_info_positions(path: Path, index: int) -> dict[str, int]:
    """Byte positions of one tensor info record's dims, type and offset (from the valid file)."""
    from gguf import GGUFReader

    field = GGUFReader(path).tensors[index].field
    name_len, name, n_dims = (int(field.parts[i].nbytes) for i in range(3))
    dims_at = field.offset + name_len + name + n_dims
    count = len(field.parts[3])
    return {
        "n_dims": dims_at - 4,
        "dims": dims_at,
        "offset": dims_at + 8 * count + 4,
    }


def patched(source: Path, target: Path, changes: list[tuple[int, bytes]]) -> Path:
    data = bytearray(source.read_bytes())
    for position, value in changes:
        data[position : position + len(value)] = value
    target.write_bytes(bytes(data))
    return target


def hostile_gguf(valid: Path, folder: Path, how: str) -> Path:
    target = folder / f"{how}.gguf"
    first, second = tensor_info_positions(valid, 0), tensor_info_positions(valid, 1)
    u64 = lambda n: struct.pack("<Q", n)  # noqa: E731
    if how == "tensor-count":
        return patched(valid, target, [(8, u64(1 << 62))])
    if how == "metadata-count":
        return patched(valid, target, [(16, u64(1 << 40))])
    if how == "huge-dimensions":
        return patched(valid, target, [(first["dims"], u64(1 << 32) + u64(1 << 31))])
    if how == "too-many-dimensions":
        return patched(valid, target, [(first["n_dims"], struct.pack("<I", 1 << 20))])
    if how == "offset-beyond-the-file":
        return patched(valid, target, [(first["offset"], u64(1 << 40))])
    if how == "overlapping":
        offset = valid.read_bytes()[first["offset"] : first["offset"] + 8]
        return patched(valid, target, [(second["offset"], offset)])
    if how == "truncated":
        target.write_bytes(valid.read_bytes()[: valid.stat().st_size * 2 // 3])
        return target
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf_string(b"evil.text")
    if how == "array-bomb":
        return with_metadata_bomb(valid, target)
    elif how == "string-length":
        target.write_bytes(header + struct.pack("<IQ", 8, 1 << 60) + b"x" * 64)
    return target


#: 4 MB of uint8 metadata: gguf's reader (which load_model uses for the BOS flag) makes a numpy
#: view of each byte, about 700 bytes each: without the header check, about 3 GB and 100 s
BOMB_ITEMS = 2 * MAX_ARRAY_ITEMS


def with_metadata_bomb(valid: Path, target: Path) -> Path:
    """The valid model file with one more metadata entry: ``BOMB_ITEMS`` zero bytes. The entry
    is a multiple of the 32-byte alignment long, so every tensor still lies where it says."""
    entry = gguf_string(b"evil.bom") + struct.pack("<IIQ", 9, 0, BOMB_ITEMS) + bytes(BOMB_ITEMS)
    assert len(entry) % 32 == 0
    data = bytearray(valid.read_bytes())
    (metadata_count,) = struct.unpack_from("<Q", data, 16)
    struct.pack_into("<Q", data, 16, metadata_count + 1)
    target.write_bytes(bytes(data[:24]) + entry + bytes(data[24:]))
    return target


def uint8_array_file(count: int) -> bytes:
    """A GGUF file with no tensors and one metadata entry: an array of ``count`` zero bytes."""
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf_string(b"evil.bytes")
    return header + struct.pack("<IIQ", 9, 0, count) + b"\0" * count


GGUF_CASES = {
    "tensor-count": "declares 4611686018427387904 tensors",
    "metadata-count": "declares 1099511627776 metadata entries",
    "huge-dimensions": "past the end of the",
    "too-many-dimensions": "has 1048576 dimensions (at most 4)",
    "offset-beyond-the-file": "past the end of the",
    "overlapping": "overlap",
    "truncated": "past the end of the",
    "array-bomb": f"declares {BOMB_ITEMS} items",
    "string-length": "past the end",
}


def traced_peak(action: Callable[[], object]) -> tuple[object, int]:
    """``action()``'s result and the peak memory it allocated (tracemalloc)."""
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("how", sorted(GGUF_CASES))
def test_a_hostile_gguf_header_is_refused_in_one_line_within_bounded_memory(
    capsys: pytest.CaptureFixture[str], zoo: dict[str, Path], tmp_path: Path, how: str
) -> None:
    hostile = hostile_gguf(zoo["gguf"], tmp_path, how)
    out = tmp_path / "out"
    code, peak = traced_peak(lambda: main(["fingerprint", str(hostile), "--out", str(out)]))
    err = capsys.readouterr().err
    with capsys.disabled():  # the figure docs/SECURITY.md quotes (`pytest -s`)
        print(f"hostile gguf {how}: refused, traced peak {peak / 2**20:.2f} MiB")
    assert code == 2, err
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB"
    line = one_error_line(err)
    assert "is not a valid GGUF file" in line and GGUF_CASES[how] in line, line
    assert not out.exists()


def test_metadata_arrays_are_capped_at_max_array_items(tmp_path: Path) -> None:
    path = tmp_path / "cap.gguf"
    path.write_bytes(uint8_array_file(MAX_ARRAY_ITEMS + 1))
    with pytest.raises(BadInputError, match=f"would hold more than {MAX_ARRAY_ITEMS}"):
        read_gguf_header(path)


def gguf_with_array_and_tensor(path: Path, items: int, tensor_bytes: int) -> Path:
    """A GGUF file: one metadata array of ``items`` zero bytes and one F32 tensor of
    ``tensor_bytes`` bytes (left sparse: the header check never reads tensor data)."""
    header = b"GGUF" + struct.pack("<IQQ", 3, 1 if tensor_bytes else 0, 1)
    header += gguf_string(b"evil.bytes") + struct.pack("<IIQ", 9, 0, items) + bytes(items)
    if tensor_bytes:
        header += gguf_string(b"t") + struct.pack("<IQIQ", 1, tensor_bytes // 4, 0, 0)
    header += bytes(-len(header) % 32)
    with path.open("wb") as handle:
        handle.write(header)
        handle.truncate(len(header) + tensor_bytes)
    return path


def test_metadata_arrays_are_capped_by_the_tensor_data_they_come_with(tmp_path: Path) -> None:
    """gguf's reader takes about 1 KB per array item: items beyond FREE_ARRAY_ITEMS need
    TENSOR_BYTES_PER_ITEM bytes of tensors each, which a real vocabulary's embedding has."""
    path = tmp_path / "items.gguf"
    gguf_with_array_and_tensor(path, FREE_ARRAY_ITEMS, 0)
    assert read_gguf_header(path).metadata_keys == ("evil.bytes",)
    gguf_with_array_and_tensor(path, FREE_ARRAY_ITEMS + 1, 0)
    with pytest.raises(BadInputError, match="bytes of tensor data allow"):
        read_gguf_header(path)
    extra, tensor_bytes = 1000, 1000 * TENSOR_BYTES_PER_ITEM
    gguf_with_array_and_tensor(path, FREE_ARRAY_ITEMS + extra, tensor_bytes)
    assert [t.end - t.begin for t in read_gguf_header(path).tensors] == [tensor_bytes]
    gguf_with_array_and_tensor(path, FREE_ARRAY_ITEMS + extra + 1, tensor_bytes)
    with pytest.raises(BadInputError, match=f"more than its {tensor_bytes} bytes of tensor"):
        read_gguf_header(path)


def test_metadata_is_capped_by_bytes(tmp_path: Path) -> None:
    """One string of more than MAX_METADATA_BYTES (sparse: it is skipped, never read)."""
    path = tmp_path / "long.gguf"
    for length, refused in ((1 << 20, False), (MAX_METADATA_BYTES + 1, True)):
        header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf_string(b"evil.text")
        header += struct.pack("<IQ", 8, length)
        with path.open("wb") as handle:
            handle.write(header)
            handle.truncate(len(header) + length)
        if refused:
            with pytest.raises(BadInputError, match="metadata takes more than"):
                read_gguf_header(path)
        else:
            assert read_gguf_header(path).metadata_keys == ("evil.text",)


def child_peak_rss(args: list[str], folder: Path) -> tuple[int, str, int]:
    """Run reef-forensics ARGS as a real process: its exit code, stderr and peak RSS (bytes)."""
    with (folder / "stderr.txt").open("w+") as err:
        process = subprocess.Popen([REEF, *args], stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return process.returncode, err.read(), usage.ru_maxrss * 1024  # Linux: KiB


def test_a_gguf_array_bomb_does_not_grow_a_real_process(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    """Peak RSS of `fingerprint` on the bomb, against the same command on a file refused at its
    magic bytes (same imports, nothing read): the difference is what the bomb cost."""
    bomb = hostile_gguf(zoo["gguf"], tmp_path, "array-bomb")
    dud = tmp_path / "dud.gguf"
    dud.write_bytes(b"NOPE" + bytes(64))
    out = tmp_path / "out"
    base_code, base_err, base_rss = child_peak_rss(
        ["fingerprint", str(dud), "--out", str(out)], tmp_path
    )
    code, err, rss = child_peak_rss(["fingerprint", str(bomb), "--out", str(out)], tmp_path)
    print(
        f"hostile gguf array bomb, real process: peak RSS {rss / 2**20:.0f} MiB, "
        f"{base_rss / 2**20:.0f} MiB for a file refused at its magic bytes"
    )
    assert (base_code, code) == (2, 2), base_err + err
    assert f"declares {BOMB_ITEMS} items" in one_error_line(err)
    assert rss - base_rss < MEMORY_BOUND, f"{(rss - base_rss) / 2**20:.0f} MiB more"
    assert not out.exists()


def test_a_hostile_gguf_suspect_is_refused_by_check(
    capsys: pytest.CaptureFixture[str], zoo: dict[str, Path], victim_fp: Path, tmp_path: Path
) -> None:
    hostile = hostile_gguf(zoo["gguf"], tmp_path, "array-bomb")
    code, peak = traced_peak(
        lambda: main(["check", "--victim", str(victim_fp), "--suspect", str(hostile)])
    )
    assert code == 2
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB"
    assert "is not a valid GGUF file" in one_error_line(capsys.readouterr().err)


def test_the_gguf_check_agrees_with_gguf_on_sound_files(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    """No false alarms: on a sound file (F32, and quantized with a custom alignment), every
    tensor's range is the one gguf's own reader finds."""
    import gguf
    import numpy as np

    quantized = tmp_path / "q8.gguf"
    writer = gguf.GGUFWriter(str(quantized), "llama")
    writer.add_custom_alignment(64)
    writer.add_array("evil.nested", [[1, 2], [3]])
    rows = gguf.quants.quantize(
        np.linspace(-1, 1, 256, dtype=np.float32).reshape(4, 64), gguf.GGMLQuantizationType.Q8_0
    )
    writer.add_tensor("q", rows, raw_shape=rows.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("h", np.ones((3, 5), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for path in (zoo["gguf"], quantized):
        ours = read_gguf_header(path)
        theirs = gguf.GGUFReader(path)
        assert ours.data_start == theirs.data_offset
        assert [(t.name, t.begin, t.end - t.begin) for t in ours.tensors] == [
            (t.name, t.data_offset, int(t.n_bytes)) for t in theirs.tensors
        ]
    assert read_gguf_header(quantized).alignment == 64
    assert read_gguf_header(zoo["gguf"]).scalars["tokenizer.ggml.add_bos_token"] is True
    assert resolve_model(zoo["gguf"]).kind == "gguf"


def test_a_gguf_written_big_endian_is_read_with_its_byte_order(tmp_path: Path) -> None:
    path = tmp_path / "be.gguf"
    path.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    assert read_gguf_header(path).version == 3
    path.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 1 << 40, 0))
    with pytest.raises(BadInputError, match="declares 1099511627776 tensors"):
        read_gguf_header(path)


# --- safetensors headers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "body", "message"),
    [
        (1 << 62, 64, "declares a 4611686018427387904-byte header in a"),
        (50_000_000, 50_000_000, f"declares a 50000000-byte header (at most {MAX_HEADER})"),
    ],
    ids=["declared-2**62", "real-50MB-header"],
)
def test_a_huge_safetensors_header_is_refused_without_reading_it(
    capsys: pytest.CaptureFixture[str],
    zoo: dict[str, Path],
    tmp_path: Path,
    declared: int,
    body: int,
    message: str,
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(zoo["victim"], folder)
    padding = body - len(b'{"__metadata__":{"pad":""}}')
    header = b'{"__metadata__":{"pad":"' + b"x" * padding + b'"}}'  # well-formed JSON
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", declared) + header[:body])
    out = tmp_path / "out"
    code, peak = traced_peak(lambda: main(["fingerprint", str(folder), "--out", str(out)]))
    assert code == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert peak < 20 * 1024 * 1024, f"{peak / 2**20:.0f} MiB: the header was read"
    assert not out.exists()


# --- weights that do not fill the architecture ---------------------------------------------------


@pytest.mark.parametrize("keep", ["none", "all but block 1"])
def test_weights_missing_from_the_checkpoint_are_refused_not_made_up(
    zoo: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], keep: str
) -> None:
    """transformers fills parameters a checkpoint lacks with random numbers: fingerprinting that
    would describe noise, so it is refused with one line."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "truncated"
    shutil.copytree(zoo["victim"], folder)
    weights = load_file(folder / "model.safetensors")
    kept = {
        name: tensor
        for name, tensor in weights.items()
        if keep != "none" and ".layers.1." not in name
    }
    save_file(kept or {"unused": torch.zeros(1)}, folder / "model.safetensors")
    code, _, err = run_cli(capsys, "fingerprint", folder, "--out", tmp_path / "fp")
    assert code == 2, err
    assert "the weights lack" in one_error_line(err) and "refused" in err
    assert not (tmp_path / "fp").exists()


# --- hostile tokenizers (issue 16) ---------------------------------------------------------------

#: Catastrophic backtracking: Oniguruma gives up after 10 million retries in one match, and
#: tokenizers panics (pyo3_runtime.PanicException, a BaseException).
PANIC_REGEX = r"(?:.|..)+(?=[^\s\S])"
#: Just short of that limit at each position: no panic, about 20 s per probe text here.
SLOW_REGEX = r"(?:.|.){0,22}(?=[^\s\S])"
#: An ordinary word-splitting pre-tokenizer regex, as real tokenizers have.
PLAIN_REGEX = r"\s?\w+|\s?[^\s\w]+|\s+"


def regex_tokenizer_model(zoo: dict[str, Path], folder: Path, pattern: str) -> Path:
    """The victim, its pre-tokenizer preceded by a Split on ``pattern``."""
    shutil.copytree(zoo["victim"], folder)
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text())
    split = {
        "type": "Split",
        "pattern": {"Regex": pattern},
        "behavior": "Isolated",
        "invert": False,
    }
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, spec["pre_tokenizer"]]}
    path.write_text(json.dumps(spec))
    return folder


@pytest.fixture
def probe_file(tmp_path: Path, small_probes: ProbeSet) -> Path:
    path = tmp_path / "probes.txt"
    path.write_text("\n".join(small_probes.texts[:12]) + "\n")
    return path


def test_the_hostile_regex_makes_tokenizers_panic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the regex does crash the library, with an exception `except Exception`
    does not catch."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    monkeypatch.setenv("RUST_BACKTRACE", "0")
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(PANIC_REGEX), "isolated")
    with pytest.raises(BaseException) as caught:  # the point: it is no Exception
        tokenizer.encode("a probe text of the usual length, long enough to backtrack")
    assert type(caught.value).__name__ == "PanicException"
    assert not isinstance(caught.value, Exception)


def test_a_panicking_tokenizer_is_refused_by_a_real_process_in_one_line(
    zoo: dict[str, Path], tmp_path: Path, probe_file: Path
) -> None:
    """With RUST_BACKTRACE=1 the panic used to print its report, a backtrace of about 400 lines
    and a Python traceback, and exit 1."""
    folder = regex_tokenizer_model(zoo, tmp_path / "hostile", PANIC_REGEX)
    out = tmp_path / "out"
    done = subprocess.run(
        [REEF, "fingerprint", str(folder), "--out", str(out), "--probes", str(probe_file)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "RUST_BACKTRACE": "1"},
    )
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_error_line(done.stderr)
    assert "tokenizer" in line and "crashed" in line and "backtracks catastrophically" in line
    assert "panicked at" not in done.stderr and done.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("command", ["fingerprint", "check-suspect"])
def test_a_panic_inside_this_process_is_refused_and_its_report_kept_off_stderr(
    capfd: pytest.CaptureFixture[str],
    zoo: dict[str, Path],
    victim_fp: Path,
    tmp_path: Path,
    probe_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """Without the trial in a child process the tokenizer panics here: the panic becomes one
    error line, and Rust's report (written to file descriptor 2) is not shown."""
    monkeypatch.setattr("reef_forensics.models.native.time_trial", lambda tokenizer, texts: None)
    monkeypatch.setenv("RUST_BACKTRACE", "1")
    folder = regex_tokenizer_model(zoo, tmp_path / "hostile", PANIC_REGEX)
    args = [str(a) for a in PICKLE_COMMANDS[command][0](folder, victim_fp, tmp_path)]
    if command == "fingerprint":
        args += ["--probes", str(probe_file)]
    capfd.readouterr()
    code = main(args)
    captured = capfd.readouterr()
    assert code == 2, captured.err
    line = one_error_line(captured.err)
    assert "crashed (a panic in native code" in line
    assert "panicked at" not in captured.err
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_that_backtracks_without_end_is_stopped_at_its_time_limit(
    capsys: pytest.CaptureFixture[str],
    zoo: dict[str, Path],
    tmp_path: Path,
    probe_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No panic, about 20 s per text: the trial process is killed at the limit (3 s here)."""
    monkeypatch.setattr("reef_forensics.models.native.TIME_LIMIT_SECONDS", 3.0)
    monkeypatch.setattr("reef_forensics.models.native.TIME_PER_TEXT_SECONDS", 0.0)
    folder = regex_tokenizer_model(zoo, tmp_path / "slow", SLOW_REGEX)
    out = tmp_path / "out"
    started = time.monotonic()
    code, _, err = run_cli(capsys, "fingerprint", folder, "--out", out, "--probes", probe_file)
    seconds = time.monotonic() - started
    assert code == 2, err
    assert "took more than 3 s on 12 text(s) and was stopped" in one_error_line(err)
    assert seconds < 60, seconds
    assert not out.exists()


def test_a_tokenizer_with_an_ordinary_regex_passes_its_trial(
    capsys: pytest.CaptureFixture[str], zoo: dict[str, Path], tmp_path: Path, probe_file: Path
) -> None:
    from reef_forensics.models.loading import load_model
    from reef_forensics.models.native import has_regex

    folder = regex_tokenizer_model(zoo, tmp_path / "plain", PLAIN_REGEX)
    assert has_regex(load_model(resolve_model(folder)).tokenizer.backend_tokenizer)
    code, _, err = run_cli(
        capsys, "fingerprint", folder, "--out", tmp_path / "fp", "--probes", probe_file
    )
    assert code == 0, err
    assert (tmp_path / "fp" / "fingerprint.json").is_file()


def test_a_real_worker_survives_a_panicking_tokenizer_and_fails_the_job_at_once(
    deployment: dict[str, Any],  # noqa: F811
    zoo: dict[str, Path],
    tmp_path: Path,
) -> None:
    """A version whose tokenizer panics, then an ordinary one, queued by a real MLflow server:
    one worker process takes both, fails the first on its first attempt (the model's fault: no
    retry) and fingerprints the second. Before, the panic killed the worker and the job stayed
    `running` until its lease ran out, for every worker that took it."""
    from mlflow import MlflowClient

    from reef_forensics.mlops.jobqueue import JobQueue
    from tests.mlops.test_mlflow import PASS, tags

    url = deployment["url"]
    client = MlflowClient(url, url)
    experiment = client.create_experiment(
        "hostile-tokenizer", artifact_location=str(tmp_path / "artifacts")
    )
    models = {
        "hostile-tokenizer": regex_tokenizer_model(zoo, tmp_path / "hostile", PANIC_REGEX),
        "after-hostile-tokenizer": zoo["victim"],
    }
    for name, folder in models.items():  # in this order: the hostile job comes first
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(folder), artifact_path="model")
        client.create_registered_model(name)
        client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    log = deployment["root"] / "worker-logs" / "hostile-tokenizer.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w+") as output:
        done = subprocess.run(
            [REEF, "worker", "--config", str(deployment["config"]), "--until-empty"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "REEF_KEY_PASSPHRASE": PASS, "RUST_BACKTRACE": "1"},
            timeout=600,
            check=False,
        )
        output.seek(0)
        text = output.read()
    assert done.returncode == 0, text[-3000:]
    assert "2 job(s) handled" in text, text[-3000:]
    assert "panicked at" not in text and "Traceback" not in text, text[-3000:]
    jobs = {j.name: j for j in JobQueue(deployment["queue"]).jobs()}
    hostile = jobs["hostile-tokenizer"]
    assert hostile.state == "failed" and hostile.attempts == 1, hostile
    assert "cannot be fingerprinted" in (hostile.last_error or "")
    assert "crashed (a panic in native code" in (hostile.last_error or "")
    assert jobs["after-hostile-tokenizer"].state == "done"
    found = tags(url, "hostile-tokenizer", 1)
    assert found["reef.status"] == "failed" and "tokenizer" in found["reef.status.reason"]
    assert tags(url, "after-hostile-tokenizer", 1)["reef.status"] == "done"


# --- configs and metadata that imply more than the files hold (issue 16) -------------------------

#: The most a refusal may add to a real process's resident memory (its peak over its baseline).
GROWTH_BOUND = 300 * 1024 * 1024
#: Dimensions of a 1B model, claimed by a config beside weights that do not have them.
BIG = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "vocab_size": 32000,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 64,
}


def victim_with(zoo: dict[str, Path], folder: Path, tensors: Any = None, **config: Any) -> Path:
    """The victim with ``config`` merged into its config.json and, given ``tensors`` (a
    function of the victim's weights), other weights."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(zoo["victim"], folder)
    settings = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**settings, **config}))
    if tensors is not None:
        weights = tensors(load_file(folder / "model.safetensors"))
        if weights is None:  # the 40-byte file: a header with no tensors
            header = b'{"__metadata__":{"a":"bbbbbbb"}}'
            (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
        else:
            save_file(weights, folder / "model.safetensors")
    return folder


def gguf_with_entry(valid: Path, target: Path, name: bytes, value: bytes) -> Path:
    """``valid`` with one more metadata entry, its key padded so that every tensor still lies
    where it says (the entry is a multiple of the 32-byte alignment long)."""
    for pad in range(32):
        entry = gguf_string(name + b"x" * pad) + value
        if len(entry) % 32 == 0:
            break
    data = bytearray(valid.read_bytes())
    (metadata_count,) = struct.unpack_from("<Q", data, 16)
    struct.pack_into("<Q", data, 16, metadata_count + 1)
    target.write_bytes(bytes(data[:24]) + entry + bytes(data[24:]))
    return target


def one_value_tensors(count: int) -> dict[str, Any]:
    import torch

    return {f"pad.{i}": torch.zeros(1) for i in range(count)}


def allocation_cases(zoo: dict[str, Path], root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (hostile model, what its error line says)."""
    from tests.gguf_export import export_llama_gguf

    def deep_gguf() -> Path:
        folder = victim_with(zoo, root / "deep-src", num_hidden_layers=10_000)
        (root / "deep-gguf").mkdir()
        return export_llama_gguf(folder, root / "deep-gguf" / "deep.gguf")

    items = 2_000_000  # just under MAX_ARRAY_ITEMS
    assert items < MAX_ARRAY_ITEMS
    return {
        "config 1B, 40-byte weights": (
            victim_with(zoo, root / "a", lambda w: None, num_hidden_layers=8, **BIG),
            "declares 8 layers, but the weights hold only 0 tensor(s)",
        ),
        "config 1B, 100 one-value tensors": (
            victim_with(
                zoo, root / "b", lambda w: one_value_tensors(100), num_hidden_layers=8, **BIG
            ),
            "the weights lack 74 of the architecture's parameters",
        ),
        "config 1B, the real weights": (
            victim_with(zoo, root / "c", **BIG),
            "its configuration gives embed_tokens.weight the shape (32000, 2048), its weights (512, 64)",
        ),
        "config of 10,000 layers, the real weights": (
            victim_with(zoo, root / "d", num_hidden_layers=10_000),
            "declares 10000 layers, more than 1024",
        ),
        "config of 1,000 layers, the real weights and 1,000 one-value tensors": (
            victim_with(
                zoo, root / "e", lambda w: {**w, **one_value_tensors(1000)}, num_hidden_layers=1000
            ),
            "the weights lack 8964 of the architecture's parameters",
        ),
        "GGUF of 10,000 blocks": (deep_gguf(), "declares 10000 layers, more than 1024"),
        "GGUF with a 2,000,000-item uint8 array": (
            gguf_with_entry(
                zoo["gguf"],
                root / "items.gguf",
                b"evil.",
                struct.pack("<IIQ", 9, 0, items) + bytes(items),
            ),
            f"its metadata arrays hold {items + 1276} items",
        ),
        "GGUF with 2,000,000 empty strings": (
            gguf_with_entry(
                zoo["gguf"],
                root / "strings.gguf",
                b"evil.",
                struct.pack("<IIQ", 9, 8, items) + bytes(8 * items),
            ),
            f"its metadata arrays hold {items + 1276} items",
        ),
    }


#: Run in a child process: import what loading a model imports, then for each case hand freed
#: memory back (malloc_trim: what one case freed must not hide what the next allocates), reset
#: the peak (/proc/self/clear_refs), take the resident size as the baseline, run `fingerprint`,
#: and read the peak (VmHWM): bench/bench_memory.py's measurement, one case after another.
_MEASURE = """
import contextlib, ctypes, gc, io, json, sys
from pathlib import Path

import gguf, torch, transformers
import transformers.models.llama.modeling_llama
from transformers import AutoConfig, AutoModel, AutoTokenizer
from reef_forensics.cli.main import main
import reef_forensics.models.fingerprinting

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

spec = json.loads(sys.argv[1])
main(["fingerprint", spec["warmup"], "--out", spec["out"]])  # first use of transformers' config
results = {}
for name, model in spec["cases"].items():
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    baseline = status("VmRSS")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["fingerprint", model, "--out", spec["out"]])
    results[name] = {"code": code, "err": err.getvalue(), "baseline": baseline,
                     "peak": status("VmHWM")}
print(json.dumps(results))
"""


def test_hostile_configs_and_metadata_are_refused_before_they_allocate(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    """Each case used to allocate what it declares before being refused (or loaded): 2.35 GB
    for the 40-byte weights, 2.55 GB and 84 s for 10,000 layers, 1.94 GB and 3.68 GB for the
    GGUF arrays (measured with /usr/bin/time -v). Now each is refused within GROWTH_BOUND of
    its process's baseline."""
    cases = allocation_cases(zoo, tmp_path)
    warmup = victim_with(
        zoo, tmp_path / "warmup", lambda w: {k: v for k, v in w.items() if ".layers.1." not in k}
    )
    spec = {
        "warmup": str(warmup),
        "out": str(tmp_path / "out"),
        "cases": {name: str(model) for name, (model, _) in cases.items()},
    }
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (_, message) in cases.items():
        result = results[name]
        grown = result["peak"] - result["baseline"]
        print(
            f"hostile model {name}: refused, peak {result['peak'] / 2**20:.0f} MiB, "
            f"{grown / 2**20:.0f} MiB over its baseline"
        )
        assert result["code"] == 2, result["err"]
        assert message in one_error_line(result["err"]), result["err"]
        assert grown < GROWTH_BOUND, f"{name}: grew {grown / 2**20:.0f} MiB"
    assert not (tmp_path / "out").exists()
