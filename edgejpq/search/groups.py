"""Channel groups: output channels that must be kept or pruned together.

Every weighted layer's output channels form a channel space. Spaces are joined when one channel
index must mean the same channel in both:
  - a residual add joins the spaces of its two inputs (and its output is that space);
  - a depthwise conv's output space is its input's space (channel c only reads channel c);
  - pooling and flatten carry their input's space (a flattened channel is H×W features of a
    Linear's input, dropped together);
  - a concat's output is the concatenation of its inputs' spaces.
A group touching the model input (its channels are the data's) or producing the model output
(its channels are the classes) is fixed: never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgejpq.errors import EdgejpqError
from edgejpq.graph import AddLayer, ConcatLayer, FlattenLayer, FloatGraph, PoolLayer, WeightedLayer

INPUT_SPACE = "<input>"


@dataclass(frozen=True)
class ChannelGroup:
    index: int
    channels: int
    members: tuple[str, ...]  # weighted layers whose output channels belong to this group
    fixed: bool  # true when it joins the model input or output: never pruned


@dataclass(frozen=True)
class ChannelGroups:
    groups: tuple[ChannelGroup, ...]
    layer_group: dict[str, int]  # weighted layer → its output channels' group
    tensor_spaces: dict[str, tuple[int, ...]]  # tensor → groups its channels come from, in order (-1 = input)

    def group_of(self, layer: str) -> ChannelGroup:
        return self.groups[self.layer_group[layer]]

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if not g.fixed)


def channel_groups(graph: FloatGraph) -> ChannelGroups:
    """Group the graph's channel spaces; refuse constructs the search cannot keep consistent."""
    parent: dict[str, str] = {INPUT_SPACE: INPUT_SPACE}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra == rb:
            return
        if rb == INPUT_SPACE:  # keep the input as the root so its group is recognisably fixed
            ra, rb = rb, ra
        parent[rb] = ra

    # a tensor's channels: a tuple of spaces (more than one only after a concat)
    space: dict[str, tuple[str, ...]] = {graph.input: (INPUT_SPACE,)}
    for layer in graph.layers:
        if isinstance(layer, WeightedLayer):
            parent[layer.name] = layer.name
            if layer.depthwise:
                source = space[layer.input]
                if len(source) != 1:
                    raise EdgejpqError(f"depthwise layer {layer.name} reads a concatenation; the search cannot tie "
                                       "its channels to several producers yet")
                union(source[0], layer.name)
            space[layer.output] = (layer.name,)
        elif isinstance(layer, (PoolLayer, FlattenLayer)):
            space[layer.output] = space[layer.input]
        elif isinstance(layer, AddLayer):
            a, b = (space[name] for name in layer.inputs)
            if len(a) != 1 or len(b) != 1:
                raise EdgejpqError(f"fx node {layer.name!r}: a residual add of a concatenation cannot be searched yet "
                                   "(its channels would tie slices of several layers)")
            union(a[0], b[0])
            space[layer.output] = a
        elif isinstance(layer, ConcatLayer):
            space[layer.output] = tuple(s for name in layer.inputs for s in space[name])
    output_spaces = space[graph.output]
    roots: dict[str, int] = {}
    members: dict[int, list[str]] = {}
    channels: dict[int, int] = {}
    layer_group: dict[str, int] = {}
    for layer in graph.weighted:
        root = find(layer.name)
        index = roots.setdefault(root, len(roots))
        members.setdefault(index, []).append(layer.name)
        if channels.setdefault(index, layer.out_channels) != layer.out_channels:
            raise EdgejpqError(f"layer {layer.name} has {layer.out_channels} channels but is joined to layers with "
                               f"{channels[index]}")
        layer_group[layer.name] = index
    input_root = find(INPUT_SPACE)
    fixed_roots = {input_root} | {find(s) for s in output_spaces}
    groups = tuple(ChannelGroup(i, channels[i], tuple(members[i]), root in fixed_roots)
                   for root, i in roots.items())
    tensor_spaces = {t: tuple(-1 if find(s) == input_root else roots[find(s)] for s in spaces)
                     for t, spaces in space.items()}
    return ChannelGroups(groups, layer_group, tensor_spaces)
