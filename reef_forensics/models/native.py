"""Calls into Rust code that a hostile model can crash or stall: above all, its tokenizer.

A Rust panic inside tokenizers (or safetensors) reaches Python as ``pyo3_runtime.PanicException``,
a `BaseException`: it passes every ``except Exception`` and, uncaught, ends the process with a
traceback, after Rust's panic hook has written its report (with ``RUST_BACKTRACE`` set, hundreds
of backtrace lines) straight to file descriptor 2. A pre-tokenizer regex that backtracks
catastrophically in a model's ``tokenizer.json`` does this: Oniguruma gives up after 10 million
retries in one match and tokenizers panics. `native_calls` turns such a panic into one of our
errors and keeps the report off stderr.

A regex that backtracks just short of that limit does not panic: it takes seconds at each
position of each text, hours for a probe set, and a thread busy in Rust cannot be stopped.
`tokenize` therefore first runs a tokenizer whose normalizer or pre-tokenizer holds a regex on
the same texts in a child process (`time_trial`), killed when its time limit passes; only a
tokenizer that finished there runs in this process. Tokenizers without such regexes (their
stages run in linear time) skip the child, and so do tokenizers written in Python, which have
no Rust stages.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

from reef_forensics.errors import ReefError, TokenizerError, first_line, is_native_panic

#: The time a tokenizer may take on a probe set in the trial: far more than any real one needs
#: (milliseconds for a thousand texts), plus ``TIME_PER_TEXT_SECONDS`` per text for large sets.
TIME_LIMIT_SECONDS = 60.0
TIME_PER_TEXT_SECONDS = 0.01
#: Environment variables a trial process does not inherit.
_NOT_INHERITED = ("REEF_KEY_PASSPHRASE",)
_PANIC_REPORT = re.compile(rb"^thread '[^\n]*' (?:\(\d+\) )?panicked at ", re.MULTILINE)
#: The trial, run by ``python -c``: the tokenizer exactly as transformers built it (serialized),
#: the texts, and one JSON line on stdout that says how it went.
_TRIAL = """
import json, sys
from tokenizers import Tokenizer
job = json.loads(sys.stdin.buffer.read())
try:
    tokenizer = Tokenizer.from_str(job["tokenizer"])
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.encode_batch(job["texts"], add_special_tokens=True)
except BaseException as exc:
    kind = type(exc)
    panic = kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"
    print(json.dumps({"ok": False, "panic": panic, "message": str(exc)}))
else:
    print(json.dumps({"ok": True}))
