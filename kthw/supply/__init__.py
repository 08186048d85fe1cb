"""What the cluster is built from: the component table, the pinned releases and images,
and fetching them over HTTP and from OCI registries. Reads no inventory."""
