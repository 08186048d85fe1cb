"""kthw-airgap: the library behind the doit tasks. Nothing here imports doit."""
