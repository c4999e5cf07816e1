"""Kafka security: the client arguments every client gets, and telling a refusal from an outage.

The TLS cases run against real TLS servers on loopback (asyncio, certificates made with openssl
under ``tmp_path``); none needs Kafka. The real SASL_SSL broker is in
``tests/integration/test_secure.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from bucket_app.errors import KafkaAuthError, SettingsError
from bucket_app.kafka import security as kafka_security
from bucket_app.kafka.security import client_kwargs, faust_credentials, raise_if_refused
from bucket_app.settings import Settings, load
from tests.support.settings import SEED_INI, replace_line


def settings_for(tmp_path: Path, brokers: str = "127.0.0.1:9092", **env: str) -> Settings:
    (tmp_path / "msg_map_schema.json").write_text(json.dumps({"a": "a"}))
    (tmp_path / "sqlite_schema.json").write_text(json.dumps({
        "a": "TEXT", "bucket_start": "INTEGER", "bucket_end": "INTEGER", "count": "INTEGER"}))
    path = tmp_path / "settings.ini"
    path.write_text(replace_line(SEED_INI, "brokers", brokers))
    return load(path, {f"BUCKET_APP_{k.upper()}": v for k, v in env.items()})


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    """A self-signed CA: ``<name>.pem`` and ``<name>.key``."""
    openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", f"{name}.key", "-out", f"{name}.pem")
    return directory / f"{name}.pem"


def make_cert(directory: Path, ca: str, name: str, san: str) -> tuple[Path, Path]:
    """A certificate ``<name>.pem`` (key ``<name>.key``) for ``san``, signed by CA ``ca``."""
    (directory / f"{name}.ext").write_text(
        f"subjectAltName = {san}\nbasicConstraints = CA:FALSE\n")
    openssl(directory, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
    openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem",
            "-CAkey", f"{ca}.key", "-CAcreateserial", "-days", "2", "-sha256",
            "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return directory / f"{name}.pem", directory / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA ``ca`` with a server certificate for 127.0.0.1 and one for another name; CA ``other``."""
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_ca(directory, "other")
    make_cert(directory, "ca", "server", "IP:127.0.0.1,DNS:localhost")
    make_cert(directory, "ca", "elsewhere", "DNS:kafka.example.com")
    make_cert(directory, "ca", "client", "DNS:client")
    return directory


@asynccontextmanager
async def tls_server(pki: Path, cert: str = "server",
                     handle: Callable | None = None) -> AsyncIterator[int]:
    """A TLS server on loopback with certificate ``cert``; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:  # a TLS listener given Kafka's plaintext bytes fails and hangs up
            await reader.read(100)
        except (OSError, ssl.SSLError):
            pass
        writer.close()

    server = await asyncio.start_server(handle or hold, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextmanager
def mutual_tls_server(pki: Path, client_ca: str) -> Iterator[int]:
    """A TLS server that wants a client certificate signed by ``client_ca``; yields its port.

    Blocking OpenSSL in a thread, because asyncio's TLS server hangs up without the alert
    that tells the client why (Kafka's Java TLS sends it, as OpenSSL does).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.load_verify_locations(pki / f"{client_ca}.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- client_kwargs ---


def test_plaintext_is_aiokafkas_default(tmp_path):
    settings = settings_for(tmp_path)
    assert client_kwargs(settings) == {}
    assert faust_credentials(settings) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext(tmp_path, mechanism):
    settings = settings_for(tmp_path, security_protocol="SASL_PLAINTEXT",
                            sasl_mechanism=mechanism.lower(), sasl_username="u",
                            sasl_password="from env")
    assert client_kwargs(settings) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
        "sasl_plain_username": "u", "sasl_plain_password": "from env"}


def test_sasl_ssl_with_a_ca_file(tmp_path, pki):
    settings = settings_for(tmp_path, security_protocol="SASL_SSL",
                            sasl_mechanism="SCRAM-SHA-512", sasl_username="bucket_app",
                            sasl_password="secret", ssl_cafile=str(pki / "ca.pem"))
    kwargs = client_kwargs(settings)
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "bucket_app", "sasl_plain_password": "secret"}
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "ca"),),)]
    # one context for every client of the worker
    assert client_kwargs(settings)["ssl_context"] is context


