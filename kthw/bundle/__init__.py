"""The bundle stage: a node's reproducible tarball, its installer, checksums and
signature, and the list of files each node's bundle must carry."""
