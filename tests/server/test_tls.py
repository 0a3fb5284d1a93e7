"""TLS and mTLS (issue 11): the server serves TLS only when given a certificate, requires
client certificates with a client CA, re-reads rotated certificates for new connections
without dropping open ones (also on SIGHUP), refuses bad TLS configuration naming the
flag; the Python client, the Worker and the CLI speak TLS; nodes of a real LiteFS cluster
forward, proxy and report to each other over mTLS."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import certs
from support.certs import CA, Issued, serial_of
from support.procs import ServerProcess
from support.serverthread import ServerThread

from edgeq import TLS, Client, UnavailableError, Worker
from edgeq_server.app import _loopback
from edgeq_server.config import Config
from edgeq_server.tls import ServerTLS


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path / "pki")


@pytest.fixture
def server_cert(ca: CA) -> Issued:
    return ca.issue("server")


def _serve(tmp_path: Path, cert: Issued, **config: object) -> ServerThread:
    srv = ServerThread(str(tmp_path / "tls.db"), tls_cert=str(cert.cert), tls_key=str(cert.key), **config)
    srv.start()
    return srv


@pytest.fixture
def tls_server(tmp_path: Path, server_cert: Issued) -> Iterator[ServerThread]:
    srv = _serve(tmp_path, server_cert)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def mtls_server(tmp_path: Path, ca: CA, server_cert: Issued) -> Iterator[ServerThread]:
    srv = _serve(tmp_path, server_cert, tls_client_ca=str(ca.cert))
    try:
        yield srv
    finally:
        srv.close()


def presented_serial(target: str) -> int:
    host, _, port = target.rpartition(":")
    return serial_of(ssl.get_server_certificate((host, int(port)), timeout=5).encode())


def test_a_tls_server_serves_verified_clients_and_refuses_plaintext(tls_server: ServerThread, ca: CA) -> None:
    with Client(tls_server.target, tls=TLS(ca=str(ca.cert)), timeout=5) as client:
        job_id = client.enqueue("t", b"over tls").job_id
        assert client.get(job_id).payload == b"over tls"
    # The same through the scheme, with the CA as bytes; and as a dict of TLS's fields.
    with Client(f"edgeqs://{tls_server.target}", tls=TLS(ca=ca.pem), timeout=5) as client:
        assert client.get(job_id).id == job_id
    with Client(tls_server.target, tls={"ca": str(ca.cert)}, timeout=5) as client:
        assert client.get(job_id).id == job_id
    # Plaintext gets nothing (the port speaks TLS only).
    with Client(tls_server.target, timeout=2) as client, pytest.raises(UnavailableError):
        client.get(job_id)
    # A client trusting another CA refuses the server's certificate.
    other = CA(Path(str(ca.root) + "-other"), name="other CA")
    with Client(tls_server.target, tls=TLS(ca=other.pem), timeout=2) as client, pytest.raises(UnavailableError):
        client.get(job_id)


def test_mtls_requires_a_client_certificate_signed_by_the_client_ca(mtls_server: ServerThread, ca: CA) -> None:
    me = ca.issue("worker-1")
    with Client(mtls_server.target, tls=TLS(ca=ca.pem, cert=me.cert_pem, key=me.key_pem), timeout=5) as client:
        job_id = client.enqueue("m", b"x").job_id
        done = threading.Event()
        with Worker(client, ["m"], lambda job: done.set()):
            assert done.wait(10)
        assert client.get(job_id).state.name == "COMPLETED"
    # No client certificate: the handshake fails.
    with Client(mtls_server.target, tls=TLS(ca=ca.pem), timeout=2) as client, pytest.raises(UnavailableError):
        client.get(job_id)
    # A client certificate from a CA the server does not trust: refused too.
    stranger = CA(Path(str(ca.root) + "-stranger"), name="stranger CA").issue("mallory")
    tls = TLS(ca=ca.pem, cert=stranger.cert_pem, key=stranger.key_pem)
    with Client(mtls_server.target, tls=tls, timeout=2) as client, pytest.raises(UnavailableError):
        client.get(job_id)


def test_a_rotated_certificate_reaches_new_connections_and_open_ones_keep_working(
    tls_server: ServerThread, ca: CA, server_cert: Issued
) -> None:
    first = serial_of(server_cert.cert_pem)
    assert presented_serial(tls_server.target) == first
    with Client(tls_server.target, tls=TLS(ca=ca.pem), timeout=5) as old:
        old.enqueue("r", b"before")
        # Rotate in place (a new key and certificate at the same paths, as an ACME client does).
        rotated = ca.issue("server")
        assert rotated.cert == server_cert.cert
        second = serial_of(rotated.cert_pem)
        assert presented_serial(tls_server.target) == second
        # The connection made before the rotation still works: nothing was dropped.
        old.enqueue("r", b"after, same connection")
        with Client(tls_server.target, tls=TLS(ca=ca.pem), timeout=5) as new:
            assert new.stats("r")[0].pending == 2
        # Half a rotation (a new certificate whose key has not been written yet) is not taken.
        key_before = server_cert.key.read_bytes()
        third = ca.issue("server-next")
        server_cert.cert.write_bytes(third.cert_pem)
        assert presented_serial(tls_server.target) == second
        assert server_cert.key.read_bytes() == key_before
        server_cert.key.write_bytes(third.key_pem)
        assert presented_serial(tls_server.target) == serial_of(third.cert_pem)
        old.enqueue("r", b"still the first connection")


def test_bad_tls_configuration_is_refused_naming_the_option(tmp_path: Path, ca: CA, server_cert: Issued) -> None:
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        Config(tls_cert=str(server_cert.cert))
    with pytest.raises(ValueError, match="tls_client_ca and peer_ca need TLS"):
        Config(tls_client_ca=str(ca.cert))
    with pytest.raises(ValueError, match="--tls-cert: cannot read"):
        ServerTLS(str(tmp_path / "missing.pem"), str(server_cert.key))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match=r"--tls-client-ca: .* is not a PEM file"):
        ServerTLS(str(server_cert.cert), str(server_cert.key), str(tmp_path / "junk.pem"))
    other = ca.issue("other")
    with pytest.raises(ValueError, match="the key does not match the certificate"):
        ServerTLS(str(server_cert.cert), str(other.key))
    with pytest.raises(ValueError, match="cert and key go together"):
        TLS(cert=b"x")
    with pytest.raises(ValueError, match="plaintext"):
        Client("edgeq://127.0.0.1:1", tls=TLS())
    # The serve process exits with the reason instead of starting without TLS.
    out = subprocess.run(
        [sys.executable, "-m", "edgeq_server", "serve", "--port", "0", "--db-path", str(tmp_path / "x.db"),
         "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(server_cert.key)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode != 0 and "--tls-cert" in out.stdout + out.stderr


def test_only_loopback_binds_count_as_private() -> None:
    assert _loopback("127.0.0.1") and _loopback("localhost") and _loopback("::1") and _loopback("[::1]")
    assert not _loopback("0.0.0.0") and not _loopback("10.1.2.3") and not _loopback("::")


def cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEQ_TLS")}
    return subprocess.run(
        [sys.executable, "-m", "edgeq_server", "--server", target, *args],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )


def test_the_serve_process_reloads_on_sighup_and_the_cli_speaks_tls(tmp_path: Path, ca: CA) -> None:
    cert = ca.issue("server")
    me = ca.issue("cli")
    server = ServerProcess(
        tmp_path / "p.db", "--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
        "--tls-client-ca", str(ca.cert), "--log-level", "INFO",
    )
    try:
        mtls = ("--tls-ca", str(ca.cert), "--tls-cert", str(me.cert), "--tls-key", str(me.key))
        ok = cli(server.target, *mtls, "enqueue", "c", "hello")
        assert ok.returncode == 0, ok.stderr
        assert cli(f"edgeqs://{server.target}", *mtls, "stats", "c").returncode == 0
        # Without a client certificate the server refuses the CLI; plaintext too.
        assert cli(server.target, "--tls-ca", str(ca.cert), "--timeout", "2", "stats").returncode != 0
        assert cli(server.target, "--timeout", "2", "stats").returncode != 0
        # SIGHUP re-reads the files at once (not only at the next handshake).
        rotated = ca.issue("server")
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not any("certificate reloaded" in line for line in server.output) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("certificate reloaded" in line for line in server.output), "".join(server.output)
        assert presented_serial(server.target) == serial_of(rotated.cert_pem)
        assert cli(server.target, *mtls, "stats", "c").returncode == 0
    finally:
        server.close()


def test_the_cli_insecure_flag_trusts_a_self_signed_certificate(tmp_path: Path) -> None:
    self_signed = certs.self_signed(tmp_path / "self")
    server = ServerProcess(tmp_path / "s.db", "--tls-cert", str(self_signed.cert), "--tls-key", str(self_signed.key))
    try:
        assert cli(server.target, "--timeout", "3", "stats").returncode != 0  # plaintext
        ok = cli(server.target, "--insecure", "stats")
        assert ok.returncode == 0, ok.stderr
    finally:
        server.close()


def _grpcurl() -> str:
    import shutil

    cached = Path(__file__).resolve().parents[2] / ".cache/grpcurl/bin/grpcurl"
    binary = os.environ.get("EDGEQ_GRPCURL_BIN") or str(cached)
    if not os.access(binary, os.X_OK):
        binary = shutil.which("grpcurl") or ""
    if not binary:
        if os.environ.get("CI") == "true":
            pytest.fail("grpcurl missing in CI (scripts/test builds it into .cache/grpcurl)")
        pytest.skip("grpcurl missing (bash scripts/test builds it)")
    return binary


def test_grpcurl_reaches_the_tls_server_with_the_ca_file(tmp_path: Path, ca: CA) -> None:
    """What the README shows: `grpcurl -cacert` lists the services (reflection) and calls
    one; with mTLS it needs -cert/-key too."""
    grpcurl = _grpcurl()
    cert = ca.issue("server")
    me = ca.issue("grpcurl")
    server = ServerProcess(
        tmp_path / "g.db", "--tls-cert", str(cert.cert), "--tls-key", str(cert.key), "--tls-client-ca", str(ca.cert)
    )
    try:
        port = server.target.rpartition(":")[2]
        mtls = ["-cacert", str(ca.cert), "-cert", str(me.cert), "-key", str(me.key)]
        listed = subprocess.run([grpcurl, *mtls, f"localhost:{port}", "list"],
                                capture_output=True, text=True, timeout=30, check=False)
        assert listed.returncode == 0, listed.stderr
        assert "edgeq.v1.QueueService" in listed.stdout
        called = subprocess.run(
            [grpcurl, *mtls, "-d", '{"queues":["g"]}', f"localhost:{port}", "edgeq.v1.QueueService/GetQueueStats"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert called.returncode == 0, called.stderr
        # Without the client certificate the handshake is refused.
        refused = subprocess.run([grpcurl, "-cacert", str(ca.cert), f"localhost:{port}", "list"],
                                 capture_output=True, text=True, timeout=30, check=False)
        assert refused.returncode != 0
    finally:
        server.close()


def test_the_dashboard_serves_https_with_the_grpc_files_and_follows_a_rotation(
    tmp_path: Path, ca: CA, server_cert: Issued
) -> None:
    import urllib.error
    import urllib.request

    from support.wait import until

    srv = _serve(tmp_path, server_cert, http_port=0)
    try:
        assert srv.server is not None and srv.server.dashboard is not None
        port = srv.server.dashboard.port
        trusting = ssl.create_default_context(cadata=ca.pem.decode())
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/queues", context=trusting, timeout=5) as page:
            assert page.status == 200 and "Secure" in page.headers["Set-Cookie"]
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plaintext on that port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/queues", timeout=5)
        first = serial_of(server_cert.cert_pem)
        assert serial_of(ssl.get_server_certificate(("127.0.0.1", port), timeout=5).encode()) == first
        rotated = ca.issue("server")  # same paths, new key and certificate
        until(lambda: serial_of(ssl.get_server_certificate(("127.0.0.1", port), timeout=5).encode())
              == serial_of(rotated.cert_pem), timeout=10, what="the dashboard presenting the new certificate")
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/queues", context=trusting, timeout=5) as page:
            assert page.status == 200
    finally:
        srv.close()
