"""Offline placement of intermediate buffers in one static arena.

The emitted C has no malloc: every activation buffer lives at a fixed byte offset inside a
single static array, decided here. A buffer only needs its bytes while it is live (from the
op that writes it first to the last op that reads it), so buffers whose lifetimes do not
overlap may share bytes. Finding the smallest arena is NP-hard (it is dynamic storage
allocation), so ``plan_memory`` runs a few cheap heuristics and keeps the best.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "BufferRequest",
    "MemoryPlan",
    "aligned",
    "check_plan",
    "greedy_by_size",
    "lower_bound",
    "plan_memory",
]


@dataclass(frozen=True)
class BufferRequest:
    """One buffer to place: its size and the inclusive range of op indices it is live over."""

    name: str
    size: int  # bytes, > 0
    first_use: int  # index of the op that writes it first
    last_use: int  # index of the last op that reads it (>= first_use)


@dataclass(frozen=True)
class MemoryPlan:
    """Where each buffer goes in the arena, and how good that is."""

    arena_bytes: int
    offsets: Mapping[str, int]  # a plain dict built once; treat as read-only
    lower_bound: int  # largest sum of (aligned) sizes simultaneously live
    strategy: str  # which placement strategy won
    # Recorded so check_plan can verify offsets against the alignment the plan was made for.
    alignment: int = 4


def aligned(size: int, alignment: int) -> int:
    """Round ``size`` up to a multiple of ``alignment``."""
    _check_alignment(alignment)
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return -(-size // alignment) * alignment


def lower_bound(requests: Sequence[BufferRequest], alignment: int = 4) -> int:
    """Largest total aligned size live at any single op; no valid plan can be smaller."""
    _validate(requests)
    _check_alignment(alignment)
    _, live = _live_profile(requests, alignment)
    return max(live, default=0)


def greedy_by_size(requests: Sequence[BufferRequest], alignment: int = 4) -> MemoryPlan:
    """TFLM's GreedyMemoryPlanner: largest first, each at the lowest offset that fits."""
    _validate(requests)
    _check_alignment(alignment)
    bound = lower_bound(requests, alignment)
    # The size order needs no breadth table, so skip computing one.
    return _run_strategy("greedy_by_size", requests, alignment, bound, {})


def plan_memory(requests: Sequence[BufferRequest], alignment: int = 4) -> MemoryPlan:
    """Best of several heuristics (never worse than greedy_by_size; optimal on chains)."""
    _validate(requests)
    _check_alignment(alignment)
    bound = lower_bound(requests, alignment)
    breadth = _breadths(requests, alignment)
    best: MemoryPlan | None = None
    for name in _STRATEGY_ORDER:
        plan = _run_strategy(name, requests, alignment, bound, breadth)
        # Strict '<' so ties go to the earliest strategy in the fixed order (determinism).
        if best is None or plan.arena_bytes < best.arena_bytes:
            best = plan
        if best.arena_bytes == bound:
            break  # cannot do better than the lower bound; skip the remaining work
    assert best is not None  # _STRATEGY_ORDER is non-empty
    return best


def check_plan(requests: Sequence[BufferRequest], plan: MemoryPlan) -> None:
    """Raise ValueError if ``plan`` is not a safe placement of ``requests``."""
    _validate(requests)
    _check_alignment(plan.alignment)
    if plan.arena_bytes < 0:
        raise ValueError(f"arena_bytes must be >= 0, got {plan.arena_bytes}")
    known = {r.name for r in requests}
    for name in plan.offsets:
        if name not in known:
            raise ValueError(f"plan has an offset for unknown buffer {name!r}")
    for r in requests:
        if r.name not in plan.offsets:
            raise ValueError(f"plan has no offset for buffer {r.name!r}")
        off = plan.offsets[r.name]
        if isinstance(off, bool) or not isinstance(off, int):
            raise ValueError(f"buffer {r.name!r} has a non-integer offset {off!r}")
        if off < 0:
            raise ValueError(f"buffer {r.name!r} has negative offset {off}")
        if off % plan.alignment:
            raise ValueError(
                f"buffer {r.name!r} at offset {off} is not a multiple of alignment {plan.alignment}"
            )
        # Only the real bytes must fit: the alignment padding is never touched.
        if off + r.size > plan.arena_bytes:
            raise ValueError(
                f"buffer {r.name!r} at [{off}, {off + r.size}) exceeds arena_bytes={plan.arena_bytes}"
            )
    # Sorting by first use lets the inner loop stop at the first buffer born after i dies.
    by_start = sorted(requests, key=lambda r: (r.first_use, r.name))
    for i, a in enumerate(by_start):
        a_off = plan.offsets[a.name]
        for b in by_start[i + 1 :]:
            if b.first_use > a.last_use:
                break
            b_off = plan.offsets[b.name]
            if a_off < b_off + b.size and b_off < a_off + a.size:
                raise ValueError(
                    f"buffers {a.name!r} and {b.name!r} are live together "
                    f"(ops [{a.first_use}, {a.last_use}] and [{b.first_use}, {b.last_use}]) "
                    f"but overlap in bytes: [{a_off}, {a_off + a.size}) vs [{b_off}, {b_off + b.size})"
                )


