"""The agent's own TLS certificate and the server-side TLS context.

On first start the agent makes a self-signed certificate (EC P-256, 10 years) in its data
directory and reuses it afterwards: the control plane pins its SHA-256 thumbprint, so a new
certificate (a lost data volume) needs an admin's approval before the node is trusted again.
"""
import datetime
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.protocol import thumbprint_of_der

log = logging.getLogger("nullops.agent.tls")

CERT_FILE = "agent.crt"
KEY_FILE = "agent.key"
VALIDITY = datetime.timedelta(days=3650)


class TLSError(Exception):
    """The certificate or key cannot be made or used; the message says what to do."""


def thumbprint(cert_pem):
    """SHA-256 of the certificate's DER encoding, lowercase hex."""
    if isinstance(cert_pem, str):
        cert_pem = cert_pem.encode("ascii")
    cert = x509.load_pem_x509_certificate(cert_pem)
    return thumbprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def write_private(path, data):
    """Write a file readable by the owner only, atomically (temp file, fsync, rename, fsync of the
    directory): a crash leaves the old content or the new, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def generate(hostname=None, role="agent"):
    """A new (cert PEM, key PEM) pair: self-signed, EC P-256, SAN hostname/localhost/loopback.
    (The controller makes one for its internal endpoint too: `role`.)"""
    hostname = hostname or socket.gethostname() or "localhost"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"nullops-{role} {hostname}"[:64])])
    names = [x509.DNSName(n) for n in dict.fromkeys([hostname, "localhost"])]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a peer's clock skew
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert_pem, key_pem


def ensure_certificate(data_dir, hostname=None):
    """Paths of the agent's certificate and key, made on first start; returns
    (cert_path, key_path, cert_pem). A lone certificate or key (a half-restored backup) is
    replaced by a new pair: the old one cannot serve anyway."""
    data_dir = Path(data_dir)
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    try:
        if cert_path.exists() and key_path.exists():
            os.chmod(key_path, 0o600)
            return cert_path, key_path, cert_path.read_bytes()
        if cert_path.exists() or key_path.exists():
            log.warning("found only one of %s and %s; making a new certificate (its thumbprint "
                        "changes, the control plane must approve it)", CERT_FILE, KEY_FILE)
        cert_pem, key_pem = generate(hostname)
        # Key first: a crash in between leaves a lone key, which the next start replaces.
        write_private(key_path, key_pem)
        write_private(cert_path, cert_pem)
        log.info("made a new self-signed certificate in %s", cert_path)
        return cert_path, key_path, cert_pem
    except OSError as exc:
        raise TLSError(f"cannot write the certificate in {data_dir}: {exc.strerror or exc}") from None


class _HandshakeInWorkerContext(ssl.SSLContext):
    """An SSLContext whose sockets postpone the TLS handshake until first use.

    Werkzeug wraps its listening socket with the context, and with the default
    do_handshake_on_connect the handshake of every new connection runs inside accept(), in the
    server's only accepting thread: one peer that opens TCP and sends nothing stalls every later
    connection, the control plane's included (seen here: healthz timed out behind one idle
    socket). Postponed, the handshake runs in the connection's own thread under its timeout
    (server.py's request handler)."""

    def wrap_socket(self, sock, *args, **kwargs):
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def server_context(cert_path, key_path):
    """TLS 1.2 or later with the agent's certificate; raises TLSError when they do not load."""
    ctx = _HandshakeInWorkerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets: the link reconnects rarely, and a ticket written after the
    # handshake would be a write racing simple-websocket's reader thread on the same connection.
    ctx.num_tickets = 0
    try:
        ctx.load_cert_chain(str(cert_path), str(key_path))
    except (ssl.SSLError, OSError) as exc:
        raise TLSError(f"cannot load {cert_path} with {key_path} ({exc}); if they do not belong "
                       f"together, delete both to make a new certificate (its thumbprint changes)") from None
    return ctx
