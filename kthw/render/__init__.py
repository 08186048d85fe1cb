"""The render stage: each node's systemd units and component configs from the templates,
its etcd membership script, and the upgrade plan between two builds."""