# --------------------------------------------------------------------------------------
# Internals


def _check_alignment(alignment: int) -> None:
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1:
        raise ValueError(f"alignment must be a positive integer, got {alignment!r}")


def _validate(requests: Sequence[BufferRequest]) -> None:
    """Reject requests no plan could honour, naming the offending buffer."""
    seen: set[str] = set()
    for r in requests:
        if not isinstance(r, BufferRequest):
            raise ValueError(f"expected a BufferRequest, got {r!r}")
        if not isinstance(r.name, str) or not r.name:
            raise ValueError(f"buffer name must be a non-empty string, got {r.name!r}")
        for field in ("size", "first_use", "last_use"):
            value = getattr(r, field)
            # bool is an int subclass; a True size is almost certainly a caller bug.
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"buffer {r.name!r}: {field} must be an int, got {value!r}")
        if r.size <= 0:
            raise ValueError(f"buffer {r.name!r}: size must be > 0, got {r.size}")
        if r.first_use < 0:
            raise ValueError(f"buffer {r.name!r}: first_use must be >= 0, got {r.first_use}")
        if r.last_use < r.first_use:
            raise ValueError(
                f"buffer {r.name!r}: last_use {r.last_use} is before first_use {r.first_use}"
            )
        if r.name in seen:
            raise ValueError(f"duplicate buffer name {r.name!r}")
        seen.add(r.name)


def _live_profile(
    requests: Sequence[BufferRequest], alignment: int
) -> tuple[list[int], list[int]]:
    """Total live aligned bytes at each distinct first_use, in increasing op order.

    The live total only rises at a first_use, so its maximum over any interval that starts
    at a first_use is attained at one of these points; no need to visit every op index.
    """
    points = sorted({r.first_use for r in requests})
    delta = [0] * (len(points) + 1)
    for r in requests:
        size = aligned(r.size, alignment)
        delta[bisect.bisect_left(points, r.first_use)] += size
        delta[bisect.bisect_right(points, r.last_use)] -= size
    live: list[int] = []
    running = 0
    for d in delta[:-1]:
        running += d
        live.append(running)
    return points, live


def _breadths(requests: Sequence[BufferRequest], alignment: int) -> dict[str, int]:
    """For each buffer, the peak live total during its lifetime (how crowded its life is)."""
    points, live = _live_profile(requests, alignment)
    out: dict[str, int] = {}
    for r in requests:
        lo = bisect.bisect_left(points, r.first_use)
        hi = bisect.bisect_right(points, r.last_use)
        out[r.name] = max(live[lo:hi])
    return out


_SortKey = Callable[[BufferRequest, dict[str, int]], tuple[int | str, ...]]

# Every key ends with the name so the order, and hence the plan, is fully deterministic.
_ORDERS: dict[str, _SortKey] = {
    "size": lambda r, b: (-r.size, r.first_use, r.name),
    "first_use": lambda r, b: (r.first_use, -r.size, -r.last_use, r.name),
    "breadth": lambda r, b: (-b[r.name], -r.size, r.first_use, r.name),
    "lifetime": lambda r, b: (-(r.last_use - r.first_use), -r.size, r.first_use, r.name),
}

