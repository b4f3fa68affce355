"""Tests for the static arena planner (edgejpq.cost.planner)."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgejpq.cost.planner import (
    BufferRequest,
    MemoryPlan,
    aligned,
    check_plan,
    greedy_by_size,
    lower_bound,
    plan_memory,
)

pytestmark = pytest.mark.unit

# Planning 40 buffers is milliseconds, but CI machines stall; a deadline would only add flakes.
PROPERTY = settings(max_examples=300, deadline=None)

sizes = st.integers(min_value=1, max_value=5000)
alignments = st.sampled_from([1, 4, 8, 16])


@st.composite
def random_requests(draw: st.DrawFn) -> list[BufferRequest]:
    n = draw(st.integers(min_value=1, max_value=40))
    out = []
    for i in range(n):
        first = draw(st.integers(min_value=0, max_value=30))
        last = draw(st.integers(min_value=first, max_value=30))
        out.append(BufferRequest(f"b{i}", draw(sizes), first, last))
    return out


@st.composite
def chains(draw: st.DrawFn) -> list[BufferRequest]:
    n = draw(st.integers(min_value=2, max_value=40))
    reqs = [BufferRequest(f"t{i}", draw(sizes), i, i + 1) for i in range(n)]
    # Input order must not matter: the planner sorts by itself.
    return draw(st.permutations(reqs))


def residual(chain_sizes: list[int], skips: list[tuple[int, int, int]]) -> list[BufferRequest]:
    """A chain plus shortcuts: skip (start, span, size) is written by op `start` and read
    by op `start + span`, like a ResNet block's identity branch feeding the add."""
    reqs = [BufferRequest(f"t{i}", s, i, i + 1) for i, s in enumerate(chain_sizes)]
    n = len(chain_sizes)
    for j, (start, span, size) in enumerate(skips):
        start = start % n
        reqs.append(BufferRequest(f"skip{j}", size, start, start + span))
    return reqs


@st.composite
def residual_graphs(draw: st.DrawFn) -> list[BufferRequest]:
    chain_sizes = draw(st.lists(sizes, min_size=2, max_size=30))
    skips = draw(
        st.lists(
            st.tuples(st.integers(0, 29), st.sampled_from([2, 3]), sizes), min_size=1, max_size=10
        )
    )
    return residual(chain_sizes, skips)


# --------------------------------------------------------------------------------------
# Properties


@PROPERTY
@given(random_requests(), alignments)
def test_random_requests_valid_and_no_worse_than_greedy(
    reqs: list[BufferRequest], alignment: int
) -> None:
    best = plan_memory(reqs, alignment)
    greedy = greedy_by_size(reqs, alignment)
    check_plan(reqs, best)
    check_plan(reqs, greedy)
    lb = lower_bound(reqs, alignment)
    assert best.lower_bound == greedy.lower_bound == lb
    assert lb <= best.arena_bytes <= greedy.arena_bytes
    assert greedy.strategy == "greedy_by_size"
    assert all(off % alignment == 0 for off in best.offsets.values())
    assert best.arena_bytes % alignment == 0


@PROPERTY
@given(chains(), alignments)
def test_chain_is_optimal(reqs: list[BufferRequest], alignment: int) -> None:
    plan = plan_memory(reqs, alignment)
    check_plan(reqs, plan)
    assert plan.arena_bytes == lower_bound(reqs, alignment)


@PROPERTY
@given(residual_graphs(), alignments)
def test_residual_graph_no_worse_than_greedy(reqs: list[BufferRequest], alignment: int) -> None:
    plan = plan_memory(reqs, alignment)
    check_plan(reqs, plan)
    assert lower_bound(reqs, alignment) <= plan.arena_bytes
    assert plan.arena_bytes <= greedy_by_size(reqs, alignment).arena_bytes


@PROPERTY
@given(random_requests())
def test_deterministic_and_order_independent(reqs: list[BufferRequest]) -> None:
    a = plan_memory(reqs)
    b = plan_memory(list(reversed(reqs)))
    assert a.arena_bytes == b.arena_bytes
    assert a.strategy == b.strategy
    assert dict(a.offsets) == dict(b.offsets)


# --------------------------------------------------------------------------------------
# Hand-worked examples


def test_hand_worked_chain_beats_greedy() -> None:
    # Chain 8 -> 4 -> 4 -> 8 bytes. Live pairs: (t0,t1)=12, (t1,t2)=8, (t2,t3)=12, so the
    # lower bound is 12. Greedy-by-size puts both 8s at 0 (they never meet), t1 at 8, and
    # then t2 must avoid t1 [8,12) and t3 [0,8): offset 12, arena 16. Ping-pong does
    # t0 bottom [0,8), t1 top [8,12), t2 bottom [0,4), t3 top [4,12): arena 12.
    reqs = [
        BufferRequest("t0", 8, 0, 1),
        BufferRequest("t1", 4, 1, 2),
        BufferRequest("t2", 4, 2, 3),
        BufferRequest("t3", 8, 3, 4),
    ]
    assert lower_bound(reqs) == 12

    greedy = greedy_by_size(reqs)
    assert greedy.arena_bytes == 16
    assert dict(greedy.offsets) == {"t0": 0, "t1": 8, "t2": 12, "t3": 0}

    plan = plan_memory(reqs)
    check_plan(reqs, plan)
    assert plan.arena_bytes == 12
    assert plan.strategy == "two_sided_by_first_use"
    assert dict(plan.offsets) == {"t0": 0, "t1": 8, "t2": 0, "t3": 4}


