"""The differentiable (expected) cost of a SearchableGraph on a target.

Same formulas as edgejpq.cost.model (weighted_cycles, elementwise_cycles, bytes per bit), fed with
keep probabilities and bit-width probabilities instead of counts:
  - kept output channels of a layer: the sum of its group's keep probabilities;
  - kept input channels: the same sum over the groups its input's channels come from (times the
    H×W features per channel for a Linear after a flatten);
  - weight bytes: Σ_b (expected channels at b bits) × K × b / 8 (no per-row byte padding);
  - RAM: the arena lower bound (largest sum of live buffers) with expected channel counts over
    the buffers the planner places, read from a reference export of the same graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from edgejpq.artifact import QuantizedModel
from edgejpq.cost.memory import arena_buffers
from edgejpq.cost.model import (CONSTANT_BYTES_PER_CHANNEL, cost_kind, elementwise_cycles, ungrouped_channels,
                                weighted_cycles)
from edgejpq.graph import AddLayer, ConcatLayer, FlattenLayer, PoolLayer, WeightedLayer
from edgejpq.quant.integerize import absorbs_permutation
from edgejpq.search.space import SearchableGraph


@dataclass(frozen=True)
class ExpectedCost:
    flash_bytes: torch.Tensor
    ram_bytes: torch.Tensor
    cycles: torch.Tensor


class CostModel:
    """Evaluates the expected cost of a SearchableGraph; build once per search."""

    def __init__(self, space: SearchableGraph, target: Any, reference: QuantizedModel) -> None:
        self.space = space
        self.target = target
        graph = space.graph
        shapes = graph.shapes
        self.pixels = {t: (s[1] * s[2] if len(s) == 3 else s[1] if len(s) == 2 else 1) for t, s in shapes.items()}
        # features per channel: H×W after a flatten (its channels are spread over the features)
        self.features = {graph.input: 1}
        for layer in graph.layers:
            if isinstance(layer, FlattenLayer):
                self.features[layer.output] = self.pixels[layer.input] * self.features[layer.input]
            elif isinstance(layer, PoolLayer):
                self.features[layer.output] = self.features[layer.input]
            else:
                self.features[layer.output] = 1
        self.input_channels = shapes[graph.input][0]
        self.buffers = arena_buffers(reference.tensors, reference.ops, reference.input, reference.output)
        self.steps = len(reference.ops)
        self.reorderable = {l.name: not l.depthwise and absorbs_permutation(graph, l.output) for l in space.layers}

    def channels(self, tensor: str, keep: list[torch.Tensor]) -> torch.Tensor:
        """Expected kept channels of a tensor (a concat sums its parts)."""
        total = torch.zeros(())
        for group in self.space.groups.tensor_spaces[tensor]:
            total = total + (self.input_channels if group < 0 else keep[group].sum())
        return total

    def __call__(self, keep: list[torch.Tensor] | None = None,
                 probs: list[torch.Tensor] | None = None) -> ExpectedCost:
        """Expected cost at the space's current probabilities, or at the given keep / bit probabilities."""
        space = self.space
        keep = space.keep_probabilities() if keep is None else keep
        probs = space.bit_probabilities() if probs is None else probs
        flash = torch.tensor(float(self._code_bytes(keep, probs)))
        cycles = torch.zeros(())
        for layer in space.graph.layers:
            out = layer.output
            if isinstance(layer, WeightedLayer):
                i = space.index[layer.name]
                kept_out = keep[space.groups.layer_group[layer.name]]
                taps = layer.kernel[0] * layer.kernel[1]
                if layer.depthwise:
                    k = torch.tensor(float(taps))
                else:
                    k = taps * self.channels(layer.input, keep) * self.features[layer.input]
                by_bits = {bits: (kept_out * probs[i][:, j]).sum() for j, bits in enumerate(space.choices)}
                kind = ("depthwise_conv2d" if layer.depthwise else "fully_connected" if layer.kind == "linear"
                        else "pointwise_conv2d" if layer.kernel == (1, 1) else "conv2d")
                kept = kept_out.sum()
                runs = self._runs(layer, kept_out, probs[i])
                in_channels = (0 if layer.kind == "linear" or layer.depthwise
                               else round(float(self.channels(layer.input, keep).detach())))
                kind = cost_kind(kind, in_channels, getattr(self.target, "kernels", None))
                ungrouped = self._ungrouped(layer, kind, kept_out, probs[i])
                cycles = cycles + weighted_cycles(self.target, kind, self.pixels[out], k, by_bits, kept, runs,
                                                  self.pixels[layer.input], ungrouped, layer.kernel[0], in_channels)
                flash = flash + sum(count * k * bits / 8.0 for bits, count in by_bits.items())
                flash = flash + CONSTANT_BYTES_PER_CHANNEL * kept
            elif isinstance(layer, (PoolLayer, AddLayer, ConcatLayer)):
                elements = self.pixels[out] * self.channels(out, keep)
                if isinstance(layer, PoolLayer):
                    elements = elements * layer.kernel[0] * layer.kernel[1]
                    kind = "pool"
                else:
                    kind = "add" if isinstance(layer, AddLayer) else "concat"
                cycles = cycles + elementwise_cycles(self.target, kind, elements)
        return ExpectedCost(flash_bytes=flash, ram_bytes=self._arena(keep), cycles=cycles)

    def _runs(self, layer: WeightedLayer, kept_out: torch.Tensor, probs: torch.Tensor) -> int:
        """Kernel calls of a layer as the exporter forms them: one per bit-width where it may order
        the channels by bit-width, else one per change of bit-width along the channel order."""
        chosen = probs.detach().argmax(dim=1)[kept_out.detach() > 0.5].tolist()
        if self.reorderable[layer.name]:
            return max(1, len(set(chosen)))
        return max(1, 1 + sum(1 for a, b in zip(chosen, chosen[1:]) if a != b))

    def _ungrouped(self, layer: WeightedLayer, kind: str, kept_out: torch.Tensor, probs: torch.Tensor) -> int:
        """Channels outside a sub-byte group, in the runs `_runs` counts (a constant: it has no gradient)."""
        chosen = [self.space.choices[j] for j in probs.detach().argmax(dim=1)[kept_out.detach() > 0.5].tolist()]
        if self.reorderable[layer.name]:
            runs = [(bits, chosen.count(bits)) for bits in set(chosen)]
        else:
            runs = []
            for bits in chosen:
                if runs and runs[-1][0] == bits:
                    runs[-1] = (bits, runs[-1][1] + 1)
                else:
                    runs.append((bits, 1))
        return sum(ungrouped_channels(kind, bits, count) for bits, count in runs)

    def _code_bytes(self, keep: list[torch.Tensor], probs: list[torch.Tensor]) -> int:
        """Code estimate of the plan these choices make (a constant: code size has no gradient).

        Kernels used and weight runs counted as the exporter forms them."""
        space = self.space
        sizes = self.target.code_size
        kernels: set[str] = set()
        runs = 0
        for layer in space.layers:
            kept = keep[space.groups.layer_group[layer.name]].detach() > 0.5
            chosen = probs[space.index[layer.name]].detach().argmax(dim=1)
            used = {space.choices[int(j)] for j in chosen[kept].tolist()}
            family = ("depthwise_conv2d" if layer.depthwise else "fully_connected" if layer.kind == "linear"
                      else "conv2d")
            kernels.update(f"{family}_w{b}" for b in used)
            runs += self._runs(layer, keep[space.groups.layer_group[layer.name]], probs[space.index[layer.name]])
        for layer in space.graph.layers:
            if isinstance(layer, PoolLayer):
                kernels.add(f"{layer.mode}_pool")
            elif isinstance(layer, AddLayer):
                kernels.add("add")
            elif isinstance(layer, ConcatLayer):
                kernels.add("concat")
        layers = sum(1 for layer in space.graph.layers if not isinstance(layer, FlattenLayer))
        return int(sizes.base_bytes + sizes.per_layer_bytes * layers + sizes.per_weight_run_bytes * runs
                   + sum(self.target.kernel_bytes(k) for k in kernels))

    def _arena(self, keep: list[torch.Tensor]) -> torch.Tensor:
        sizes = [torch.stack([self.pixels[t] * self.channels(t, keep) * self.features[t] for t in members]).max()
                 for members, _, _ in self.buffers]
        if not sizes:
            return torch.zeros(())
        live = []
        for step in range(-1, self.steps + 1):
            at_step = [size for size, (_, first, last) in zip(sizes, self.buffers) if first <= step <= last]
            if at_step:
                live.append(torch.stack(at_step).sum())
        return torch.stack(live).max()
