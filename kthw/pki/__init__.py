"""The pki stage: the cert catalogue (one spec per cert), the CA hierarchy and issuing
(local files, or Vault/OpenBao in ``pki.vault``), renewal policy and expiry reports, and
where each cert goes on a node."""
