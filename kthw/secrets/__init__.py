"""The secrets stage: service-account keys, the EncryptionConfiguration, bootstrap tokens,
their rotations, and the manifests and files that carry them to the nodes."""
