"""The secured stack's private CA and broker certificate."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509

from sealtrail.infra.pki import BROKER_CN, ensure_tls


def test_broker_certificate_chains_to_the_ca_and_keys_are_private(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path / "tls", ("kafka", "127.0.0.1"))
    for secret in (files.ca_key, files.broker_key, files.broker_keystore):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    broker = x509.load_pem_x509_certificates(files.broker_cert.read_bytes())[0]
    broker.verify_directly_issued_by(ca)
    assert broker.subject.rfc4514_string() == f"CN={BROKER_CN}"
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["kafka"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    keystore = files.broker_keystore.read_text()
    assert keystore.startswith("-----BEGIN PRIVATE KEY-----") and keystore.count("CERTIFICATE") == 4
    # A second call keeps the same CA (clients that trust it keep working).
    assert ensure_tls(tmp_path / "tls").ca_cert.read_bytes() == files.ca_cert.read_bytes()
