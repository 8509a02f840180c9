"""TLS certificates for a SuperLink and key pairs for SuperNode authentication (``fedllm certs``).

A private CA signs the SuperLink's certificate (names and addresses as subject alternative names);
SuperNodes trust the CA. Each node gets an ECDSA P-384 key pair in OpenSSH format, the form Flower's
``--auth-supernode-private-key`` and ``flwr supernode register`` read. Private keys are written
mode 0600. Made with ``cryptography`` (a Flower dependency); nothing leaves the machine."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def make_certs(out: Path, hosts: list[str], nodes: int = 0, days: int = 365) -> dict[str, Path]:
    """CA (ca.crt), the SuperLink's certificate and key (server.pem, server.key) valid for ``hosts``,
    and ``nodes`` SuperNode key pairs (node-<i>.key, node-<i>.pub). Refuses to overwrite a CA key."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "ca.key").exists():
        raise FileExistsError(f"{out / 'ca.key'} exists: choose another directory (certificates are not overwritten)")
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedllm CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    _write(out / "ca.key", ca_key.private_bytes(pem, pkcs8, none), private=True)
    _write(out / "ca.crt", ca.public_bytes(pem))
    _write(out / "server.key", key.private_bytes(pem, pkcs8, none), private=True)
    _write(out / "server.pem", cert.public_bytes(pem))
    files = {"ca": out / "ca.crt", "cert": out / "server.pem", "key": out / "server.key"}
    for i in range(nodes):
        k = ec.generate_private_key(ec.SECP384R1())
        _write(out / f"node-{i}.key", k.private_bytes(pem, serialization.PrivateFormat.OpenSSH, none), private=True)
        _write(out / f"node-{i}.pub", k.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                  serialization.PublicFormat.OpenSSH) + b"\n")
        files[f"node-{i}"] = out / f"node-{i}.key"
    return files
