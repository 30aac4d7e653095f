"""keycard.hugepages: the heap advised onto transparent huge pages after the engine is loaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from keycard import hugepages


def _anon_huge_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are a Linux feature")
def test_collapse_advises_the_heap_and_changes_no_data() -> None:
    data = [f"object-{i}" for i in range(600_000)]          # ~60 MiB of small objects on CPython's arenas
    before = _anon_huge_kib()
    done = hugepages.collapse()
    assert done is not None
    assert done.eligible > 16 * 2**20                        # the arenas just filled are among the regions
    assert 0 <= done.advised <= done.eligible
    if done.advice == "MADV_COLLAPSE":                       # synchronous: the pages are huge now
        assert _anon_huge_kib() > before
    assert data[123_456] == "object-123456" and len(data) == 600_000


def test_collapse_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYCARD_HUGEPAGES", "0")
    assert hugepages.collapse() is None
