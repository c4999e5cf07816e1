"""bucket_app.allocator on this machine's glibc: the heap's free pages really go back."""

from __future__ import annotations

import ctypes
import os

import pytest

from bucket_app import allocator


def rss_anon_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise LookupError("no RssAnon in /proc/self/status")


glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_trim"), reason="not glibc")


@glibc
def test_trim_returns_free_pages_below_a_live_block() -> None:
    """Blocks freed below one still in use stay resident (glibc trims only the heap's top by
    itself) until trim hands their pages back: 64 MiB of 4 KiB blocks, all freed but the last."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    blocks = [libc.malloc(4096) for _ in range(16_384)]
    for block in blocks:
        ctypes.memset(block, 1, 4096)  # resident
    for block in blocks[:-1]:
        libc.free(block)
    try:
        before = rss_anon_kib()
        assert allocator.trim()
        after = rss_anon_kib()
        assert before - after > 32 * 1024, (before, after)
    finally:
        libc.free(blocks[-1])


@glibc
def test_tune_keeps_an_operators_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert allocator.tune() == ["MALLOC_ARENA_MAX"]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert allocator.tune() == []
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert allocator.tune() == ["MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"]
    assert "MALLOC_ARENA_MAX" not in os.environ
