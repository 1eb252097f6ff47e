"""Throwaway TLS material for loopback peers: a CA, a server certificate for 127.0.0.1 and a client
certificate, made at test time with `cryptography` and written as PEM files; server-side contexts for
python's ssl + http.server; and OPC UA application certificates (`make_opcua_pki`)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # The client certificate and its key in one PEM file.
    client_combined: Path

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.ca_cert)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    usage: list[x509.ObjectIdentifier] | None = None,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_files(directory: Path) -> TlsFiles:
    """A fresh CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("EdgeInspect test CA")
    ca_cert = _issue("EdgeInspect test CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        "127.0.0.1",
        server_key,
        ca_name,
        ca_key,
        ca=False,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
        san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue(
        "edge-inspect line 1", client_key, ca_name, ca_key, ca=False, usage=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    pem = serialization.Encoding.PEM
    client_pem = client_cert.public_bytes(pem)
    return TlsFiles(
        ca_cert=write("ca.pem", ca_cert.public_bytes(pem)),
        server_cert=write("server.pem", server_cert.public_bytes(pem)),
        server_key=write("server.key", _key_pem(server_key)),
        client_cert=write("client.pem", client_pem),
        client_key=write("client.key", _key_pem(client_key)),
        client_combined=write("client-combined.pem", client_pem + _key_pem(client_key)),
    )


@dataclass(frozen=True)
class OpcUaPki:
    """OPC UA application certificates (RSA, as the OPC UA policies need), made with asyncua's own
    helpers: a plant CA, the server's certificate issued by it (PEM in a `.crt` file, its key as DER,
    so that the server must tell the formats apart by content), a client issued by the plant CA, and a
    rogue client that made its own certificate."""

    server_cert: Path
    server_key: Path
    # Holds the plant CA only: a client is trusted because the CA issued its certificate.
    trusted_dir: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    # The application URI in both client certificates (OPC UA checks it against the client's).
    client_uri: str = "urn:edgeinspect:test:plc"
    server_uri: str = "urn:edgeinspect:test:server"


def make_opcua_pki(directory: Path) -> OpcUaPki:
    from asyncua.crypto import cert_gen

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trusted").mkdir(exist_ok=True)
    loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    ca_key = cert_gen.generate_private_key()
    ca_cert = cert_gen.generate_self_signed_app_certificate(ca_key, "EdgeInspect test plant CA", {}, [], [])

    def issued(common_name: str, uri: str, usage: x509.ObjectIdentifier) -> tuple[x509.Certificate, bytes]:
        key = cert_gen.generate_private_key()
        san = [x509.UniformResourceIdentifier(uri), *loopback]
        csr = cert_gen.generate_app_certificate_signing_request(key, common_name, {}, san, [usage])
        return cert_gen.sign_certificate_request(
            csr, ca_cert, ca_key, days=1
        ), cert_gen.dump_private_key_as_pem(key)

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    der, pem = serialization.Encoding.DER, serialization.Encoding.PEM
    server_cert, server_key_pem = issued("edge-inspect", OpcUaPki.server_uri, ExtendedKeyUsageOID.SERVER_AUTH)
    server_key_der = serialization.load_pem_private_key(server_key_pem, password=None).private_bytes(
        der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    client_cert, client_key = issued("line PLC", OpcUaPki.client_uri, ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue_key = cert_gen.generate_private_key()
    rogue_cert = cert_gen.generate_self_signed_app_certificate(
        rogue_key,
        "line PLC",
        {},
        [x509.UniformResourceIdentifier(OpcUaPki.client_uri), *loopback],
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        days=1,
    )
    return OpcUaPki(
        server_cert=write("server.crt", server_cert.public_bytes(pem)),
        server_key=write("server.key", server_key_der),
        trusted_dir=write("trusted/plant-ca.der", ca_cert.public_bytes(der)).parent,
        client_cert=write("client.der", client_cert.public_bytes(der)),
        client_key=write("client-key.pem", client_key),
        rogue_cert=write("rogue.der", rogue_cert.public_bytes(der)),
        rogue_key=write("rogue-key.pem", cert_gen.dump_private_key_as_pem(rogue_key)),
    )
