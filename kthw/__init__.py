"""kthw-airgap: the library behind the doit tasks. Nothing here imports doit.

One package per pipeline stage, each importing only earlier ones (tests/test_layering.py
checks it); the modules at the top are shared by every stage::

    supply      release tables (components, pins) and fetching (HTTP, OCI registries)
      |
    inventory   cluster.yaml, checked and frozen
      |
    vendor      release files and images for the inventory's nodes, verified
    pki         the CA hierarchy (local files or Vault/OpenBao) and every component cert
      |
    secrets     service-account keys, encryption config, bootstrap tokens, their manifests
      |
    render      each node's units, configs and day-2 scripts
      |
    bundle      the signed per-node tarball and its installer

    shared: errors, clock, fsutil, yamldoc, roles, versions, crypto, kubeconfig, layout,
            templating, lastcheck
"""
