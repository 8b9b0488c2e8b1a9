"""TLS for the webhook receiver: the server's context from a PEM certificate and key, and a
handshake held to the request's deadline.

The handshake runs in the connection's own thread (never in the accepting loop, where one
client that connects and says nothing would stop every other), without blocking: each wait for
the client is at most ``read_timeout`` seconds, and the whole handshake ends by the request's
deadline, so a client trickling its hello a byte at a time is dropped as a trickled request is.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import time
from pathlib import Path

from reef_forensics.errors import BadInputError

PASSPHRASE_ENV = "REEF_TLS_KEY_PASSPHRASE"


def server_context(certfile: Path, keyfile: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context serving ``certfile`` (its chain may follow it in the file) with
    the private key in ``keyfile`` (or in ``certfile`` when none). An encrypted key takes its
    passphrase from $REEF_TLS_KEY_PASSPHRASE. Every failure is one line (BadInputError)."""
    for what, path in (("certificate", certfile), ("key", keyfile)):
        if path is not None and not path.is_file():
            raise BadInputError(f"cannot read the TLS {what} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    key = keyfile or certfile
    asked: list[bool] = []  # whether OpenSSL asked for a passphrase: the key is encrypted

    def passphrase() -> str:
        asked.append(True)
        value = os.environ.get(PASSPHRASE_ENV)
        if not value:
            raise _NoPassphrase
        return value

    try:
        context.load_cert_chain(certfile, keyfile, password=passphrase)
    except _NoPassphrase:
        raise BadInputError(
            f"the TLS key {key} is encrypted: set {PASSPHRASE_ENV} to its passphrase"
        ) from None
    except ssl.SSLError as exc:
        if asked and "KEY_VALUES_MISMATCH" not in (exc.reason or ""):
            raise BadInputError(
                f"wrong passphrase for the TLS key {key} ({PASSPHRASE_ENV})"
            ) from None
        raise BadInputError(_explain(exc, certfile, key)) from None
    except OSError as exc:
        raise BadInputError(
            f"cannot read the TLS certificate {certfile} or key {key}: {exc.strerror or exc}"
        ) from None
    return context


class _NoPassphrase(Exception):
    pass


def _explain(exc: ssl.SSLError, certfile: Path, key: Path) -> str:
    reason = exc.reason or ""
    if "KEY_VALUES_MISMATCH" in reason:
        return f"the TLS key {key} is not the key of the certificate {certfile}"
    return f"{certfile} and {key} are not a PEM certificate and its private key ({reason or exc})"


def handshake(
    context: ssl.SSLContext, connection: socket.socket, deadline: float, read_timeout: float
) -> ssl.SSLSocket:
    """The connection as TLS, once the handshake is done: each wait for the client at most
    ``read_timeout`` seconds, the whole by ``deadline`` (``time.monotonic``); TimeoutError or
    ssl.SSLError otherwise (both OSError), the connection closed then."""
    secure = context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
    try:
        secure.setblocking(False)
        while True:
            waiting: tuple[list[ssl.SSLSocket], list[ssl.SSLSocket]]
            try:
                secure.do_handshake()
                break
            except ssl.SSLWantReadError:
                waiting = ([secure], [])
            except ssl.SSLWantWriteError:
                waiting = ([], [secure])
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the TLS handshake was not complete by the request's deadline")
            readable, writable, _ = select.select(*waiting, [], min(read_timeout, left))
            if not readable and not writable and read_timeout < left:
                raise TimeoutError(f"the client was silent for {read_timeout:g} s in the handshake")
        secure.setblocking(True)
        return secure
    except BaseException:
        secure.close()
        raise


def close(secure: socket.socket) -> None:
    """End a TLS connection the way socketserver ends a plain one: no more writes, then close."""
    with contextlib.suppress(OSError):
        secure.shutdown(socket.SHUT_WR)
    secure.close()
