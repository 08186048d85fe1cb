"""Loopback ports and servers the tests start: free ports, stopping processes, stand-in HTTPS servers."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now. SO_REUSEADDR as Go servers (etcd,
    OpenBao) set it: a port left in TIME_WAIT by an earlier run counts as free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def stop_processes(procs) -> None:
    """Terminate every server a test started, and make sure none is left behind."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        _wait_or_kill(proc)


def _wait_or_kill(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def tls_stand_in(tree, handler: type[BaseHTTPRequestHandler], *, host: str = "127.0.0.1", port: int = 0,
                 cert: str = "/etc/k8s/kube-apiserver/apiserver", client_cert: ssl.VerifyMode = ssl.CERT_REQUIRED):
    """kube-apiserver cannot run here, so a Python HTTPS server stands in for it, on
    host:port (0: any free port): cp1's ``cert`` (node path without .crt/.key), client
    certs checked against the client-CA bundle the API server reads (the kubernetes
    intermediate, an anchor as in Go). Serves from a thread; stopped on leaving the block."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tree.node_file("cp1", cert + ".crt"), tree.node_file("cp1", cert + ".key"))
    context.load_verify_locations(tree.node_file("cp1", "/etc/k8s/shared/kubernetes-ca.crt"))
    context.verify_mode = client_cert
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the intermediate is the anchor, as in Go
    server = _TLSServer((host, port), handler, context)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _TLSServer(ThreadingHTTPServer):
    """HTTPS with each handshake in the connection's own thread. A refused handshake ends
    with the alert, then a FIN once what the client sent is read: closed with unread data
    the socket would send a reset, which can reach the client before the alert does (a
    TLS 1.3 client sends its request before it learns that its cert was refused)."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext):
        super().__init__(address, handler)
        self.context = context

    def finish_request(self, request, client_address) -> None:
        tls = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError):
            tls.settimeout(5)
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_WR)  # after the alert; the TLS layer is done with
                while tls.recv(65536):  # plain reads from here: the client's request, unread
                    pass
            tls.close()
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            self.shutdown_request(tls)


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the stand-in API servers: quiet, and JSON replies."""

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
