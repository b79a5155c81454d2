"""A private CA and broker certificate for the secured local stack, made with ``cryptography``.

Layout under ``$SEALTRAIL_HOME/tls``: ``ca.pem`` (the CA certificate clients trust), ``ca.key``
(0600), ``broker.key`` (0600, PKCS#8), ``broker.pem`` (certificate + CA) and
``broker-keystore.pem`` (0600: key and chain in one file, the broker's PEM keystore). The broker
certificate names 127.0.0.1 and localhost, so clients verify the host name as usual.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealtrail.infra.errors import StackError

# The broker's certificate subject: brokers and the stack tool authenticate with it on the
# mutual-TLS internal and controller listeners, so it is a Kafka super user (User:CN=...).
BROKER_CN = "sealtrail-broker"
VALID_DAYS = 825


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    broker_key: Path
    broker_cert: Path
    broker_keystore: Path

    @classmethod
    def under(cls, directory: Path) -> TlsFiles:
        return cls(
            ca_cert=directory / "ca.pem",
            ca_key=directory / "ca.key",
            broker_key=directory / "broker.key",
            broker_cert=directory / "broker.pem",
            broker_keystore=directory / "broker-keystore.pem",
        )

    @property
    def broker_principal(self) -> str:
        return f"User:CN={BROKER_CN}"


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte (replacing any old file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealtrail local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_tls(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> TlsFiles:
    """Create the CA and a broker certificate for ``hosts`` once; later calls reuse them."""
    files = TlsFiles.under(directory)
    if all(
        p.exists() for p in (files.ca_cert, files.ca_key, files.broker_keystore, files.broker_key)
    ):
        return files
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    except OSError as exc:
        raise StackError(f"cannot create the TLS folder {directory} ({exc.strerror})") from None
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=VALID_DAYS)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("sealtrail local CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_CN)]))
        .issuer_name(ca_name)
        .public_key(broker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([_san(host) for host in hosts]),
            critical=False,
        )
        # Server auth for its listeners, client auth for broker-to-broker and -to-controller.
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    chain_pem = broker_cert.public_bytes(serialization.Encoding.PEM) + ca_pem
    write_secret(files.ca_key, _key_pem(ca_key))
    write_secret(files.broker_key, _key_pem(broker_key))
    write_secret(files.broker_keystore, _key_pem(broker_key) + chain_pem)
    files.broker_cert.write_bytes(chain_pem)
    files.ca_cert.write_bytes(ca_pem)
    return files
