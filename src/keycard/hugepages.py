"""Back the process's heap with transparent huge pages once the engine is loaded (Linux only).

A check at a million bindings is bound by memory latency, not by the interpreter: each one reads
a few dozen objects scattered over a ~1 GiB heap, and with 4 KiB pages nearly every one of those
reads also misses the TLB (a two-level page walk under virtualization). CPython's allocator maps
its arenas in pieces the kernel does not back with huge pages by itself unless THP is set to
``always``. ``collapse()`` asks the kernel (``madvise(MADV_COLLAPSE)``, Linux ≥ 6.1) to rebuild the
process's anonymous read-write mappings as 2 MiB pages, synchronously; where it cannot (older
kernel, THP disabled, no free huge pages) it falls back to ``MADV_HUGEPAGE`` (khugepaged collapses
in the background) or does nothing. It changes no data, only how the kernel maps it: safe to call
at any time, from any thread (ctypes releases the GIL during the call).

Measured on the 2-core benchmark VM at 1M bindings: check p50 −20 to −25 %, +3 s to the load. Below
``WORTH_FROM`` bindings it is not done: the heap is small enough, and while the kernel collapses pages
the process's own reads of them wait (at 100k bindings it delayed ``keycard serve``'s readiness by
~1 s and slowed its first writes). ``KEYCARD_HUGEPAGES=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass

__all__ = ["WORTH_FROM", "Collapse", "collapse"]

WORTH_FROM = 500_000       # bindings: an engine this big gets its heap collapsed after it is built

_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25
_HUGE = 2 << 20


@dataclass(frozen=True)
class Collapse:
    """What ``collapse()`` did: bytes eligible, bytes advised successfully, and the advice used."""

    eligible: int
    advised: int
    advice: str

    def __str__(self) -> str:
        return f"{self.advised / 2**20:,.0f} of {self.eligible / 2**20:,.0f} MiB advised ({self.advice})"


def _regions() -> list[tuple[int, int]]:
    """2 MiB-aligned spans of the anonymous read-write mappings (the heap and CPython's arenas)."""
    out: list[tuple[int, int]] = []
    with open("/proc/self/maps", encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 5 or not parts[1].startswith("rw"):
                continue
            if len(parts) >= 6 and parts[5] != "[heap]":
                continue                    # file-backed, stack, vdso …: only the anonymous heap
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            start, end = (lo + _HUGE - 1) & ~(_HUGE - 1), hi & ~(_HUGE - 1)
            if end > start:
                out.append((start, end - start))
    return out


def collapse() -> Collapse | None:
    """Advise the kernel to back the heap with huge pages; None where that is not available."""
    if not sys.platform.startswith("linux") or os.environ.get("KEYCARD_HUGEPAGES", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
        regions = _regions()
    except (OSError, AttributeError, ValueError):
        return None
    eligible = sum(n for _, n in regions)
    for advice, name in ((_MADV_COLLAPSE, "MADV_COLLAPSE"), (_MADV_HUGEPAGE, "MADV_HUGEPAGE")):
        advised = 0
        for start, n in regions:
            if madvise(start, n, advice) == 0:
                advised += n
        if advised:
            return Collapse(eligible, advised, name)
    return Collapse(eligible, 0, "none accepted")
