"""Memory layout of a QuantizedModel: which bytes every tensor occupies.

Tensors that legally share bytes form one buffer:
  - a reshape's output is its input (same bytes, no data movement);
  - an add writes in place over an input whose last reader is that add (elementwise: each
    element is read before the same position is written).
The buffer holding the model input lives in the caller's input array and the one holding the
model output in the caller's output array; every other buffer gets an offset in one static
arena from the planner (edgejpq.cost.planner). Op i writes its output at step i; the input
exists from step -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from edgejpq.cost.planner import BufferRequest, check_plan, greedy_by_size, lower_bound, plan_memory

if TYPE_CHECKING:
    from edgejpq.artifact import MemoryLayout, Op, QuantizedModel, TensorInfo

ALIGNMENT = 4


@dataclass(frozen=True)
class Lifetime:
    first: int
    last: int


def tensor_lifetimes(ops: Sequence["Op"], model_input: str, model_output: str) -> dict[str, Lifetime]:
    from edgejpq.artifact import op_inputs

    first: dict[str, int] = {model_input: -1}
    last: dict[str, int] = {model_input: -1}
    for index, op in enumerate(ops):
        first[op.output] = index
        last.setdefault(op.output, index)
        for name in op_inputs(op):
            last[name] = max(last[name], index)
    last[model_output] = len(ops)  # the caller reads it after the last op
    return {name: Lifetime(first[name], last[name]) for name in first}


class _Groups:
    """Union-find over tensor names."""

    def __init__(self, names: Sequence[str]) -> None:
        self.parent = {n: n for n in names}

    def find(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(b)] = self.find(a)

    def members(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name in self.parent:
            out.setdefault(self.find(name), []).append(name)
        return out


def alias_groups(ops: Sequence["Op"], model_input: str, model_output: str) -> _Groups:
    """Group tensors that share bytes (reshapes always, adds in place where legal)."""
    from edgejpq.artifact import Add, Reshape

    life = tensor_lifetimes(ops, model_input, model_output)
    groups = _Groups(list(life))
    for index, op in enumerate(ops):
        if isinstance(op, Reshape):
            groups.union(op.input, op.output)
        elif isinstance(op, Add):
            for candidate in op.inputs:
                root = groups.find(candidate)
                members = [n for n in life if groups.find(n) == root]
                if groups.find(model_input) == root:
                    continue  # the caller's input is read-only
                if all(life[n].last <= index for n in members):
                    groups.union(candidate, op.output)
                    break
    return groups


def _group_requests(model_tensors: Mapping[str, "TensorInfo"], ops: Sequence["Op"], model_input: str,
                    model_output: str) -> tuple[_Groups, list[BufferRequest], dict[str, str]]:
    life = tensor_lifetimes(ops, model_input, model_output)
    groups = alias_groups(ops, model_input, model_output)
    regions: dict[str, str] = {}
    requests: list[BufferRequest] = []
    for root, members in groups.members().items():
        has_in = groups.find(model_input) == root
        has_out = groups.find(model_output) == root
        if has_in and has_out:
            raise ValueError(f"the model output {model_output} is the model input reshaped: nothing to compute")
        regions[root] = "input" if has_in else "output" if has_out else "arena"
        if regions[root] == "arena":
            requests.append(BufferRequest(
                name=root,
                size=max(model_tensors[m].size for m in members),
                first_use=min(life[m].first for m in members),
                last_use=max(life[m].last for m in members),
            ))
    return groups, requests, regions


def arena_buffers(tensors: Mapping[str, "TensorInfo"], ops: Sequence["Op"], model_input: str,
                  model_output: str) -> list[tuple[tuple[str, ...], int, int]]:
    """The arena's buffers as (tensors sharing the bytes, first use, last use): what the planner places."""
    groups, requests, _ = _group_requests(tensors, ops, model_input, model_output)
    members = groups.members()
    return [(tuple(members[r.name]), r.first_use, r.last_use) for r in requests]


def plan_model_memory(tensors: Mapping[str, "TensorInfo"], ops: Sequence["Op"], model_input: str,
                      model_output: str) -> "MemoryLayout":
    """Place every tensor: the caller's input/output arrays or an offset in the arena."""
    from edgejpq.artifact import MemoryLayout, Placement

    groups, requests, regions = _group_requests(tensors, ops, model_input, model_output)
    plan = plan_memory(requests, alignment=ALIGNMENT)
    placements = {}
    for name in tensors:
        root = groups.find(name)
        region = regions[root]
        placements[name] = Placement(region=region, offset=plan.offsets[root] if region == "arena" else 0)
    return MemoryLayout(arena_bytes=plan.arena_bytes, lower_bound=plan.lower_bound, strategy=plan.strategy,
                        placements=placements)


def greedy_baseline_bytes(model: "QuantizedModel") -> int:
    """Arena a TFLite-Micro-like greedy-by-size planner needs for the same buffers."""
    _, requests, _ = _group_requests(model.tensors, model.ops, model.input, model.output)
    return greedy_by_size(requests, alignment=ALIGNMENT).arena_bytes


def activation_lower_bound(model: "QuantizedModel") -> int:
    _, requests, _ = _group_requests(model.tensors, model.ops, model.input, model.output)
    return lower_bound(requests, alignment=ALIGNMENT)


def check_layout(model: "QuantizedModel") -> None:
    """Prove the stored layout safe: raise ValueError naming the tensors if two live ones collide.

    Works from the placements alone (a file may come from another planner): tensors stored at the
    same place are accepted only where sharing is legal (reshape; add in place with every
    earlier holder of those bytes dead after the add).
    """
    from edgejpq.artifact import Add, Reshape

    layout = model.layout
    missing = sorted(set(model.tensors) - set(layout.placements))
    if missing:
        raise ValueError(f"tensors without a placement: {missing}")
    life = tensor_lifetimes(model.ops, model.input, model.output)
    place = layout.placements
    groups = _Groups(list(model.tensors))
    for index, op in enumerate(model.ops):
        sources = (op.input,) if isinstance(op, Reshape) else tuple(op.inputs) if isinstance(op, Add) else ()
        for src in sources:
            if place[src] == place[op.output]:
                if isinstance(op, Add):
                    root = groups.find(src)
                    holders = [n for n in model.tensors if groups.find(n) == root]
                    late = [n for n in holders if life[n].last > index]
                    if late:
                        raise ValueError(f"add {op.name} writes in place over {src} but {late[0]} is still read "
                                         f"at step {life[late[0]].last}")
                groups.union(src, op.output)
                break
    root_in, root_out = groups.find(model.input), groups.find(model.output)
    for name, p in place.items():
        root = groups.find(name)
        want = "input" if root == root_in else "output" if root == root_out else "arena"
        if p.region != want:
            raise ValueError(f"tensor {name} is placed in region {p.region}, expected {want}")
    requests = []
    offsets = {}
    for root, members in groups.members().items():
        if root in (root_in, root_out):
            continue
        size = max(model.tensors[m].size for m in members)
        requests.append(BufferRequest(root, size, min(life[m].first for m in members),
                                      max(life[m].last for m in members)))
        offsets[root] = place[root].offset
    from edgejpq.cost.planner import MemoryPlan

    check_plan(requests, MemoryPlan(arena_bytes=layout.arena_bytes, offsets=offsets,
                                    lower_bound=lower_bound(requests, ALIGNMENT), strategy=layout.strategy))