def test_alignment_rounds_sizes() -> None:
    # 1 + 5 bytes live together, but each takes a whole 4-byte multiple: 4 + 8 = 12.
    reqs = [BufferRequest("a", 1, 0, 1), BufferRequest("b", 5, 1, 2)]
    assert lower_bound(reqs, 4) == 12
    assert lower_bound(reqs, 1) == 6
    plan = plan_memory(reqs, 4)
    check_plan(reqs, plan)
    assert plan.arena_bytes == 12
    assert all(off % 4 == 0 for off in plan.offsets.values())


def test_disjoint_lifetimes_share_offset_zero() -> None:
    reqs = [BufferRequest("a", 100, 0, 0), BufferRequest("b", 40, 1, 1)]
    plan = plan_memory(reqs)
    assert plan.arena_bytes == 100
    assert dict(plan.offsets) == {"a": 0, "b": 0}


def test_inclusive_lifetimes_touching_at_one_op_overlap() -> None:
    # [0,1] and [1,2] meet at op 1, so they must not share bytes.
    reqs = [BufferRequest("a", 8, 0, 1), BufferRequest("b", 8, 1, 2)]
    plan = plan_memory(reqs)
    check_plan(reqs, plan)
    assert plan.arena_bytes == 16


def test_empty() -> None:
    assert lower_bound([]) == 0
    for plan in (plan_memory([]), greedy_by_size([])):
        assert plan.arena_bytes == 0
        assert dict(plan.offsets) == {}
        assert plan.lower_bound == 0
        check_plan([], plan)


def test_aligned() -> None:
    assert aligned(0, 4) == 0
    assert aligned(1, 4) == 4
    assert aligned(4, 4) == 4
    assert aligned(5, 4) == 8
    assert aligned(7, 1) == 7
    assert aligned(17, 16) == 32
    with pytest.raises(ValueError):
        aligned(4, 0)


# --------------------------------------------------------------------------------------
# check_plan


def _pair() -> list[BufferRequest]:
    return [BufferRequest("conv1_out", 16, 0, 2), BufferRequest("conv2_out", 16, 1, 3)]


def test_check_plan_catches_overlap_naming_both() -> None:
    bad = MemoryPlan(
        arena_bytes=24, offsets={"conv1_out": 0, "conv2_out": 8}, lower_bound=32, strategy="x"
    )
    with pytest.raises(ValueError, match="conv1_out") as info:
        check_plan(_pair(), bad)
    assert "conv2_out" in str(info.value)


def test_check_plan_allows_sharing_when_lifetimes_disjoint() -> None:
    reqs = [BufferRequest("a", 16, 0, 1), BufferRequest("b", 16, 2, 3)]
    check_plan(reqs, MemoryPlan(16, {"a": 0, "b": 0}, 16, "manual"))


def test_check_plan_missing_misaligned_too_big_unknown() -> None:
    reqs = _pair()
    with pytest.raises(ValueError, match="conv2_out"):
        check_plan(reqs, MemoryPlan(32, {"conv1_out": 0}, 32, "x"))
    with pytest.raises(ValueError, match="conv2_out.*alignment"):
        check_plan(reqs, MemoryPlan(40, {"conv1_out": 0, "conv2_out": 18}, 32, "x"))
    with pytest.raises(ValueError, match="conv2_out.*exceeds"):
        check_plan(reqs, MemoryPlan(31, {"conv1_out": 0, "conv2_out": 16}, 32, "x"))
    with pytest.raises(ValueError, match="ghost"):
        check_plan(reqs, MemoryPlan(32, {"conv1_out": 0, "conv2_out": 16, "ghost": 0}, 32, "x"))
    # The same plan is fine once nothing is wrong with it.
    check_plan(reqs, MemoryPlan(32, {"conv1_out": 0, "conv2_out": 16}, 32, "x"))


# --------------------------------------------------------------------------------------
# Invalid requests


@pytest.mark.parametrize(
    ("reqs", "culprit"),
    [
        ([BufferRequest("zero", 0, 0, 1)], "zero"),
        ([BufferRequest("neg", -4, 0, 1)], "neg"),
        ([BufferRequest("backwards", 4, 3, 2)], "backwards"),
        ([BufferRequest("dup", 4, 0, 1), BufferRequest("dup", 8, 2, 3)], "dup"),
    ],
)
def test_invalid_requests_raise_naming_buffer(reqs: list[BufferRequest], culprit: str) -> None:
    for fn in (plan_memory, greedy_by_size, lower_bound):
        with pytest.raises(ValueError, match=culprit):
            fn(reqs)
    with pytest.raises(ValueError, match=culprit):
        check_plan(reqs, MemoryPlan(0, {}, 0, "x"))


def test_invalid_alignment_raises() -> None:
    with pytest.raises(ValueError, match="alignment"):
        plan_memory([BufferRequest("a", 4, 0, 1)], alignment=0)


# --------------------------------------------------------------------------------------
# Speed


def test_200_buffers_is_fast() -> None:
    rng = random.Random(0)
    chain_sizes = [rng.randint(1, 50_000) for _ in range(150)]
    skips = [(rng.randrange(150), rng.choice([2, 3]), rng.randint(1, 50_000)) for _ in range(50)]
    reqs = residual(chain_sizes, skips)
    assert len(reqs) == 200
    start = time.perf_counter()
    plan = plan_memory(reqs)
    elapsed = time.perf_counter() - start
    check_plan(reqs, plan)
    assert plan.arena_bytes <= greedy_by_size(reqs).arena_bytes
    assert elapsed < 1.0, f"plan_memory took {elapsed:.3f}s for 200 buffers"
