"""A TLS front for the emulator (which serves plain HTTP): certificates made with the
``openssl`` command line (the venv has no ``cryptography``), and a small thread that accepts
TLS connections and relays their bytes to the emulator's port."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import List, Tuple


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> Tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name} test CA",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return cert, key


def make_server_cert(
    directory: Path, ca: Tuple[Path, Path], alt_names: str = "IP:127.0.0.1"
) -> Tuple[Path, Path]:
    """A certificate for ``alt_names`` (its subjectAltName: 127.0.0.1 unless told, e.g.
    ``DNS:xnat.test``) signed by ``ca``: (certificate, key)."""
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text(
        f"subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return cert, key


class TLSProxy:
    """``https://127.0.0.1:<port>`` relaying to ``127.0.0.1:<backend_port>``."""

    def __init__(self, backend_port: int, cert: Path, key: Path) -> None:
        self.backend_port = backend_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._threads: List[threading.Thread] = []
        self._stop = threading.Event()

    def start(self) -> "TLSProxy":
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _addr = self.sock.accept()
            except OSError:
                return
            self._spawn(self._serve, raw)

    def _serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(30)
            client = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):  # the client refused our certificate: expected
            raw.close()
            return
        backend = socket.create_connection(("127.0.0.1", self.backend_port), timeout=30)
        other = threading.Thread(target=self._pipe, args=(backend, client), daemon=True)
        other.start()
        self._threads.append(other)
        self._pipe(client, backend)
        # both directions are done (or stuck): only now are the descriptors closed.  Closed
        # by whichever direction ended first, the other one's next ``sendall`` wrote TLS
        # records into whatever file reused the number: a later test's emulator database
        # began with b"SQLit\x17\x03\x03..." and every request to it failed with 500
        other.join(35)
        if other.is_alive():
            return  # leak them rather than free a number a live thread still writes to
        for s in (client, backend):
            s.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        """Copy ``src`` to ``dst`` until either ends; then wake the other direction with a
        shutdown of both (which, unlike a close, keeps the descriptors)."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except Exception:  # noqa: BLE001 - the peer went, or the other direction shut it down
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except (OSError, ValueError):
                    pass

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
