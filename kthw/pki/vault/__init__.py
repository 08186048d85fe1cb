"""The Vault/OpenBao CA backend: the build's client (signs CSRs through per-node roles),
the roles and policies it needs, and the admin's setup and CA renewal."""
