"""Fixtures shared by the test modules; the helpers they use are in support/."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.project import Project, loopback_inventory
from support.render import pinned_inventory, release, write_pins
from support.vault import BUILD_POLICY, dev_server, no_vault_env, policy_token, vault_section, vault_state


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@pytest.fixture(scope="module")
def built_loopback(tmp_path_factory) -> Project:
    """A loopback inventory with its pki stage built once per test module."""
    proj = Project(tmp_path_factory.mktemp("loopback"))
    proj.write_inventory(loopback_inventory(kubelet_credentials="static"))
    proj.doit("pki")
    return proj


@pytest.fixture(scope="module")
def rendered_cluster(tmp_path_factory):
    """Three control-plane+etcd nodes on 127.0.0.1-3 and two workers, fully rendered."""
    root = tmp_path_factory.mktemp("render")
    project = Project(root)
    pins = write_pins(root / "site-pins.yaml", [release()])
    project.write_inventory(pinned_inventory(pins))
    project.doit("pki", "secrets", "render")
    return project, pins


# --- the Vault CA backend: one OpenBao dev server and one build through it, for the whole run ------------


@pytest.fixture(scope="session")
def vault_dev_server(tmp_path_factory):
    with dev_server(tmp_path_factory.mktemp("bao")) as server:
        yield server


@pytest.fixture(scope="session")
def vault_setup_runs(vault_dev_server, tmp_path_factory):
    """`doit vault_setup` twice on a fresh server, with the Vault state after each run."""
    bao = vault_dev_server
    project = Project(tmp_path_factory.mktemp("vault-build"))
    project.write_inventory(loopback_inventory(kubelet_credentials="static", extra=vault_section(bao)))
    env = no_vault_env(VAULT_TOKEN=bao.root_token)
    first = project.doit("vault_setup", env=env)
    after_first = vault_state(bao.client())
    second = project.doit("vault_setup", env=env)
    after_second = vault_state(bao.client())
    return project, env, (first, after_first), (second, after_second)


@pytest.fixture(scope="session")
def vault_build_env(vault_dev_server, vault_setup_runs) -> dict:
    """doit's environment as the build identity: a token with the policy vault_setup wrote, alone."""
    return no_vault_env(VAULT_TOKEN=policy_token(vault_dev_server, BUILD_POLICY))


@pytest.fixture(scope="session")
def vault_build(vault_setup_runs, vault_build_env) -> Project:
    """The loopback inventory's pki stage with every cert issued by Vault, as the build identity."""
    project, _, _, _ = vault_setup_runs
    project.doit("pki", env=vault_build_env)
    return project


@pytest.fixture(scope="module", params=["local", "vault"])
def pki_build(request) -> Project:
    """The loopback inventory's pki stage built with each CA backend: the local CA (this
    module's built_loopback), and Vault (a real OpenBao dev server, started once per run)."""
    return request.getfixturevalue({"local": "built_loopback", "vault": "vault_build"}[request.param])
