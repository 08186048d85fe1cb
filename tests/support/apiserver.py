"""kube-apiserver cannot run on this machine, so a small Python HTTPS server stands in for
it, and real kubectl talks to it. It does what matters here the way kube-apiserver does: it
presents the generated apiserver cert, requires a client cert, trusts only the client-CA
bundle the API server would read (the kubernetes intermediate, as an anchor, like Go does)
and answers `kubectl auth whoami` with the identity taken from the client cert (CN = user,
O = groups)."""

from __future__ import annotations

import subprocess
from contextlib import ExitStack, contextmanager

from support.servers import JsonHandler, tls_stand_in
from support.tools import require


class StandInApiServer(JsonHandler):
    seen: list

    def _identity(self):
        cert = self.connection.getpeercert()
        fields = [item for rdn in cert["subject"] for item in rdn]
        user = next(value for key, value in fields if key == "commonName")
        groups = [value for key, value in fields if key == "organizationName"]
        return user, groups


    def do_POST(self):
        user, groups = self._identity()
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append((self.path, user, groups))
        if self.path.startswith("/apis/authentication.k8s.io/v1/selfsubjectreviews"):
            self._reply(201, {"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                              "metadata": {}, "status": {"userInfo": {
                                  "username": user, "groups": [*groups, "system:authenticated"]}}})
        else:
            self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})

    def do_GET(self):
        user, groups = self._identity()
        self.seen.append((self.path, user, groups))
        self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})


@contextmanager
def serve(tree, host):
    """The stand-in on ``host``, with cp1's apiserver cert and the API server's client CA;
    yields (server, the requests it saw as (path, user, groups))."""
    handler = type("Handler", (StandInApiServer,), {"seen": []})
    with tls_stand_in(tree, handler, host=host) as server:
        yield server, handler.seen


def whoami(kubeconfig, server_url):
    return subprocess.run([require("kubectl"), "--kubeconfig", str(kubeconfig), "--server", server_url,
                           "--request-timeout", "10s", "auth", "whoami", "-o", "json"],
                          capture_output=True, text=True, timeout=30)


@contextmanager
def stand_in_apiservers(tree):
    """Two stand-ins with the same cert: one on 127.0.0.1 (in the apiserver cert's SANs) and
    one on 127.0.0.9 (outside them); yields [(server, requests seen)] in that order."""
    with ExitStack() as stack:
        yield [stack.enter_context(serve(tree, host)) for host in ("127.0.0.1", "127.0.0.9")]
