"""Kept for bench/, which imports stand_in_vendor from here; the helpers are in support/ (no tests here)."""

from support.bundles import stand_in_vendor

__all__ = ["stand_in_vendor"]
