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
from typing import Any, Mapping

import torch

from edgejpq.artifact import QuantizedModel
from edgejpq.cost.memory import arena_buffers
from edgejpq.cost.model import (CONSTANT_BYTES_PER_CHANNEL, Geometry, cost_kind, elementwise_cycles, kernel_counts,
                                kernel_key, pool_cycles, slow_requantization, ungrouped_channels, weighted_cycles)
from edgejpq.graph import AddLayer, ConcatLayer, FlattenLayer, PoolLayer, WeightedLayer
from edgejpq.quant.integerize import absorbs_permutation
from edgejpq.search.space import SearchableGraph, layer_kind


def slow_requantization_flags(graph: Any, ranges: Mapping[str, tuple[float, float]],
                              choices: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per weighted layer a (channels, choices) tensor: 1 where that channel at that bit-width is requantized
    off the DSP kernels' fast path (edgejpq.cost.model.slow_requantization). With the calibration ranges
    fixed, a channel's multiplier is input scale × its weight scale at its bits / output scale, which no
    other channel's choice changes, so one uniform plan per choice gives every flag of every plan."""
    from edgejpq.plan import uniform_plan
    from edgejpq.quant.fixedpoint import quantize_multiplier
    from edgejpq.quant.integerize import derive_quant_state

    flags = {layer.name: torch.zeros(layer.out_channels, len(choices)) for layer in graph.weighted}
    for j, bits in enumerate(choices):
        state = derive_quant_state(graph, uniform_plan(graph, bits), ranges)
        for layer in graph.weighted:
            s_in, s_out = state.tensors[layer.input].scale, state.tensors[layer.output].scale
            mult_shift = [quantize_multiplier(s_in * s / s_out) for s in state.weight_scales[layer.name]]  # as integerize
            slow = slow_requantization([m for m, _ in mult_shift], [e for _, e in mult_shift])
            flags[layer.name][:, j] = torch.tensor(slow, dtype=torch.float32)
    return flags


@dataclass(frozen=True)
class ExpectedCost:
    flash_bytes: torch.Tensor  # weights + per-channel constants + code
    weight_bytes: torch.Tensor
    ram_bytes: torch.Tensor
    cycles: torch.Tensor


class CostModel:
    """Evaluates the expected cost of a SearchableGraph; build once per search."""

    def __init__(self, space: SearchableGraph, target: Any, reference: QuantizedModel,
                 ranges: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.space = space
        self.target = target
        # support objects every variant of a family calls: linked whatever the family's channels choose
        self.settled = {share for family in space.families
                        for share in set.intersection(*(set(target.kernel_shares(kernel_key(family, bits)))
                                                        for bits in space.choices))}
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
        self.geometry = {l.name: self._geometry(l) for l in space.layers}
        # per layer, channel and bit choice: 1 where the channel is requantized off the DSP kernels' fast path
        self.slow = (slow_requantization_flags(graph, ranges, space.choices) if ranges is not None
                     else self._reference_slow_flags(reference))

    def _reference_slow_flags(self, reference: QuantizedModel) -> dict[str, torch.Tensor]:
        """Without the calibration ranges: each channel's path in the reference export at every bit-width
        (read in the export's channel order, the layer's own when the reference has one run per layer)."""
        ops = {op.source or op.name: op for op in reference.ops}
        out = {}
        for layer in self.space.layers:
            op = ops.get(layer.name)
            flags = torch.zeros(layer.out_channels, len(self.space.choices))
            if op is not None and len(getattr(op, "runs", ())) == 1 and f"{op.name}.multiplier" in reference.arrays:
                slow = slow_requantization(reference.arrays[f"{op.name}.multiplier"], reference.arrays[f"{op.name}.shift"])
                if len(slow) == layer.out_channels:
                    flags[:] = torch.tensor(slow, dtype=torch.float32)[:, None]
            out[layer.name] = flags
        return out

    def _geometry(self, layer: WeightedLayer) -> Geometry:
        """The window geometry the exporter gives a layer (a Conv1d as a 1 × L convolution)."""
        if layer.kind == "linear":
            return Geometry()
        shapes = self.space.graph.shapes
        (ih, iw), (oh, ow) = (tuple(shapes[t][1:]) if len(shapes[t]) == 3 else (1, shapes[t][1])
                              for t in (layer.input, layer.output))
        return Geometry(ih, iw, oh, ow, layer.kernel[0], layer.kernel[1], layer.stride[0], layer.stride[1],
                        layer.padding[0], layer.padding[2])

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
        flash = self._code_bytes(keep, probs)
        weights = torch.zeros(())
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
                kind = layer_kind(layer)
                kept = kept_out.sum()
                run_list = self._run_list(layer, kept_out, probs[i])
                runs = len(run_list)
                in_channels = (0 if layer.kind == "linear" or layer.depthwise
                               else round(float(self.channels(layer.input, keep).detach())))
                kind = cost_kind(kind, in_channels, getattr(self.target, "kernels", None))
                ungrouped = sum(ungrouped_channels(kind, bits, count) for bits, count in run_list)
                conv1 = kind == "depthwise_conv2d" and not layer.depthwise
                slow = (kept_out * (probs[i] * self.slow[layer.name]).sum(dim=1)).sum()
                counts = kernel_counts(kind, self.geometry[layer.name], run_list, kept, k, conv1, slow,
                                       getattr(self.target, "kernels", None) == "portable")
                cycles = cycles + weighted_cycles(self.target, kind, self.pixels[out], k, by_bits, kept, runs,
                                                  self.pixels[layer.input], ungrouped, layer.kernel[0], in_channels,
                                                  counts)
                layer_weights = sum(count * k * bits / 8.0 for bits, count in by_bits.items())
                weights = weights + layer_weights
                flash = flash + layer_weights + CONSTANT_BYTES_PER_CHANNEL * kept
            elif isinstance(layer, (PoolLayer, AddLayer, ConcatLayer)):
                elements = self.pixels[out] * self.channels(out, keep)
                if isinstance(layer, PoolLayer):
                    cycles = cycles + pool_cycles(self.target, elements, layer.kernel)
                else:
                    kind = "add" if isinstance(layer, AddLayer) else "concat"
                    cycles = cycles + elementwise_cycles(self.target, kind, elements)
        return ExpectedCost(flash_bytes=flash, weight_bytes=weights, ram_bytes=self._arena(keep), cycles=cycles)

    def _runs(self, layer: WeightedLayer, kept_out: torch.Tensor, probs: torch.Tensor) -> int:
        """Kernel calls of a layer as the exporter forms them (`_run_list`)."""
        return len(self._run_list(layer, kept_out, probs))

    def _run_list(self, layer: WeightedLayer, kept_out: torch.Tensor, probs: torch.Tensor) -> list[tuple[int, int]]:
        """The weight runs (bits, channels) of the current discrete choices, as the exporter forms them: one
        per bit-width where it may order the channels by bit-width, else one per change of bit-width along
        the channel order (constants: they have no gradient). At least one run (a fully pruned layer
        still calls its kernel)."""
        chosen = [self.space.choices[j] for j in probs.detach().argmax(dim=1)[kept_out.detach() > 0.5].tolist()]
        if self.reorderable[layer.name]:
            runs = [(bits, chosen.count(bits)) for bits in sorted(set(chosen), reverse=True)]
        else:
            runs = []
            for bits in chosen:
                if runs and runs[-1][0] == bits:
                    runs[-1] = (bits, runs[-1][1] + 1)
                else:
                    runs.append((bits, 1))
        return runs or [(self.space.choices[0], 0)]

    def _code_bytes(self, keep: list[torch.Tensor], probs: list[torch.Tensor]) -> torch.Tensor:
        """Code of the plan the current choices make (kept channels at their most likely bits), exactly as
        edgejpq.cost.model.code_bytes counts it for that discrete plan.

        A weighted kernel (family × bits) is linked when any kept channel of its family uses it, and a
        support object it calls (code_size.shared_bytes) when any linked kernel does. The gradient is
        that of each object's size × P(linked), with P(kernel linked) = gate × (1 − Π(1 − keep × p(bits)))
        over its family's channels (gate: the variant's, SearchableGraph.variant_gates) and P(support
        linked) = 1 − Π(1 − P(kernel linked)) over its callers, unless every variant of a family calls
        it (straight through: the value stays the discrete one). Through the channels it shows the
        saving of moving a variant's last channels off it and the cost of moving a channel onto an
        unused one, near zero while many channels use it; through the gate it is the variant's whole
        code, which closing the gate saves. The layers, weight runs and other kernels have no gradient."""
        space = self.space
        sizes = self.target.code_size
        kernels: set[str] = set()
        runs = 0
        unused: dict[str, torch.Tensor] = {}  # kernel -> P(no kept channel uses it)
        gates: dict[str, torch.Tensor] = {}  # kernel -> its variant gate (1 open, 0 closed; sigmoid gradient)
        variant_gates = space.variant_gates()
        for layer in space.layers:
            kept = keep[space.groups.layer_group[layer.name]]
            i = space.index[layer.name]
            layer_probs = probs[i]
            kind = layer_kind(layer)
            chosen = layer_probs.detach().argmax(dim=1)[kept.detach() > 0.5]
            for j, bits in enumerate(space.choices):
                name = kernel_key(kind, bits)
                unused[name] = unused.get(name, torch.ones(())) * torch.prod(1.0 - kept * layer_probs[:, j])
                gates[name] = variant_gates[space.layer_family[i], j]
                if bool((chosen == j).any()):
                    kernels.add(name)
            runs += self._runs(layer, kept, layer_probs)
        unused = {name: 1.0 - gates[name] * (1.0 - p_unused) for name, p_unused in unused.items()}
        for layer in space.graph.layers:
            if isinstance(layer, PoolLayer):
                kernels.add(kernel_key(layer.mode))
            elif isinstance(layer, AddLayer):
                kernels.add("add")
            elif isinstance(layer, ConcatLayer):
                kernels.add("concat")
        layers = sum(1 for layer in space.graph.layers if not isinstance(layer, FlattenLayer))
        fixed = (sizes.base_bytes + sizes.per_layer_bytes * layers + sizes.per_weight_run_bytes * runs
                 + self.target.kernels_code_bytes(kernels))
        shared_unused: dict[str, torch.Tensor] = {}  # support object -> P(no linked kernel calls it)
        for name in kernels | set(unused):
            for share in set(self.target.kernel_shares(name)) - self.settled:
                p_unused = unused.get(name, torch.zeros(()))  # a kernel without a gradient is linked
                shared_unused[share] = shared_unused.get(share, torch.ones(())) * p_unused
        soft = sum((self.target.kernel_bytes(name) * (1.0 - p_unused) for name, p_unused in unused.items()),
                   torch.zeros(()))
        soft = soft + sum((sizes.shared_bytes[share] * (1.0 - p_unused) for share, p_unused in shared_unused.items()),
                          torch.zeros(()))
        return torch.tensor(float(fixed)) + (soft - soft.detach())

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
