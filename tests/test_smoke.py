"""The smoke test a control-plane node ships (/etc/k8s/bootstrap/smoke-test.sh).

A whole cluster cannot run here (no kube-apiserver or kubelet), so the script as a whole
runs nowhere in these tests; what can be checked is: it is shellcheck-clean and names the
cluster's values, its DNS client gets real answers from a real DNS server (Debian's
dnsmasq on 127.0.0.1) and fails on NXDOMAIN and on no server, its parsers read the output
they are given, the pods and Corefiles it creates are valid (published schemas, strict;
the Corefiles by tests/test_coredns.py's block parser).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from support.project import REPO
from support.render import parse_blocks
from support.servers import free_port
from support.tools import require, require_module

from kthw import inventory, templating
from kthw.secrets import manifests
from kthw.vendor import fetch as vendor

TEMPLATES = templating.directory()


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    inv = inventory.load(REPO / "cluster.yaml")
    path = tmp_path_factory.mktemp("smoke") / "smoke-test.sh"
    path.write_bytes(manifests.smoke_script(inv, vendor.images(inv)["coredns"], TEMPLATES))
    return path


def call(script: Path, snippet: str) -> subprocess.CompletedProcess:
    """Source the script (its main does not run then) and run ``snippet`` with its functions."""
    return subprocess.run(["bash", "-c", f"set -euo pipefail; source {script}; {snippet}"], capture_output=True,
                          text=True, timeout=60)


def test_the_script_is_shellcheck_clean_and_names_the_clusters_values(script):
    result = subprocess.run([require("shellcheck"), "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    text = script.read_text()
    pin = vendor.images(inventory.load(REPO / "cluster.yaml"))["coredns"]
    assert f"readonly IMAGE={pin.reference}@{pin.digest}\n" in text
    assert "readonly WORKERS=(worker-az1-a worker-az2-a worker-az3-a)\n" in text
    assert "DNS_IP=10.96.0.10 API_SERVICE_IP=10.96.0.1\n" in text and "readonly PROVIDER=secretbox\n" in text
    assert "ETCD_ENDPOINTS=https://10.0.1.11:2379,https://10.0.2.11:2379,https://10.0.3.11:2379\n" in text


def test_not_ready_names_the_workers_that_are_not_ready_or_not_registered(script):
    listing = "worker-a True\\nworker-b False\\nnode-cp Unknown\\n"
    result = call(script, f"not_ready $'{listing}' worker-a worker-b worker-c")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["worker-b", "worker-c"]
    assert call(script, f"not_ready $'{listing}' worker-a").stdout == ""


def test_stored_encrypted_reads_the_provider_prefix(script):
    assert call(script, "stored_encrypted 'k8s:enc:secretbox:v1:key1:binary'").returncode == 0
    assert call(script, "stored_encrypted 'k8s:enc:aescbc:v1:key1:binary'").returncode != 0
    assert call(script, "stored_encrypted $'k8s\\x00\\n\\x03v1\\x12\\x06Secret'").returncode != 0  # plain protobuf


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory):
    """Debian's dnsmasq on 127.0.0.1: an A record, a CNAME to it, nothing else."""
    dnsmasq = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if dnsmasq is None:
        pytest.fail("dnsmasq is missing; it comes from Debian's dnsmasq-base package, which .ci/run installs",
                    pytrace=False)
    port = free_port()
    hosts = tmp_path_factory.mktemp("dns") / "hosts"
    hosts.write_text("10.96.0.1 kubernetes.default.svc.cluster.local\n")
    server = subprocess.Popen([dnsmasq, "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null",
                               "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}", "--no-resolv",
                               "--no-hosts", f"--addn-hosts={hosts}", "--address=/probe.peer.kthw/192.0.2.3",
                               "--cname=alias.kthw,kubernetes.default.svc.cluster.local", "--user=root",
                               "--pid-file="], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Ready once it answers a query for "." (opening a UDP socket tells nothing).
        deadline = time.monotonic() + 10
        while True:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            ready = subprocess.run(["bash", "-c", f"exec 3<>/dev/udp/127.0.0.1/{port}; printf '\\x00\\x01\\x01\\x00"
                                    f"\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x01' >&3; "
                                    "timeout 1 dd bs=512 count=1 <&3 2>/dev/null | wc -c"],
                                   capture_output=True, text=True)
            if ready.stdout.strip() not in ("", "0"):
                break
            time.sleep(0.1)
        yield port
    finally:
        server.kill()
        server.wait(10)


def test_the_dns_client_gets_real_answers_and_fails_without_one(script, dns_server):
    port = dns_server
    assert call(script, f"dns_a 127.0.0.1 probe.peer.kthw {port}").stdout == "192.0.2.3\n"
    assert call(script, f"dns_a 127.0.0.1 kubernetes.default.svc.cluster.local {port}").stdout == "10.96.0.1\n"
    # A CNAME first: the A record after it is the answer.
    assert call(script, f"dns_a 127.0.0.1 alias.kthw {port}").stdout == "10.96.0.1\n"
    nxdomain = call(script, f"dns_a 127.0.0.1 nothing.invalid {port}")
    assert nxdomain.returncode != 0 and nxdomain.stdout == ""
    started = time.monotonic()
    nobody = call(script, f"dns_a 127.0.0.1 probe.peer.kthw {free_port()}")
    assert nobody.returncode != 0 and time.monotonic() - started < 10


def test_dns_answer_refuses_a_truncated_or_failed_reply(script):
    ok = ("6b 74 81 80 00 01 00 01 00 00 00 00 05 70 72 6f 62 65 00 00 01 00 01 "
          "c0 0c 00 01 00 01 00 00 00 05 00 04 c0 00 02 03")
    assert call(script, f"dns_answer '{ok}'").stdout == "192.0.2.3\n"
    assert call(script, f"dns_answer '{ok[:-12]}'").returncode != 0  # cut inside the address
    servfail = ok.replace("81 80", "81 82", 1)
    assert call(script, f"dns_answer '{servfail}'").returncode != 0


def test_the_test_pods_and_their_corefiles_are_valid(script):
    kubernetes_validate = require_module("kubernetes_validate")
    version = ".".join(inventory.load(REPO / "cluster.yaml").kubernetes_version.split(".")[:2])
    result = call(script, "corefile_manifest echo-0 \"$(echo_corefile 0)\"; pod_manifest echo-0 worker-az1-a echo; "
                          "corefile_manifest relay-0 \"$(relay_corefile 10.244.2.7 10.96.7.7)\"; "
                          "pod_manifest relay-0 worker-az1-a relay")
    assert result.returncode == 0, result.stderr
    objects = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ConfigMap", "echo-0"), ("Pod", "echo-0"), ("ConfigMap", "relay-0"), ("Pod", "relay-0")]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    pod = objects[1]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "worker-az1-a"}
    assert pod["containers"][0]["image"].startswith("registry.k8s.io/coredns/coredns:v")
    assert pod["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    (echo_zone, echo), = parse_blocks(objects[0]["data"]["Corefile"])
    assert echo_zone == ".:5353" and ('answer "{{ .Name }} 5 IN A 192.0.2.1"', []) in echo[0][1]
    relay = dict(parse_blocks(objects[2]["data"]["Corefile"]))
    assert relay["peer.kthw:5353"] == [("forward . 10.244.2.7:5353", [])]
    assert relay["svc.kthw:5353"] == [("forward . 10.96.7.7:5353", [])]
    assert relay["cluster.local:5353"] == [("forward . 10.96.0.10:53", [])]
