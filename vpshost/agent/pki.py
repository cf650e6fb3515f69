"""The cluster's small PKI: mutual TLS between the control plane and its agents.

One CA lives in the control plane's state dir (``<state_dir>/pki`` or ``[agent] pki_dir``)
beside the control plane's own client certificate. ``vps pki issue`` signs one server
certificate per agent, naming the addresses the control plane dials. Keys are EC P-256
(every TLS stack takes them); private keys are written mode 0600. There is no revocation
list: a lost host key means a new CA (see docs/cluster.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vpshost.errors import UsageError

CA_DAYS = 3650  # the CA outlives its hosts; renewing it means re-issuing every agent
LEAF_DAYS = 730  # agents and the control plane: renew every two years
RENEW_DAYS = 30  # warn (and let `pki init` renew the client) this close to expiry
CA_CERT, CA_KEY = "ca.crt", "ca.key"
CLIENT_CERT, CLIENT_KEY = "client.crt", "client.key"
AGENT_CERT, AGENT_KEY = "agent.crt", "agent.key"
Key = ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpshost"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "vpshost cluster CA", days: int = CA_DAYS,
            now: dt.datetime | None = None) -> tuple[Key, x509.Certificate]:
    key, start = new_key(), (now or _now()) - dt.timedelta(minutes=5)  # clock skew
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca_key: Key, ca_cert: x509.Certificate, cn: str, *, server: bool,
          ips: list[str] | None = None, dns: list[str] | None = None,
          days: int = LEAF_DAYS, now: dt.datetime | None = None
          ) -> tuple[Key, x509.Certificate]:
    """A leaf certificate: for an agent (``server``: serverAuth, subjectAltName with the
    addresses the control plane dials) or for the control plane (clientAuth only, so a
    host's key cannot pose as the control plane towards another agent)."""
    sans: list[x509.GeneralName] = []
    for ip in ips or []:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise UsageError(f"'{ip}' is not an IP address", "--ip 10.0.0.2") from None
    sans += [x509.DNSName(d) for d in dns or []]
    if server and not sans:
        raise UsageError(f"the certificate of {cn} would name no address",
                         "give the address the control plane uses in the agent's URL: "
                         "--ip 10.0.0.2 and/or --dns node1.example.net")
    key, start = new_key(), (now or _now()) - dt.timedelta(minutes=5)
    end = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    b = (x509.CertificateBuilder()
         .subject_name(_name(cn)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(
             digital_signature=True, content_commitment=False, key_encipherment=False,
             data_encipherment=False, key_agreement=False, key_cert_sign=False,
             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
             ca_ski), critical=False))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


# -- files -----------------------------------------------------------------------------
def write_key(path: Path, key: Key) -> None:
    """Written through a 0600 descriptor, so the key is never readable by others."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    tmp.rename(path)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.chmod(0o644)
    tmp.rename(path)


def read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"no certificate at {path}",
                         "make one with `vps pki init` / `vps pki issue`") from None
    except ValueError:
        raise UsageError(f"{path} is not a PEM certificate") from None


def _read_key(path: Path) -> Key:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"{path} is not an EC private key")
    return key


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def expiry_problem(cert: x509.Certificate, path: Path,
                   now: dt.datetime | None = None) -> str | None:
    """Why ``cert`` cannot be used now, or None."""
    now = now or _now()
    if now < cert.not_valid_before_utc:
        return f"{path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def expires_soon(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    return cert.not_valid_after_utc - (now or _now()) < dt.timedelta(days=RENEW_DAYS)


def init(pki: Path) -> list[str]:
    """The CA (made once, never overwritten: every agent trusts it) and the control
    plane's client certificate (made again when missing or close to expiry)."""
    _private_dir(pki)
    done = []
    if not (pki / CA_KEY).exists():
        if (pki / CA_CERT).exists():
            raise UsageError(f"{pki / CA_CERT} exists without its key {pki / CA_KEY}",
                             "restore the key, or move the directory away to start over "
                             "(every agent then needs a new certificate)")
        key, cert = make_ca()
        write_key(pki / CA_KEY, key)
        write_cert(pki / CA_CERT, cert)
        done.append(f"cluster CA: {pki / CA_CERT} (key {pki / CA_KEY}, mode 0600)")
    client = pki / CLIENT_CERT
    if not client.exists() or not (pki / CLIENT_KEY).exists() \
            or expires_soon(read_cert(client)):
        ca_key, ca_cert = _read_key(pki / CA_KEY), read_cert(pki / CA_CERT)
        key, cert = issue(ca_key, ca_cert, "vpshost control plane", server=False)
        write_key(pki / CLIENT_KEY, key)
        write_cert(client, cert)
        done.append(f"control plane client certificate: {client} "
                    f"(valid until {cert.not_valid_after_utc:%Y-%m-%d})")
    return done


def issue_host(pki: Path, name: str, ips: list[str], dns: list[str], out: Path,
               days: int = LEAF_DAYS) -> x509.Certificate:
    """``out``/agent.crt, agent.key and ca.crt: what `vps agent --tls-dir` serves with."""
    if not (pki / CA_KEY).exists():
        raise UsageError(f"no cluster CA in {pki}", "run `vps pki init` first")
    init(pki)  # the control plane's client certificate, if it is missing or expiring
    ca_key, ca_cert = _read_key(pki / CA_KEY), read_cert(pki / CA_CERT)
    key, cert = issue(ca_key, ca_cert, name, server=True, ips=ips, dns=dns, days=days)
    _private_dir(out)
    write_key(out / AGENT_KEY, key)
    write_cert(out / AGENT_CERT, cert)
    write_cert(out / CA_CERT, ca_cert)
    return cert


def san_of(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([str(a) for a in ext.get_values_for_type(x509.IPAddress)]
            + ext.get_values_for_type(x509.DNSName))


# -- what the agent serves with, and what the control plane dials with ------------------
@dataclass(frozen=True)
class ServerFiles:
    certfile: Path
    keyfile: Path
    cafile: Path
    warnings: tuple[str, ...] = ()


def server_files(tls_dir: Path) -> ServerFiles:
    """Checked before uvicorn starts, so a bad setup fails with what to fix rather than
    with an ssl error at the first connection."""
    files = ServerFiles(tls_dir / AGENT_CERT, tls_dir / AGENT_KEY, tls_dir / CA_CERT)
    for p in (files.certfile, files.keyfile, files.cafile):
        if not p.is_file():
            raise UsageError(f"the agent's TLS directory has no {p.name} ({p})",
                             "copy the directory `vps pki issue NAME --out DIR` wrote on the "
                             "control plane")
    if files.keyfile.stat().st_mode & 0o077:
        raise UsageError(f"{files.keyfile} is readable by other users",
                         f"chmod 600 {files.keyfile}")
    cert, ca = read_cert(files.certfile), read_cert(files.cafile)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise UsageError(f"{files.certfile} is not signed by the CA in {files.cafile} "
                         f"({exc.__class__.__name__})",
                         "issue both from the same control plane: `vps pki issue`") from None
    for c, p in ((cert, files.certfile), (ca, files.cafile)):
        if problem := expiry_problem(c, p):
            raise UsageError(problem, "issue a new one: `vps pki issue` on the control plane")
    warnings = tuple(f"{p} expires on {c.not_valid_after_utc:%Y-%m-%d}: renew it with "
                     "`vps pki issue`" for c, p in ((cert, files.certfile), (ca, files.cafile))
                     if expires_soon(c))
    return ServerFiles(files.certfile, files.keyfile, files.cafile, warnings)


def client_context(pki: Path) -> ssl.SSLContext:
    """Trust only the cluster CA (not the system's), and present the control plane's
    client certificate."""
    ca, cert, key = pki / CA_CERT, pki / CLIENT_CERT, pki / CLIENT_KEY
    if not ca.is_file():
        raise UsageError(f"this control plane has no cluster CA at {ca}, so it cannot "
                         "check an https:// agent",
                         "run `vps pki init`, then `vps pki issue HOST --ip ADDR --out DIR` "
                         "and start the agent with --tls-dir DIR")
    if not (cert.is_file() and key.is_file()):
        raise UsageError(f"this control plane has no client certificate ({cert}), and "
                         "TLS agents require one",
                         "run `vps pki init` to issue it")
    if problem := expiry_problem(read_cert(cert), cert):
        raise UsageError(problem, "run `vps pki init` to renew it")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
