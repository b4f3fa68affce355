"""The searchable model: the BN-folded float graph with per-channel pruning and precision choices.

Why the folded graph: with batch norm after a conv, shrinking a channel's weights toward zero is
undone by the normalization (shared/TOOLCHAIN.md), so "pruning" must really remove the channel.
Training the exporter's own FloatGraph (batch norm already folded, activations fused) makes the
gate the last word on a channel, and what is trained is, layer for layer, what `integerize`
turns into the integer model.

Choices, per channel:
  - keep or prune: one logit per channel of every channel *group* (edgejpq.search.groups), so
    channels joined by residual adds / depthwise layers live and die together;
  - weight bits: logits over `choices` (e.g. 2, 4, 8) per output channel of every layer;
  - kernel variants: one gate per kernel family (conv, depthwise, fully connected) × bit-width.
    Each variant a plan uses links its own kernel code (several KB on the DSP targets), so a
    channel may only take a bit-width whose variant is open, and the cost model charges an open,
    used variant its code. A closed variant (gate logit <= 0) is masked out of its family's
    channel choices; its gate still learns through the soft choices, so it can open again.
The forward pass is hard (straight-through): it runs the argmax choice (with Gumbel / logistic
noise while searching) and back-propagates through the softmax / sigmoid at temperature 1, so
the model being trained is the discrete one, and the search's cost term is evaluated on that
same hard sample. The annealed temperature only sharpens the soft mixture (`soft=True`), which
converges to the hard model as the search ends; gradients never vanish with it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np
import torch
from torch import nn

from edgejpq.cost.model import kernel_family
from edgejpq.errors import EdgejpqError
from edgejpq.graph import AddLayer, ConcatLayer, FloatGraph, PoolLayer, WeightedLayer
from edgejpq.plan import LayerPlan, PrecisionPlan
from edgejpq.quant.integerize import (activate, calibrate, round_weights, run_layer, weight_limits, weight_scales,
                                      weight_steps)
from edgejpq.search.groups import ChannelGroup, ChannelGroups

BN_EPS = 1e-5  # nn.BatchNorm's defaults
BN_MOMENTUM = 0.1
KEEP_INIT = 2.0  # sigmoid(2) ≈ 0.88: start from the (pre-trained) full model
VARIANT_INIT = 2.0  # every kernel variant open at the start (a common shift of a family's bit logits)


def layer_kind(layer: WeightedLayer) -> str:
    """The latency table's kind of a searchable layer (edgejpq.cost.model.op_kind of its exported op)."""
    if layer.depthwise:
        return "depthwise_conv2d"
    if layer.kind == "linear":
        return "fully_connected"
    return "pointwise_conv2d" if layer.kernel == (1, 1) else "conv2d"


def layer_family(layer: WeightedLayer) -> str:
    """The kernel family a searchable layer calls (edgejpq.cost.model.kernel_family)."""
    return kernel_family(layer_kind(layer))


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel fake quantization on export's grid, straight-through gradient."""
    steps = weight_steps(w, bits)
    q = round_weights(w, steps, bits) * steps.reshape((-1,) + (1,) * (w.dim() - 1))
    return w + (q - w).detach()