def test_ssl_options(tmp_path, pki):
    settings = settings_for(tmp_path, security_protocol="ssl", ssl_check_hostname="false",
                            ssl_certfile=str(pki / "client.pem"),
                            ssl_keyfile=str(pki / "client.key"))
    kwargs = client_kwargs(settings)
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert kwargs["security_protocol"] == "SSL"
    assert not kwargs["ssl_context"].check_hostname
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    # no ssl_cafile: the system's CAs (whatever they are here), not the test CA
    assert ((("commonName", "ca"),),) not in [
        ca["subject"] for ca in kwargs["ssl_context"].get_ca_certs()]


@pytest.mark.parametrize("protocol,credentials", [
    ("SSL", SSLCredentials), ("SASL_SSL", SASLCredentials), ("SASL_PLAINTEXT", SASLCredentials),
])
def test_faust_gets_the_same_arguments(tmp_path, pki, protocol, credentials):
    """Faust's consumer and producer build their auth arguments with
    ``credentials_to_aiokafka_auth`` (a contract: see test_faust_clients_get_the_credentials)."""
    settings = settings_for(tmp_path, security_protocol=protocol,
                            sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                            sasl_password="p", ssl_cafile=str(pki / "ca.pem"))
    given = faust_credentials(settings)
    assert isinstance(given, credentials)
    assert dict(credentials_to_aiokafka_auth(given)) == {
        "ssl_context": None, **client_kwargs(settings)}


async def test_every_aiokafka_client_takes_the_arguments(tmp_path, pki):
    settings = settings_for(tmp_path, security_protocol="SASL_SSL",
                            sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                            sasl_password="p", ssl_cafile=str(pki / "ca.pem"))
    kwargs = client_kwargs(settings)
    for client in (AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1", **kwargs),
                   AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", **kwargs),
                   AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **kwargs)):
        inner = getattr(client, "_client", None) or client.client
        assert inner._security_protocol == "SASL_SSL"
        assert inner._sasl_mechanism == "SCRAM-SHA-512"
        assert inner._ssl_context is kwargs["ssl_context"]
        if isinstance(client, AIOKafkaAdminClient):
            await client.close()


