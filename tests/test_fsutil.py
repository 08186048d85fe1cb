"""The one atomic write: a temp file beside the target, created exclusively and owner-only,
renamed over the target only when the write is whole."""

from __future__ import annotations

import os
import random

import pytest

from kthw.fsutil import PUBLIC_MODE, SECRET_MODE, atomic_file, atomic_write


def _names_start_with(monkeypatch, first: str) -> None:
    """The temp file's first random name is ``first`` (as if another writer, or an attacker,
    had already taken it); the names after it stay random."""
    calls = []
    real = random.choices

    def choices(population, k):
        calls.append(k)
        return list(first) if len(calls) == 1 else real(population, k=k)

    monkeypatch.setattr(random, "choices", choices)


def test_a_link_planted_at_the_temp_name_is_not_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched\n")
    target = tmp_path / "sa.key"
    planted = tmp_path / ".sa.key.abcdefgh.tmp"
    planted.symlink_to(victim)
    _names_start_with(monkeypatch, "abcdefgh")
    assert atomic_write(target, b"secret\n", SECRET_MODE)
    assert victim.read_bytes() == b"untouched\n"
    assert target.read_bytes() == b"secret\n" and not target.is_symlink()
    assert planted.is_symlink()  # someone else's file: neither written nor removed


def test_the_temp_file_is_owner_only_until_it_gets_its_mode(tmp_path):
    target = tmp_path / "ca.key"
    with atomic_file(target, SECRET_MODE) as handle:
        assert os.stat(handle.name).st_mode & 0o777 == SECRET_MODE
        handle.write(b"key\n")
        assert not target.exists()
    assert target.read_bytes() == b"key\n" and target.stat().st_mode & 0o777 == SECRET_MODE


def test_a_failed_write_leaves_the_target_and_no_temp_file(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_bytes(b"old\n")
    with pytest.raises(RuntimeError), atomic_file(target, PUBLIC_MODE) as handle:
        handle.write(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