# (name, order, two_sided). greedy_by_size comes first so a tie reports the TFLM baseline;
# the two-sided first-use strategy is second because it is the one that is exact on chains.
_STRATEGIES: dict[str, tuple[str, bool]] = {
    "greedy_by_size": ("size", False),
    "two_sided_by_first_use": ("first_use", True),
    "two_sided_by_size": ("size", True),
    "greedy_by_breadth": ("breadth", False),
    "two_sided_by_breadth": ("breadth", True),
    "greedy_by_first_use": ("first_use", False),
    "greedy_by_lifetime": ("lifetime", False),
    "two_sided_by_lifetime": ("lifetime", True),
}
_STRATEGY_ORDER: tuple[str, ...] = tuple(_STRATEGIES)


def _run_strategy(
    name: str,
    requests: Sequence[BufferRequest],
    alignment: int,
    bound: int,
    breadth: dict[str, int],
) -> MemoryPlan:
    order_name, two_sided = _STRATEGIES[name]
    key = _ORDERS[order_name]
    order = sorted(requests, key=lambda r: key(r, breadth))
    placed = _place(order, alignment, bound, two_sided)
    # Offsets in the caller's order, so the emitted C lists buffers predictably.
    offsets = {r.name: placed[r.name] for r in requests}
    arena = max((placed[r.name] + aligned(r.size, alignment) for r in requests), default=0)
    return MemoryPlan(
        arena_bytes=arena, offsets=offsets, lower_bound=bound, strategy=name, alignment=alignment
    )


def _lowest_fit(size: int, busy: list[tuple[int, int]], alignment: int) -> int:
    """Lowest aligned offset where [off, off+size) misses every (merged, sorted) busy range."""
    off = 0
    for start, end in busy:
        if off + size <= start:
            break
        off = max(off, aligned(end, alignment))
    return off


def _highest_fit(size: int, busy: list[tuple[int, int]], alignment: int, top: int) -> int | None:
    """Highest aligned offset with [off, off+size) inside [0, top) and clear of ``busy``."""
    off = (top - size) // alignment * alignment
    for start, end in reversed(busy):
        if end <= off:
            break  # this range and all lower ones end below the candidate
        if off + size <= start:
            continue  # range lies entirely above the candidate
        off = (start - size) // alignment * alignment
    return off if off >= 0 else None


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort byte ranges and coalesce overlapping/touching ones."""
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _place(
    order: Sequence[BufferRequest], alignment: int, bound: int, two_sided: bool
) -> dict[str, int]:
    """Place buffers one by one in ``order``; returns name -> offset.

    Bottom-only placement is the classic first-fit. Two-sided placement also lets a buffer
    hang from the top of an arena of size ``bound`` (the lower bound, or the current arena
    end if that has grown past it). Putting each buffer on the side opposite to the live
    buffers it overlaps is what makes ping-pong chains fit in exactly the lower bound:
    a producer and its consumer sit at opposite ends and never collide.
    """
    # (request, offset, aligned size, side) for everything placed so far; side True = top.
    placed: list[tuple[BufferRequest, int, int, bool]] = []
    offsets: dict[str, int] = {}
    arena_end = 0
    for r in order:
        size = aligned(r.size, alignment)
        busy_list: list[tuple[int, int]] = []
        bottom_bytes = top_bytes = 0
        for other, off, osize, on_top in placed:
            if other.first_use <= r.last_use and r.first_use <= other.last_use:
                busy_list.append((off, off + osize))
                if on_top:
                    top_bytes += osize
                else:
                    bottom_bytes += osize
        busy = _merge(busy_list)
        low = _lowest_fit(size, busy, alignment)
        choice, on_top = low, False
        if two_sided:
            top = max(bound, arena_end)
            high = _highest_fit(size, busy, alignment, top)
            # Go top when the live neighbours are mostly at the bottom, or when the bottom
            # spot would grow the arena and a top spot does not.
            if high is not None and (bottom_bytes > top_bytes or low + size > top):
                choice, on_top = high, True
        offsets[r.name] = choice
        placed.append((r, choice, size, on_top))
        arena_end = max(arena_end, choice + size)
    return offsets
