"""The transport contract, against real local servers: redirects are not followed, the
timeout bounds the exchange, answers are read up to a cap, connections are reused,
TLS is verified, and no answer is a TransportError that says why."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from feedhook.delivery.transport import (
    READ_LIMIT,
    AiohttpTransport,
    ReqwestTransport,
    Transport,
    TransportError,
    new_client,
    new_session,
    open_transport,
)

from conftest import free_port


class Server:
    def __init__(self) -> None:
        self.peers: set[object] = set()
        self.names: set[str] = set()  # header names as they came over the wire
        app = web.Application()
        app.router.add_post("/ok", self.ok)
        app.router.add_post("/moved", self.moved)
        app.router.add_post("/slow", self.slow)
        app.router.add_post("/big", self.big)
        self.app = app

    async def ok(self, request: web.Request) -> web.Response:
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        self.names.update(name.decode() for name, _ in request.raw_headers)
        return web.Response(text="fine", headers={"Retry-After": "7"})

    async def moved(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/ok"})

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response()

    async def big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (READ_LIMIT * 4))


async def serve(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    scheme = "https" if ssl_context else "http"
    return runner, f"{scheme}://127.0.0.1:{port}"


@pytest.fixture(params=["reqwest", "aiohttp"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    if request.param == "aiohttp":
        async with new_session() as session:
            yield AiohttpTransport(session)
    else:
        async with new_client() as client:
            yield ReqwestTransport(client)


async def test_the_contract(transport: Transport) -> None:
    server = Server()
    runner, base = await serve(server.app)
    try:
        for _ in range(5):
            answer = await transport.request(
                "POST", f"{base}/ok", {"webhook-id": "msg_1"}, b"{}", 5
            )
            assert (answer.status, answer.body, answer.headers["retry-after"]) == (
                200,
                b"fine",
                "7",
            )
        assert len(server.peers) == 1  # one connection, kept alive
        assert "webhook-id" in server.names  # names sent as spelled, not title-cased
        moved = await transport.request("POST", f"{base}/moved", {}, b"{}", 5)
        assert moved.status == 302 and moved.headers["Location"] == "/ok"  # not followed
        big = await transport.request("POST", f"{base}/big", {}, b"{}", 5)
        assert 0 < len(big.body) <= READ_LIMIT  # what had arrived, never the whole 256 KB
        with pytest.raises(TransportError, match="timeout"):
            await transport.request("POST", f"{base}/slow", {}, b"{}", 0.2)
    finally:
        await runner.cleanup()
    with pytest.raises(TransportError, match="cannot connect"):
        await transport.request("POST", f"http://127.0.0.1:{free_port()}/", {}, b"{}", 5)


async def test_receivers_addresses_are_parsed_once_and_kept_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pyreqwest's transport keeps each address parsed; past MAX_URLS addresses (reloads
    that keep changing them) it forgets them all and goes on."""
    from feedhook.delivery import transport as module

    monkeypatch.setattr(module, "MAX_URLS", 2)
    server = Server()
    runner, base = await serve(server.app)
    try:
        async with new_client() as client:
            reqwest = ReqwestTransport(client)
            for path in ("ok", "ok", "moved", "ok", "big", "ok"):
                answer = await reqwest.request("POST", f"{base}/{path}", {}, b"{}", 5)
                assert answer.status == {"ok": 200, "moved": 302, "big": 200}[path]
                assert len(reqwest._urls) <= 2
            kept = reqwest._urls[f"{base}/ok"]
            await reqwest.request("POST", f"{base}/ok", {}, b"{}", 5)
            assert reqwest._urls[f"{base}/ok"] is kept
    finally:
        await runner.cleanup()


async def test_a_server_that_hangs_up_is_said_so(transport: Transport) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TransportError, match="closed the connection without answering"):
            await transport.request("POST", f"http://127.0.0.1:{port}/", {}, b"{}", 5)
    finally:
        server.close()


async def test_deliveries_go_through_pyreqwest_and_aiohttp_where_it_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with open_transport() as transport:
        assert isinstance(transport, ReqwestTransport)

    def missing() -> None:
        raise ImportError("No module named 'pyreqwest'")

    monkeypatch.setattr("feedhook.delivery.transport.new_client", missing)
    async with open_transport() as transport:
        assert isinstance(transport, AiohttpTransport)


def certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    """Self-signed without an issuer (a CA when it signs others); else issued for the
    host `name`."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


async def serve_tls(
    tmp_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[web.AppRunner, str]:
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return await serve(Server().app, context)


async def test_tls_is_verified(transport: Transport, tmp_path: Path) -> None:
    """A receiver with a certificate nobody vouches for gets no request."""
    key = ec.generate_private_key(ec.SECP256R1())
    runner, base = await serve_tls(tmp_path, certificate("127.0.0.1", key), key)
    try:
        with pytest.raises(TransportError, match=r"(?i)certificate|ssl"):
            await transport.request("POST", f"{base}/ok", {}, b"{}", 5)
    finally:
        await runner.cleanup()


async def test_a_private_ca_named_in_ssl_cert_file_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Receivers behind an organisation's own CA: SSL_CERT_FILE names it, as for curl
    and OpenSSL, and deliveries reach them."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("feedhook test CA", ca_key)
    runner, base = await serve_tls(tmp_path, certificate("localhost", key, ca, ca_key), key)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    try:
        async with new_client() as client:
            url = base.replace("127.0.0.1", "localhost") + "/ok"
            answer = await ReqwestTransport(client).request("POST", url, {}, b"{}", 5)
            assert answer.status == 200
    finally:
        await runner.cleanup()