"""


@contextlib.contextmanager
def native_calls(what: str, error: type[ReefError] = TokenizerError) -> Iterator[None]:
    """Run the block with a Rust panic turned into ``error`` ("WHAT crashed ...") and Rust's panic
    report kept off stderr.

    While the block runs, file descriptor 2 goes to a scratch file and ``RUST_BACKTRACE`` is 0
    (Rust reads it at the first panic); afterwards, what the block wrote to stderr is passed on,
    up to the panic report if there was one. ``REEF_DEBUG=1`` passes everything on, backtrace
    included."""
    debug = bool(os.environ.get("REEF_DEBUG"))
    backtrace = os.environ.get("RUST_BACKTRACE")
    if not debug:
        os.environ["RUST_BACKTRACE"] = "0"
    panicked = False
    try:
        with _stderr_held() as held:
            try:
                yield
            except BaseException as exc:
                if not is_native_panic(exc):
                    raise
                panicked = not debug
                raise error(_crash_message(what, exc)) from None
            finally:
                held.drop_panic_report = panicked
    finally:
        if not debug:
            if backtrace is None:
                os.environ.pop("RUST_BACKTRACE", None)
            else:
                os.environ["RUST_BACKTRACE"] = backtrace


def _crash_message(what: str, exc: BaseException) -> str:
    reason = first_line(exc)
    hint = (
        ": a regex in its tokenizer.json backtracks catastrophically"
        if "retry-limit" in reason
        else ""
    )
    return f"{what} crashed (a panic in native code: {reason}){hint}; refused"


class _Held:
    drop_panic_report = False


@contextlib.contextmanager
def _stderr_held() -> Iterator[_Held]:
    """Point file descriptor 2 at a scratch file for the block; pass its content on afterwards
    (cut at the first Rust panic report when ``drop_panic_report`` is set by then)."""
    held = _Held()
    with contextlib.suppress(Exception):  # sys.stderr may be None, or closed
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to keep clean
        yield held
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            written = sink.read()
            if held.drop_panic_report:
                report = _PANIC_REPORT.search(written)
                if report is not None:  # and the empty line that starts it
                    kept = written[: report.start()].rstrip(b"\n")
                    written = kept + b"\n" if kept.strip() else b""
            _write_all(2, written)


def _write_all(fd: int, data: bytes) -> None:
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(fd, data) :]


def tokenize(tokenizer: Any, texts: Sequence[str], **options: Any) -> Any:
    """``tokenizer(list(texts), **options)``, bounded: the tokenizer first passes `time_trial`
    on the same texts, then runs here inside `native_calls`. A crash or a stall is a
    `TokenizerError` (a `ModelLoadError`: the model's fault, not worth retrying)."""
    batch = list(texts)
    name = describe(tokenizer)
    time_trial(tokenizer, batch)
    with native_calls(f"the tokenizer of {name}"):
        return tokenizer(batch, **options)


def describe(tokenizer: Any) -> str:
    """The model a tokenizer came from (transformers keeps the folder it was loaded from)."""
    return str(getattr(tokenizer, "name_or_path", "") or "the model")


def time_limit(count: int) -> float:
    return TIME_LIMIT_SECONDS + TIME_PER_TEXT_SECONDS * count


def time_trial(tokenizer: Any, texts: Sequence[str]) -> None:
    """Run the tokenizer's Rust pipeline on ``texts`` in a child process, killed after
    `time_limit` seconds; raise `TokenizerError` if it crashed or ran out of time.

    Done only for a Rust tokenizer whose normalizer or pre-tokenizer holds a regex (the one
    stage that can take exponential time): others return at once. The child gets the pipeline
    as transformers built it (``backend_tokenizer.to_str()``) and the texts, imports nothing but
    tokenizers, and costs about 0.2 s. If no child can be started, the trial is skipped."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not has_regex(backend):
        return
    name = describe(tokenizer)
    limit = time_limit(len(texts))
    job = json.dumps({"tokenizer": backend.to_str(), "texts": list(texts)}).encode("utf-8")
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env["RUST_BACKTRACE"] = "0"
    try:
        done = subprocess.run(
            [sys.executable, "-c", _TRIAL],
            input=job,
            capture_output=True,
            timeout=limit,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TokenizerError(
            f"the tokenizer of {name} took more than {limit:g} s on {len(texts)} text(s) and "
            "was stopped (a regex in its tokenizer.json that backtracks?); refused"
        ) from None
    except OSError:
        return
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise TokenizerError(
            f"the tokenizer of {name} crashed the process that tried it "
            f"(exit status {done.returncode}); refused"
        )
    if result.get("panic"):
        raise TokenizerError(
            _crash_message(f"the tokenizer of {name}", _Reported(str(result.get("message"))))
        )
    # an ordinary error is left to the real call, which raises it where it is handled


class _Reported(Exception):
    """A panic reported by the trial process, for `_crash_message`."""


def has_regex(backend: Any) -> bool:
    """Whether a Rust tokenizer's normalizer or pre-tokenizer holds a regex pattern."""
    for stage in (backend.normalizer, backend.pre_tokenizer):
        if stage is None:
            continue
        try:
            state = stage.__getstate__()
        except Exception:  # cannot tell: try it
            return True
        text = state.decode("utf-8", "replace") if isinstance(state, bytes) else str(state)
        if '"Regex"' in text:
            return True
    return False