async def test_faust_clients_get_the_credentials(tmp_path, pki):
    """Faust 0.15.3's consumer, producer and topic creation (which runs on those two clients'
    connections) all carry the credentials; a Faust upgrade that drops them fails here."""
    import faust

    settings = settings_for(tmp_path, security_protocol="SASL_SSL",
                            sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                            sasl_password="p", ssl_cafile=str(pki / "ca.pem"))
    app = faust.App("security-test", broker="kafka://127.0.0.1:1",
                    broker_credentials=faust_credentials(settings),
                    datadir=str(tmp_path / "data"))
    producer = app.producer._new_producer()
    consumer_thread = app.consumer._thread
    consumer = consumer_thread._create_worker_consumer(app.transport)
    for client in (producer.client, consumer._client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert (client._sasl_plain_username, client._sasl_plain_password) == ("u", "p")
        assert client._ssl_context is client_kwargs(settings)["ssl_context"]


def test_unloadable_tls_files_name_their_key(tmp_path, pki):
    (tmp_path / "not.pem").write_text("not a certificate\n")
    with pytest.raises(SettingsError, match=r"^\[KafkaSettings\] ssl_cafile in .*settings.ini "
                       r"\(or BUCKET_APP_SSL_CAFILE\): cannot load"):
        client_kwargs(settings_for(tmp_path, security_protocol="SSL",
                                   ssl_cafile=str(tmp_path / "not.pem")))
    with pytest.raises(SettingsError, match=r"^\[KafkaSettings\] ssl_keyfile in "):
        client_kwargs(settings_for(tmp_path, security_protocol="SSL",
                                   ssl_certfile=str(pki / "client.pem"),
                                   ssl_keyfile=str(pki / "server.key")))


# -------------------------------------------------------------- raise_if_refused ---


async def test_nothing_listening_is_unreachable_not_refused(tmp_path, pki):
    settings = settings_for(tmp_path, brokers=f"127.0.0.1:{free_port()}",
                            security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                            sasl_username="u", sasl_password="p",
                            ssl_cafile=str(pki / "ca.pem"))
    assert await raise_if_refused(settings) is None


async def test_a_tls_server_that_says_nothing_is_not_a_refusal(tmp_path, pki, monkeypatch):
    """Trusted certificate, then silence (a broker still starting): wait, do not exit."""
    monkeypatch.setattr(kafka_security, "DIAGNOSE_TIMEOUT_S", 1.0)
    settings = settings_for(tmp_path, security_protocol="SSL", ssl_cafile=str(pki / "ca.pem"))

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(kafka_security.DIAGNOSE_TIMEOUT_S + 1)
        writer.close()

    async with tls_server(pki, handle=silent) as port:
        settings = settings_for(tmp_path, brokers=f"127.0.0.1:{port}",
                                security_protocol="SSL", ssl_cafile=str(pki / "ca.pem"))
        assert await raise_if_refused(settings) is None


def one_line(exc: pytest.ExceptionInfo[KafkaAuthError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


async def test_untrusted_certificate_names_ssl_cafile(tmp_path, pki):
    async with tls_server(pki) as port:
        settings = settings_for(tmp_path, brokers=f"127.0.0.1:{port}",
                                security_protocol="SSL", ssl_cafile=str(pki / "other.pem"))
        with pytest.raises(KafkaAuthError) as caught:
            await raise_if_refused(settings)
    message = one_line(caught)
    assert message.startswith(f"[KafkaSettings] ssl_cafile in {settings.source} "
                              "(or BUCKET_APP_SSL_CAFILE): the certificate of the broker at "
                              f"127.0.0.1:{port} is not signed by a CA in {pki / 'other.pem'}")
    assert "SSLCertVerificationError" in message


async def test_certificate_for_another_host_names_ssl_check_hostname(tmp_path, pki):
    async with tls_server(pki, cert="elsewhere") as port:
        settings = settings_for(tmp_path, brokers=f"127.0.0.1:{port}",
                                security_protocol="SSL", ssl_cafile=str(pki / "ca.pem"))
        with pytest.raises(KafkaAuthError, match=r"^\[KafkaSettings\] ssl_check_hostname in "):
            await raise_if_refused(settings)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
async def test_plaintext_against_a_tls_listener_names_security_protocol(tmp_path, pki,
                                                                        protocol):
    async with tls_server(pki) as port:
        settings = settings_for(tmp_path, brokers=f"127.0.0.1:{port}",
                                security_protocol=protocol, sasl_username="u",
                                sasl_password="p")
        with pytest.raises(KafkaAuthError) as caught:
            await raise_if_refused(settings)
    message = one_line(caught)
    assert message.startswith(f"[KafkaSettings] security_protocol in {settings.source} (or "
                              "BUCKET_APP_SECURITY_PROTOCOL): the listener at "
                              f"127.0.0.1:{port} speaks TLS, so {protocol} cannot work there")


async def test_a_plain_tcp_server_that_hangs_up_is_not_a_refusal(tmp_path, pki):
    """TLS against something that is not Kafka at all: no evidence, so the worker waits."""
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = settings_for(tmp_path, brokers=f"127.0.0.1:{port}",
                                security_protocol="SSL", ssl_cafile=str(pki / "ca.pem"))
        assert await raise_if_refused(settings) is None
    finally:
        server.close()


@pytest.mark.parametrize("client_cert", [None, "client"])
async def test_client_certificate_refused_names_ssl_certfile(tmp_path, pki, client_cert):
    """Mutual TLS: no client certificate, or one the broker does not trust (TLS 1.3 says so
    only after the handshake, in an alert)."""
    files = {} if client_cert is None else {"ssl_certfile": str(pki / f"{client_cert}.pem"),
                                             "ssl_keyfile": str(pki / f"{client_cert}.key")}
    with mutual_tls_server(pki, client_ca="other") as port:
        settings = settings_for(tmp_path, brokers=f"127.0.0.1:{port}", security_protocol="SSL",
                                ssl_cafile=str(pki / "ca.pem"), **files)
        with pytest.raises(KafkaAuthError) as caught:
            await raise_if_refused(settings)
    assert one_line(caught).startswith(
        f"[KafkaSettings] ssl_certfile in {settings.source} (or BUCKET_APP_SSL_CERTFILE): the "
        f"broker at 127.0.0.1:{port} rejected this client's certificate: "), caught.value
