"""A sealed Vault: a non-dev OpenBao server with file storage, initialised, unsealed for
the first build, then sealed by the test. doit must stop with "Vault is sealed" and leave
every output file as it was."""

from __future__ import annotations

import pytest
from support.project import Project, fails_cleanly, loopback_inventory
from support.vault import file_storage_server, no_vault_env, vault_section

pytestmark = pytest.mark.slow  # end to end (see pyproject's markers)


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    with file_storage_server(tmp_path_factory.mktemp("bao-file")) as server:
        yield server


def test_a_sealed_vault_stops_doit_and_changes_no_output(bao, tmp_path):
    project = Project(tmp_path)
    project.write_inventory(loopback_inventory(workers=1, extra=vault_section(bao)))
    env = no_vault_env(VAULT_TOKEN=bao.root_token)
    project.doit("vault_setup", env=env)
    project.doit("pki", env=env)
    before = project.snapshot()
    assert any(path.endswith("kubelet-serving.crt") for path in before)

    sealed = bao.cli("operator", "seal")
    assert sealed.returncode == 0, sealed.stderr
    assert bao.client().sys.read_seal_status()["sealed"]

    for task in ("pki", "vault_setup"):
        run = project.doit(task, env=env, check=False)
        fails_cleanly(run, f"Vault at {bao.address}: Vault is sealed", "unseal it")
        assert project.snapshot() == before, f"doit {task} changed files while Vault was sealed"
