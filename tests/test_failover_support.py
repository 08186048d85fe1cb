"""Kept for bench/, which imports failover from here; the helpers are in support/ (no tests here)."""

from support.failover import failover

__all__ = ["failover"]
