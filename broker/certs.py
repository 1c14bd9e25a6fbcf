"""A run's own TLS material: a CA, a server certificate for the broker, client certificates.

Keys are EC P-256 (fast to make, accepted by mosquitto and Python's ssl). Private keys are
written mode 0600; certificates are public. The CA key stays in the run directory so that
``orbitmesh broker-config`` can sign client certificates for the same CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.credentials import write_private
from orbitmesh.errors import BrokerError

LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")
VALID_DAYS = 30
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class ServerTLS:
    """Files a TLS listener needs: the CA that clients trust, the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_ca(directory: Path, name: str) -> Path:
    """Create ``ca.pem`` and ``ca.key`` (0600) in ``directory``; returns the CA file."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"orbitmesh CA {name}")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + dt.timedelta(VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    write_private(directory / "ca.key", _key_pem(key))
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_file


def make_server_cert(directory: Path, hosts: Sequence[str] = LOOPBACK_NAMES) -> ServerTLS:
    """A server certificate for ``hosts`` (IPs and DNS names), signed by the CA in ``directory``."""
    cert_file, key_file = _issue(directory, "server", hosts, ExtendedKeyUsageOID.SERVER_AUTH)
    return ServerTLS(directory / "ca.pem", cert_file, key_file)


def make_client_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A client certificate (CN ``name``) and its key, signed by the CA in ``directory``."""
    return _issue(directory, name, (), ExtendedKeyUsageOID.CLIENT_AUTH)


def make_run_tls(directory: Path, run_id: str, hosts: Sequence[str] = LOOPBACK_NAMES
                 ) -> ServerTLS:
    """A fresh CA for run ``run_id`` and a server certificate for ``hosts``."""
    make_ca(directory, run_id)
    return make_server_cert(directory, hosts)


def _issue(directory: Path, name: str, hosts: Sequence[str], usage: x509.ObjectIdentifier
           ) -> tuple[Path, Path]:
    issuer = _load_issuer(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - _CLOCK_SKEW)
               .not_valid_after(now + dt.timedelta(VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
    cert = builder.sign(issuer.key, hashes.SHA256())
    key_file = write_private(directory / f"{name}.key", _key_pem(key))
    cert_file = directory / f"{name}.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


def _load_issuer(directory: Path) -> _Issuer:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(),
                                                 password=None)
    except (OSError, ValueError) as exc:
        raise BrokerError(f"{directory}: cannot load the CA (ca.pem, ca.key): {exc}; "
                          "create it first (make_ca, or broker-config --tls-host)") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BrokerError(f"{directory / 'ca.key'}: expected the EC key orbitmesh writes")
    return _Issuer(cert, key)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
