"""How every Kafka client of the worker connects: the ``[KafkaSettings]`` security keys.

One place turns ``security_protocol``, ``sasl_*`` and ``ssl_*`` into the arguments aiokafka's
clients take (:func:`client_kwargs`) and into Faust's ``broker_credentials``
(:func:`faust_credentials`), so the Faust app (consumer, producer and its topic creation), the
start-up probe (:mod:`bucket_app.kafka.topics`) and the snapshot reader cannot drift apart.

When the probe cannot start, :func:`raise_if_refused` asks each bootstrap server directly why:
aiokafka's client only logs the cause and raises "Unable to bootstrap", yet an operator fixes an
unreachable broker (wait) and a refusal (edit a key) differently. A refusal is raised only on
positive evidence — the broker's own SASL error, a certificate we do not trust, or the same
address answering the other protocol — so a slow or restarting broker is never mistaken for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.admin import SaslHandShakeRequest

from bucket_app.errors import KafkaAuthError, SettingsError, TlsFileError
from bucket_app.settings import KEYS_BY_SECTION, Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
# One step of the diagnosis (connect, handshake, one request); a few steps run per server.
DIAGNOSE_TIMEOUT_S = 5.0
# After a TLS handshake, how long to listen for the server's alert: TLS 1.3 servers reject a
# missing or unknown client certificate only after the handshake has completed client-side.
ALERT_WAIT_S = 0.5
# OpenSSL's verify codes for a certificate that does not name the host connected to.
_HOSTNAME_MISMATCH = frozenset({62, 64})


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaAdminClient, AIOKafkaConsumer and AIOKafkaProducer."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if protocol in SASL_PROTOCOLS:
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password
    return kwargs


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for ``settings`` (None for PLAINTEXT).

    Faust turns them into the same aiokafka arguments as :func:`client_kwargs` for its
    consumer and producer (``credentials_to_aiokafka_auth``), and creates topics through those
    clients' connections. ``SASLCredentials`` means SASL_SSL exactly when it has a context.
    """
    # imported here: the snapshot process imports this module and has no use for Faust
    from faust.auth import SASLCredentials, SSLCredentials  # noqa: PLC0415

    protocol = settings.security_protocol
    context = ssl_context(settings)
    if protocol in SASL_PROTOCOLS:
        return SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                               mechanism=settings.sasl_mechanism, ssl_context=context)
    if context is not None:
        return SSLCredentials(context)
    return None


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context every client shares, or None without TLS.

    Built once per TLS configuration (and so once per worker): each client would otherwise
    read and parse the CA and certificate files again.
    """
    if settings.security_protocol not in TLS_PROTOCOLS:
        return None
    try:
        return _ssl_context(settings.ssl_cafile, settings.ssl_certfile, settings.ssl_keyfile,
                            settings.ssl_check_hostname)
    except TlsFileError as exc:
        raise SettingsError(f"{key_ref(settings, exc.key)}: {exc.why}") from None


@functools.lru_cache(maxsize=8)
def _ssl_context(cafile: Path | None, certfile: Path | None, keyfile: Path | None,
                 check_hostname: bool) -> ssl.SSLContext:
    # aiokafka's helper, in two steps so that an unreadable file is blamed on its own key.
    try:
        context = create_ssl_context(cafile=cafile)
    except (OSError, ValueError) as exc:
        raise TlsFileError("ssl_cafile", f"cannot load {cafile} as PEM CA certificates: "
                         f"{_first_line(exc)}") from None
    if certfile is not None:
        try:
            context.load_cert_chain(certfile, keyfile)
        except (OSError, ValueError) as exc:
            key = "ssl_keyfile" if "KEY_VALUES_MISMATCH" in str(exc) else "ssl_certfile"
            raise TlsFileError(key, f"cannot load {certfile} with key {keyfile}: "
                             f"{_first_line(exc)}") from None
    context.check_hostname = check_hostname
    return context


def key_ref(settings: Settings, name: str) -> str:
    """Where an operator changes ``name``: ``[KafkaSettings] name in <file> (or <VARIABLE>)``."""
    key = KEYS_BY_SECTION["KafkaSettings"][name]
    return f"[{key.section}] {name} in {settings.source} (or {key.env})"


async def raise_if_refused(settings: Settings) -> None:
    """Raise :class:`~bucket_app.errors.KafkaAuthError` when a broker answers but refuses us.

    Called once the probe's client could not start. Returns None when no bootstrap server gave
    evidence of a refusal: they are unreachable (or slow), and the worker waits for them.
    """
    verdicts = await asyncio.gather(*(_diagnose(settings, server)
                                      for server in settings.brokers))
    for verdict in verdicts:
        if verdict is not None:
            raise KafkaAuthError(verdict)


async def _diagnose(settings: Settings, server: str) -> str | None:
    """Why ``server`` would not take this client: one line naming the key to fix, or None."""
    host, port = _split(server)
    protocol = settings.security_protocol
    kwargs = client_kwargs(settings)
    try:
        conn = await asyncio.wait_for(create_conn(
            host, port, client_id="bucket_app-probe",
            request_timeout_ms=int(DIAGNOSE_TIMEOUT_S * 1000), **kwargs), DIAGNOSE_TIMEOUT_S)
    except SaslAuthenticationFailed as exc:
        return (f"{key_ref(settings, 'sasl_password')}: the broker at {server} refused user "
                f"{settings.sasl_username!r} (wrong password or unknown user): {_name(exc)}")
    except UnsupportedSaslMechanismError:
        offered = await _offered_mechanisms(settings, host, port)
        return (f"{key_ref(settings, 'sasl_mechanism')}: the broker at {server} does not "
                f"take {settings.sasl_mechanism}"
                + (f" (it offers {', '.join(offered)})" if offered else "")
                + ": UnsupportedSaslMechanismError")
    except IllegalSaslStateError:
        return (f"{key_ref(settings, 'security_protocol')}: the listener at {server} does not "
                f"take SASL, so {protocol} cannot work there (use "
                f"{'SSL' if protocol == 'SASL_SSL' else 'PLAINTEXT'}): its answer to the SASL "
                "handshake was IllegalSaslStateError")
    except ssl.SSLCertVerificationError as exc:
        return _untrusted(settings, server, exc)
    except (OSError, TimeoutError, KafkaError) as exc:
        if isinstance(exc, ConnectionRefusedError | socket.gaierror):
            return None  # nothing listens there (yet): unreachable
        return await _transport_failed(settings, server, host, port)
    try:
        offered = None if protocol in SASL_PROTOCOLS else await _sasl_mechanisms(conn)
    finally:
        conn.close()
    if offered is not None:
        return (f"{key_ref(settings, 'security_protocol')}: the listener at {server} wants "
                f"SASL authentication ({', '.join(offered)}), but {protocol} has none (use "
                f"{'SASL_SSL' if protocol == 'SSL' else 'SASL_PLAINTEXT'}, sasl_mechanism, "
                "sasl_username and sasl_password)")
    return None


async def _transport_failed(settings: Settings, server: str, host: str, port: int) -> str | None:
    """Our connection broke before Kafka answered: TLS trouble, or the other protocol."""
    protocol = settings.security_protocol
    context = ssl_context(settings)
    if context is not None:
        error = await _tls_error(host, port, context)
        if isinstance(error, ssl.SSLCertVerificationError):
            return _untrusted(settings, server, error)
        if isinstance(error, ssl.SSLError) and any(
                alert in str(error) for alert in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE",
                                                  "UNKNOWN_CA", "CERTIFICATE_UNKNOWN")):
            return (f"{key_ref(settings, 'ssl_certfile')}: the broker at {server} rejected "
                    f"this client's certificate: {_name(error)}")
        if error is not None and await _speaks_plaintext(host, port):
            return (f"{key_ref(settings, 'security_protocol')}: the listener at {server} "
                    f"speaks plaintext Kafka, not TLS, so {protocol} cannot work there "
                    f"(TLS handshake: {_name(error)})")
        return None
    if await _tls_error(host, port, _accept_any_certificate()) is None:
        return (f"{key_ref(settings, 'security_protocol')}: the listener at {server} speaks "
                f"TLS, so {protocol} cannot work there (use "
                f"{'SSL' if protocol == 'PLAINTEXT' else 'SASL_SSL'} and ssl_cafile)")
    return None


def _untrusted(settings: Settings, server: str, exc: ssl.SSLCertVerificationError) -> str:
    reason = exc.verify_message or _first_line(exc)
    if exc.verify_code in _HOSTNAME_MISMATCH:
        return (f"{key_ref(settings, 'ssl_check_hostname')}: the certificate of the broker at "
                f"{server} does not name that host ({reason}); name the broker in brokers as "
                "its certificate does, or set ssl_check_hostname = false")
    trusted = settings.ssl_cafile or "the system's trusted CAs"
    return (f"{key_ref(settings, 'ssl_cafile')}: the certificate of the broker at {server} is "
            f"not signed by a CA in {trusted}: SSLCertVerificationError: {reason}")


async def _tls_error(host: str, port: int, context: ssl.SSLContext) -> BaseException | None:
    """A TLS handshake with ``host:port`` and a moment's listening: its error, or None."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), DIAGNOSE_TIMEOUT_S)
        with contextlib.suppress(TimeoutError):
            if not await asyncio.wait_for(reader.read(1), ALERT_WAIT_S):
                return ConnectionResetError("closed after the TLS handshake")
    except (OSError, TimeoutError) as exc:
        return exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)
    return None