def learned_step_weight(w: torch.Tensor, steps: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel fake quantization on export's grid with trainable `steps` (LSQ, Esser et
    al., 2020): the weight's gradient passes inside the grid and stops where it clips; the step's
    is (rounded − w/step) inside and the clipped level outside. (LSQ's gradient scale is left out:
    Adam normalizes each parameter's gradient.)"""
    lo, hi = weight_limits(bits)
    s = steps.reshape((-1,) + (1,) * (w.dim() - 1))
    v = torch.clamp(w / s, lo, hi)
    return (v + (torch.round(v) - v).detach()) * s


class _FakeQuantActivation(torch.autograd.Function):
    """int8 quantize-dequantize of `x` on the grid (scale, zero_point); gradients as TF's
    FakeQuantWithMinMaxVars: identity inside [low, high], the range end below / above collects the
    rest. One autograd node instead of a dozen elementwise ones: QAT runs twice as fast on CPU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scale: torch.Tensor,
                zero_point: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, low, high)
        q = torch.round(x / scale).add_(zero_point).clamp_(-128, 127)
        return q.sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, low, high = ctx.saved_tensors
        below = x < low
        above = x > high
        grad_low = torch.where(below, grad, 0.0).sum() if ctx.needs_input_grad[1] else None
        grad_high = torch.where(above, grad, 0.0).sum() if ctx.needs_input_grad[2] else None
        return grad.masked_fill(below.logical_or_(above), 0.0), grad_low, grad_high, None, None


def fake_quant_activation(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """int8 asymmetric fake quantization with learnable range [lo, hi] (TF FakeQuantWithMinMaxVars
    gradients: identity inside the range, the range ends collect the gradient outside it)."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp(hi - lo, min=1e-8) / 255.0
    zero_point = torch.clamp(torch.round(-128 - lo.detach() / scale.detach()), -128, 127)
    low = (-128 - zero_point) * scale
    high = (127 - zero_point) * scale
    return _FakeQuantActivation.apply(x, low, high, scale.detach(), zero_point)


class SearchableGraph(nn.Module):
    """A FloatGraph with trainable weights, channel gates and per-channel precision choices."""

    def __init__(self, graph: FloatGraph, groups: ChannelGroups, *, choices: tuple[int, ...] = (2, 4, 8),
                 prune: bool = True, pinned: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.groups = groups
        self.choices = tuple(choices)
        self.prune = prune
        self.layers = graph.weighted
        self.index = {layer.name: i for i, layer in enumerate(self.layers)}
        # layer index -> the one bit-width its kept channels take (its channels' pruning is still searched)
        self.pinned = {self.index[name]: int(bits) for name, bits in (pinned or {}).items()}
        for i, bits in self.pinned.items():
            if bits not in self.choices:
                raise EdgejpqError(f"layer {self.layers[i].name}: pinned at {bits} bits, which are not among the "
                                   f"bit-widths searched ({','.join(map(str, self.choices))})")
        self.weights = nn.ParameterList([nn.Parameter(l.weight.detach().clone()) for l in self.layers])
        self.biases = nn.ParameterList([nn.Parameter(l.bias.detach().clone()) for l in self.layers])
        self.keep_logits = nn.ParameterList([nn.Parameter(torch.full((g.channels,), KEEP_INIT))
                                             for g in groups.groups])
        # a slight preference for more bits: the search starts from the accurate end
        init = torch.linspace(0.0, 0.5, len(self.choices))
        self.bit_logits = nn.ParameterList([nn.Parameter(init.repeat(l.out_channels, 1)) for l in self.layers])
        self.families = tuple(sorted({layer_family(layer) for layer in self.layers}))
        self.layer_family = [self.families.index(layer_family(layer)) for layer in self.layers]
        self.variant_logits = nn.Parameter(torch.full((len(self.families), len(self.choices)), VARIANT_INIT))
        # per layer, its family's row of the variants, and the widths a pinned layer may not take
        self.register_buffer("family_rows", torch.tensor(self.layer_family, dtype=torch.long), persistent=False)
        self.register_buffer("pin_closed", torch.tensor([[i in self.pinned and c != self.pinned[i] for c in self.choices]
                                                         for i in range(len(self.layers))], dtype=torch.bool),
                             persistent=False)
        self.act_lo = nn.ParameterDict()
        self.act_hi = nn.ParameterDict()
        # per layer, the log of each channel's weight step at its plan's bit-width (fine-tuning only)
        self.log_steps = nn.ParameterList()
        # fine-tuning's batch norm after every convolution (prepare_finetune(batch_norm=True)), by layer key
        self.batch_norms = nn.ModuleDict()
        self._recording: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.temperature = 1.0
        self.explore = False  # add Gumbel / logistic noise to the hard choices (training only)
        self.soft = False  # run the probability-weighted mixture instead of the hard choice
        self.frozen_keep: list[torch.Tensor] | None = None  # per group, 0/1
        self.frozen_bits: list[torch.Tensor] | None = None  # per layer, bit-width per channel
        self.last_choices: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    # ------------------------------------------------------------------ parameters by role

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.keep_logits, *self.bit_logits, *([self.variant_logits] if self.gates_variants else [])]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [*self.weights, *self.biases, *self.batch_norms.parameters()]

    def range_parameters(self) -> list[nn.Parameter]:
        return [*self.act_lo.values(), *self.act_hi.values()]

    def step_parameters(self) -> list[nn.Parameter]:
        return list(self.log_steps)

    # ------------------------------------------------------------------ choices

    def keep_probabilities(self) -> list[torch.Tensor]:
        """Per group, the probability of keeping each channel (1 for fixed groups or frozen masks)."""
        out = []
        for g, logits in zip(self.groups.groups, self.keep_logits):
            if self.frozen_keep is not None:
                out.append(self.frozen_keep[g.index])
            elif g.fixed or not self.prune:
                out.append(torch.ones_like(logits))
            else:
                out.append(torch.sigmoid(logits / self.temperature))
        return out

    @property
    def gates_variants(self) -> bool:
        """Whether the kernel variants are searched (several bit-widths, not frozen)."""
        return len(self.choices) > 1 and self.frozen_bits is None

    def open_variants(self) -> torch.Tensor:
        """(families × choices) bool: the kernel variants channels may use; at least one per family."""
        logits = self.variant_logits.detach()
        if not self.gates_variants:
            return torch.ones_like(logits, dtype=torch.bool)
        opened = logits > 0
        for i, bits in self.pinned.items():  # a pinned layer's variant is linked whatever the gate says
            opened[self.layer_family[i], self.choices.index(bits)] = True
        for f in range(len(self.families)):
            if not bool(opened[f].any()):
                opened[f, int(logits[f].argmax())] = True
        return opened

    def variant_gates(self) -> torch.Tensor:
        """(families × choices): 1 for an open variant, 0 for a closed one, with the sigmoid's gradient
        (straight through); all ones when the variants are not searched."""
        if not self.gates_variants:
            return torch.ones_like(self.variant_logits.detach())
        soft = torch.sigmoid(self.variant_logits)
        return self.open_variants().float() + soft - soft.detach()

    def bit_scores(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        """Layer i's bit logits with its family's variant gates folded in (log sigmoid: a closing gate
        draws probability away from its bit-width in every channel of the family)."""
        if not self.gates_variants:
            return logits
        return logits + nn.functional.logsigmoid(self.variant_logits[self.layer_family[i]])

    def _closed(self) -> list[torch.Tensor]:
        """Per layer, the (choices,) bool mask of its family's closed variants, and for a pinned layer of
        every width but its own."""
        return list((~self.open_variants())[self.family_rows] | self.pin_closed)

    def bit_probabilities(self) -> list[torch.Tensor]:
        """Per layer, (channels × choices) probabilities of each bit-width (0 for a closed variant)."""
        if self.frozen_bits is not None:
            return [self._one_hot_bits(b) for b in self.frozen_bits]
        return [torch.softmax((self.bit_scores(i, logits) / self.temperature).masked_fill(closed, -torch.inf), dim=1)
                for i, (logits, closed) in enumerate(zip(self.bit_logits, self._closed()))]

    def channel_magnitudes(self) -> list[torch.Tensor]:
        """Per group, each channel's mean |w| over its layer's mean, summed over the group's layers: the
        score structured magnitude pruning ranks filters by (Li et al., 2017)."""
        out = []
        with torch.no_grad():
            for g in self.groups.groups:
                score = torch.zeros(g.channels)
                for name in g.members:
                    w = self.weights[self.index[name]].detach().cpu()
                    norms = w.abs().reshape(w.shape[0], -1).mean(dim=1)
                    score += norms / norms.mean().clamp_min(1e-12)
                out.append(score)
        return out

    def _one_hot_bits(self, bits: torch.Tensor) -> torch.Tensor:
        table = torch.tensor(self.choices, device=bits.device)
        return (bits[:, None] == table[None, :]).float()

    def _searched(self, g: ChannelGroup) -> bool:
        """Whether the group's keep gate is a searched choice (else a fixed 0/1 constant)."""
        return self.frozen_keep is None and not g.fixed and self.prune

    def _keep_masks(self) -> list[torch.Tensor]:
        probs = self.keep_probabilities()
        if self.soft or self.frozen_keep is not None:
            return probs
        masks = []
        for g, logits, p in zip(self.groups.groups, self.keep_logits, probs):
            if not self._searched(g):
                masks.append(p)
                continue
            noise = 0.0
            if self.explore:
                u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
                noise = (torch.log(u) - torch.log1p(-u)) * self.temperature  # relaxed Bernoulli sample
            hard = (logits + noise > 0).float()
            straight = torch.sigmoid(logits)
            masks.append(hard + straight - straight.detach())
        return masks

    def _selections(self) -> list[torch.Tensor]:
        probs = self.bit_probabilities()
        if self.soft or self.frozen_bits is not None:
            return probs
        out = []
        for i, (logits, closed) in enumerate(zip(self.bit_logits, self._closed())):
            logits = self.bit_scores(i, logits)
            scores = logits.detach()
            if self.explore:
                u = torch.rand_like(scores).clamp(1e-6, 1 - 1e-6)
                scores = scores - torch.log(-torch.log(u)) * self.temperature
            scores = scores.masked_fill(closed, -torch.inf)
            hard = nn.functional.one_hot(scores.argmax(dim=1), len(self.choices)).float()
            straight = torch.softmax(logits, dim=1)
            out.append(hard + straight - straight.detach())
        return out

    # ------------------------------------------------------------------ forward

    def prepare_finetune(self, plan: PrecisionPlan, calibration: np.ndarray, *, learn_steps: bool = True,
                         batch_norm: bool = False) -> None:
        """Fix every choice to `plan` and fake-quantize every integer tensor, with learnable ranges
        calibrated on the trained weights: quantization-aware fine-tuning (and uniform QAT). With
        `learn_steps`, every channel's weight step is trained too, from its least-error step. With
        `batch_norm`, every convolution gets a batch norm back (see `_batch_norm_layer`)."""
        self.freeze(plan)
        self.enable_activation_quant(calibrate(self.trained_graph(), calibration, plan))
        self.log_steps = nn.ParameterList()
        if learn_steps:
            for layer, w in zip(self.layers, self.weights):
                scales = torch.from_numpy(weight_scales(w.detach().cpu(), plan.layers[layer.name].bits))
                steps = torch.where(scales > 0, scales, torch.ones_like(scales)).to(w.dtype)
                self.log_steps.append(nn.Parameter(torch.log(steps).to(w.device)))
        if batch_norm:
            self._start_batch_norm(calibration)

    def _start_batch_norm(self, calibration: np.ndarray) -> None:
        """A batch norm after every convolution, started where the folded layer is: running statistics
        of its float product on `calibration`, gamma their std and beta their mean plus the bias, so the
        model computes what it did."""
        self._recording = {}
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self(torch.from_numpy(calibration).to(self.weights[0].device))
            recorded = self._recording
        finally:
            self._recording = None
            self.train(was_training)
        for name, (mean, var) in recorded.items():
            norm = nn.BatchNorm1d(len(mean), eps=BN_EPS, momentum=BN_MOMENTUM).to(mean.device)
            with torch.no_grad():
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.weight.copy_(torch.sqrt(var + BN_EPS))
                norm.bias.copy_(mean + self.biases[self.index[name]])
            self.batch_norms[_key(name)] = norm

    def folded(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's weight and bias, with its fine-tuning batch norm folded in (running statistics)."""
        key = _key(self.layers[i].name)
        if key not in self.batch_norms:
            return self.weights[i], self.biases[i]
        norm = self.batch_norms[key]
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        w = self.weights[i]
        return w * scale.reshape((-1,) + (1,) * (w.dim() - 1)), norm.bias - norm.running_mean * scale

    def learned_weight_scales(self) -> dict[str, np.ndarray] | None:
        """Per layer, each channel's trained weight step (0 for a pruned one), as export takes them;
        None when the steps are not trained."""
        if not len(self.log_steps):
            return None
        assert self.frozen_keep is not None  # prepare_finetune froze the plan
        out = {}
        for layer, log_step in zip(self.layers, self.log_steps):
            kept = self.frozen_keep[self.groups.layer_group[layer.name]].detach().cpu().double().numpy()
            out[layer.name] = torch.exp(log_step.detach().cpu().double()).numpy() * kept
        return out

    def enable_activation_quant(self, ranges: Mapping[str, tuple[float, float]]) -> None:
        """Fake-quantize every integer tensor with learnable ranges initialised from `ranges`."""
        for name in self.quantized_tensors():
            lo, hi = ranges[name]
            device = self.weights[0].device
            self.act_lo[_key(name)] = nn.Parameter(torch.tensor(float(lo), device=device))
            self.act_hi[_key(name)] = nn.Parameter(torch.tensor(float(hi), device=device))

    def quantized_tensors(self) -> list[str]:
        """Tensors with their own scale: the input and every layer output but pools and flattens."""
        names = [self.graph.input]
        names += [l.output for l in self.graph.layers if isinstance(l, (WeightedLayer, AddLayer, ConcatLayer))]
        return names

    def activation_ranges(self) -> dict[str, tuple[float, float]]:
        return {name: (float(self.act_lo[_key(name)].detach()), float(self.act_hi[_key(name)].detach()))
                for name in self.quantized_tensors()}

    def _aq(self, name: str, x: torch.Tensor) -> torch.Tensor:
        key = _key(name)
        if key not in self.act_lo:
            return x
        return fake_quant_activation(x, self.act_lo[key], self.act_hi[key])

    def mixed_weight(self, i: int, selection: torch.Tensor, folded: torch.Tensor | None = None) -> torch.Tensor:
        """Layer i's weight fake-quantized at each channel's `selection` of bit-widths; `folded` is its
        weight from `folded(i)` when the caller has it already."""
        w = self.folded(i)[0] if folded is None else folded
        shape = (-1,) + (1,) * (w.dim() - 1)
        total = torch.zeros_like(w)
        steps = torch.exp(self.log_steps[i]) if len(self.log_steps) else None  # trained steps (fine-tuning)
        for k, bits in enumerate(self.choices):
            column = selection[:, k]
            if not self.soft and not column.requires_grad and not bool(column.any()):
                continue  # a frozen plan: skip bit-widths nobody uses
            quantized = fake_quant_weight(w, bits) if steps is None else learned_step_weight(w, steps, bits)
            total = total + column.reshape(shape) * quantized
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = self._keep_masks()
        selections = self._selections()
        self.last_choices = (keep, selections)  # the sample this pass ran: its cost is what the search pays
        values = {self.graph.input: self._aq(self.graph.input, x)}
        for layer in self.graph.layers:
            if isinstance(layer, WeightedLayer):
                i = self.index[layer.name]
                group = self.groups.group_of(layer.name)
                gate = keep[group.index]
                weight, bias = self.folded(i)
                weight = self.mixed_weight(i, selections[i], weight)
                if self._recording is not None and layer.kind != "linear":  # _start_batch_norm's statistics
                    self._recording[layer.name] = _channel_statistics(self._product(i, values, self.weights[i]))
                if self.training and _key(layer.name) in self.batch_norms:
                    y = self._batch_norm_layer(i, values, weight)
                    values[layer.output] = self._aq(layer.output, y * gate.reshape((1, -1) + (1,) * (y.dim() - 2)))
                    continue
                if self._searched(group):  # a searched gate learns from the gated output
                    y = run_layer(layer, values, self.graph, weight=weight, bias=bias)
                    y = y * gate.reshape((1, -1) + (1,) * (y.dim() - 2))
                else:  # a fixed 0/1 gate zeroes a channel's weights: the same output, no full-size product
                    weight = weight * gate.reshape((-1,) + (1,) * (weight.dim() - 1))
                    y = run_layer(layer, values, self.graph, weight=weight, bias=bias * gate)
                y = self._aq(layer.output, y)
            else:
                y = run_layer(layer, values, self.graph)
                if isinstance(layer, PoolLayer):
                    y = self._aq(layer.input, y)  # a pool keeps its input's scale: re-round averages
                elif isinstance(layer, (AddLayer, ConcatLayer)):
                    y = self._aq(layer.output, y)
            values[layer.output] = y
        return values[self.graph.output]

    def _product(self, i: int, values: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        """Layer i's convolution with `weight`, no bias, no activation."""
        layer = self.layers[i]
        return run_layer(replace(layer, activation="none"), values, self.graph, weight=weight,
                         bias=torch.zeros(layer.out_channels, dtype=weight.dtype, device=weight.device))

    def _batch_norm_layer(self, i: int, values: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
        """Layer i and its fine-tuning batch norm in training, quantized folded (Jacob et al., 2018, 3.2):
        `weight` is the fake-quantized weight folded with the running statistics; its product is
        rescaled to the statistics of this batch's unfolded float convolution, which update the running
        ones. In eval the layer is the folded one (`folded`), which `trained_graph` gives export."""
        norm = self.batch_norms[_key(self.layers[i].name)]
        mean, var = _channel_statistics(self._product(i, values, self.weights[i]))
        std = torch.sqrt(var + norm.eps)
        shape = (1, -1) + (1,) * (len(self.graph.shapes[self.layers[i].output]) - 1)
        y = self._product(i, values, weight) * (torch.sqrt(norm.running_var + norm.eps) / std).reshape(shape)
        y = y + (norm.bias - mean * norm.weight / std).reshape(shape)
        with torch.no_grad():  # as nn.BatchNorm: the running variance is the unbiased one
            n = values[self.layers[i].input].shape[0] * int(np.prod(self.graph.shapes[self.layers[i].output][1:]))
            norm.running_mean.lerp_(mean.detach(), norm.momentum)
            norm.running_var.lerp_(var.detach() * n / max(n - 1, 1), norm.momentum)
        return activate(y, self.layers[i].activation)

    # ------------------------------------------------------------------ results

    def discrete_plan(self) -> PrecisionPlan:
        """The argmax plan: keep where the keep logit is positive (at least one channel per group)."""
        keep = []
        for g, logits in zip(self.groups.groups, self.keep_logits):
            if self.frozen_keep is not None:
                k = self.frozen_keep[g.index].detach().bool()
            elif g.fixed or not self.prune:
                k = torch.ones_like(logits, dtype=torch.bool)
            else:
                k = logits.detach() > 0
                if not bool(k.any()):
                    k[int(logits.detach().argmax())] = True
            keep.append(k.cpu())
        layers = {}
        closed = self._closed()
        for i, layer in enumerate(self.layers):
            if self.frozen_bits is not None:
                bits = self.frozen_bits[i].cpu()
            else:
                scores = self.bit_scores(i, self.bit_logits[i]).detach().masked_fill(closed[i], -torch.inf)
                bits = torch.tensor(self.choices)[scores.argmax(dim=1).cpu()]
            mask = keep[self.groups.layer_group[layer.name]]
            layers[layer.name] = LayerPlan(tuple(int(b) if m else 0 for b, m in zip(bits.tolist(), mask.tolist())))
        return PrecisionPlan(layers)

    def freeze(self, plan: PrecisionPlan) -> None:
        """Fix every choice to `plan` (fine-tuning, or the second stage of the two-stage baseline)."""
        device = self.weights[0].device
        self.frozen_keep = []
        for g in self.groups.groups:
            bits = plan.layers[g.members[0]].bits
            self.frozen_keep.append(torch.tensor([1.0 if b else 0.0 for b in bits], device=device))
        self.frozen_bits = [torch.tensor([b if b else self.choices[-1] for b in plan.layers[l.name].bits],
                                         device=device) for l in self.layers]

    def freeze_keep_only(self, plan: PrecisionPlan) -> None:
        """Fix the pruning masks to `plan`, leave the bit-width choices searchable."""
        device = self.weights[0].device
        self.frozen_keep = [torch.tensor([1.0 if b else 0.0 for b in plan.layers[g.members[0]].bits], device=device)
                            for g in self.groups.groups]

    def trained_graph(self) -> FloatGraph:
        """The float graph with the trained weights (what export integerizes)."""
        new_layers = []
        for layer in self.graph.layers:
            if isinstance(layer, WeightedLayer):
                i = self.index[layer.name]
                weight, bias = self.folded(i)
                layer = replace(layer, weight=weight.detach().cpu().clone(), bias=bias.detach().cpu().clone())
            new_layers.append(layer)
        consumers: dict[str, list] = {name: [] for name in self.graph.shapes}
        from edgejpq.graph import layer_inputs

        for layer in new_layers:
            for name in layer_inputs(layer):
                consumers[name].append(layer)
        return replace(self.graph, layers=tuple(new_layers), consumers={k: tuple(v) for k, v in consumers.items()})


def _channel_statistics(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (dimension 1), the mean and biased variance of `y` over every other dimension."""
    dims = [d for d in range(y.dim()) if d != 1]
    return y.mean(dim=dims), y.var(dim=dims, unbiased=False)


def _key(name: str) -> str:
    return name.replace(".", "__")