def _accept_any_certificate() -> ssl.SSLContext:
    # Only asks "does this port speak TLS?"; nothing is sent over it.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # noqa: S503 - a probe, no data is exchanged
    return context


async def _speaks_plaintext(host: str, port: int) -> bool:
    """Whether ``host:port`` answers Kafka's ApiVersions request without TLS."""
    try:
        conn = await asyncio.wait_for(create_conn(
            host, port, client_id="bucket_app-probe",
            request_timeout_ms=int(DIAGNOSE_TIMEOUT_S * 1000)), DIAGNOSE_TIMEOUT_S)
    except (OSError, TimeoutError, KafkaError):
        return False
    conn.close()
    return True


async def _sasl_mechanisms(conn: AIOKafkaConnection) -> list[str] | None:
    """The SASL mechanisms the listener of ``conn`` (connected without SASL) offers, or None
    when it takes no SASL (or did not say).

    A listener without SASL answers the handshake with ILLEGAL_SASL_STATE; a SASL listener,
    before authentication, answers it with its mechanisms.
    """
    try:
        response = await asyncio.wait_for(conn.send(SaslHandShakeRequest("PLAIN")),
                                          DIAGNOSE_TIMEOUT_S)
    except (OSError, TimeoutError, KafkaError):
        return None
    if response.error_code == IllegalSaslStateError.errno:
        return None
    return [str(name) for name in response.enabled_mechanisms]


async def _offered_mechanisms(settings: Settings, host: str, port: int) -> list[str] | None:
    """The mechanisms ``host:port`` offers, asked over the same transport without SASL."""
    context = ssl_context(settings)
    kwargs: dict[str, Any] = {"security_protocol": "PLAINTEXT"} if context is None else {
        "security_protocol": "SSL", "ssl_context": context}
    try:
        conn = await asyncio.wait_for(create_conn(
            host, port, client_id="bucket_app-probe",
            request_timeout_ms=int(DIAGNOSE_TIMEOUT_S * 1000), **kwargs), DIAGNOSE_TIMEOUT_S)
    except (OSError, TimeoutError, KafkaError):
        return None
    try:
        return await _sasl_mechanisms(conn)
    finally:
        conn.close()


def _split(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def _name(exc: BaseException) -> str:
    # aiokafka's errors already start with their name ("[Error 58] SaslAuthenticationFailed: ...")
    text, name = _first_line(exc), type(exc).__name__
    return text if name in text else f"{name}: {text}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
