"""The search driver: joint search, repair to budgets, quantization-aware fine-tuning, export.

Methods (same data, same epochs, same export):
  joint      per-channel keep/prune and 2/4/8-bit choices searched together, then fine-tuned;
  uniform    every channel at `bits`, quantization-aware training for all the epochs;
  two-stage  structured magnitude pruning at 8 bits to the budgets (the same fraction of every
             group, its smallest channels; the exact cost model decides), retrained for half the
             search epochs, then bit-widths searched for the other half with the pruning frozen
             (prune-then-quantize), then fine-tuned.
After the search the discrete plan is repaired with the exact cost model (the exporter itself)
until every budget holds, filled with what the budgets leave, and its kernel variants are
re-decided on data (exchange_variants); an unreachable budget is refused before any training,
naming it and the smallest figure reachable.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, get_args

import numpy as np
import torch
import torch.nn.functional as F

from edgejpq.artifact import QuantizedModel
from edgejpq.cost.model import CostReport, model_cost
from edgejpq.data import Dataset, calibration_subset
from edgejpq.errors import EdgejpqError
from edgejpq.graph import FloatGraph
from edgejpq.plan import LayerPlan, PrecisionPlan, uniform_plan
from edgejpq.quant.integerize import (QuantState, calibrate, derive_quant_state, integer_logits, integerize,
                                     predict_float)
from edgejpq.search.cost import CostModel, ExpectedCost
from edgejpq.search.groups import ChannelGroups, channel_groups
from edgejpq.search.space import SearchableGraph

Method = Literal["joint", "uniform", "two-stage"]
Metric = Literal["flash", "weights", "ram", "latency"]
METRICS: tuple[Metric, ...] = get_args(Metric)  # what budgets, --objective and metric_value name
BUDGET_WEIGHT = 4.0  # penalty per unit of relative overshoot of a budget during the search
BUDGET_MARGIN = 0.97  # aim slightly under each budget so that repair has little to undo
JUDGE_SAMPLES = 4096  # training images exchange_variants scores candidate plans on


@dataclass(frozen=True)
class Budgets:
    flash_bytes: int | None = None  # weights + per-channel constants + code
    weight_bytes: int | None = None  # the packed weights alone
    ram_bytes: int | None = None
    latency_ms: float | None = None

    def items(self) -> list[tuple[Metric, float]]:
        out: list[tuple[Metric, float]] = []
        if self.flash_bytes is not None:
            out.append(("flash", float(self.flash_bytes)))
        if self.weight_bytes is not None:
            out.append(("weights", float(self.weight_bytes)))
        if self.ram_bytes is not None:
            out.append(("ram", float(self.ram_bytes)))
        if self.latency_ms is not None:
            out.append(("latency", float(self.latency_ms)))
        return out


@dataclass(frozen=True)
class SearchConfig:
    method: Method = "joint"
    bits: int = 8  # the uniform method's bit-width
    # the bit-widths joint and two-stage may give a channel: each one a plan uses links its kernels' code
    choices: tuple[int, ...] = (2, 4, 8)
    # 2 + 6: of 8 epochs, the split the Fashion-MNIST benchmarks found best for ResNet-8 (DS-CNN: 1 + 7)
    search_epochs: int = 2
    finetune_epochs: int = 6
    strength: float = 0.0
    objective: Metric = "flash"  # what --strength scales
    budgets: Budgets = field(default_factory=Budgets)
    lr: float = 1e-3  # Adam; 5e-4 gave 0.2 (uniform-8) to 0.6 (joint) points less in ResNet-8 pilots
    arch_lr: float = 5e-2
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    calibration: int = 1000
    # the sampling noise, annealed: low, so the weights keep training one sub-network (ResNet-8 pilots:
    # 1.0 → 0.05 gave 84.99% / 85.77% with 5 / 3 search epochs, 0.1 → 0.01 gave 86.28% with 3). It
    # steps per epoch, t0 in the first and t1 in the last, so a one-epoch search stays at t0: annealing
    # per batch instead scored lower on DS-CNN 1 + 7 (89.07 / 88.88% against 89.30 / 89.51%, seeds
    # 0 / 1) and the same on ResNet-8 2 + 6 (mean of three seeds 90.91% against 90.92%)
    temperature: tuple[float, float] = (0.1, 0.01)
    eval_samples: int = 2000  # test samples scored after every epoch (progress only: nothing is chosen by it)
    # the task loss's share of distillation from the float model searched from: (1 - d) · cross entropy
    # + d · KL(float model's softmax ‖ this model's), in every stage and method (0: cross entropy only)
    distill: float = 0.0
    # fine-tuning trains each channel's weight step (LSQ) from its least-error one; else the steps
    # stay the least-error ones of the current weights
    learn_steps: bool = True
    # fine-tuning puts a batch norm back after every convolution (trained on batch statistics, quantized
    # folded with the running ones, at twice the time per epoch); else it trains the folded convolutions
    batch_norm: bool = False
    # steps of weight training every candidate plan of the variant exchange gets before it is judged
    # (0: the searched weights as they are)
    trial_batches: int = 100
    # joint and two-stage keep the layers that read the model's input (graph.input_layers) at the widest
    # bit-width they may use, their pruning still searched; else those layers are searched like the rest.
    # The search cannot see what that layer's width is worth: narrowing it saves a few dozen weight bytes
    # and, when no other layer of its kernel family is that wide, a kernel's code. Off by default: on
    # Fashion-MNIST it lifts ResNet-8 at equal weight bytes (its 44% plans with an 8-bit stem: 91.39 /
    # 91.24 / 91.17% against 90.86 / 91.13 / 90.77%, seeds 0 / 1 / 2) but costs DS-CNN under the same
    # flash budget, where the 8-bit kernel's code is paid for by pruning (README)
    pin_input: bool = False

    def __post_init__(self) -> None:
        if self.method not in ("joint", "uniform", "two-stage"):
            raise EdgejpqError(f"method {self.method!r}: use joint, uniform or two-stage")
        if self.method == "uniform" and self.bits not in (2, 4, 8):
            raise EdgejpqError(f"uniform bits {self.bits}: use 8, 4 or 2")
        if not self.choices or not set(self.choices) <= {2, 4, 8} or list(self.choices) != sorted(set(self.choices)):
            raise EdgejpqError(f"bit-widths {','.join(map(str, self.choices))}: use some of 2, 4, 8, each once, "
                               f"in increasing order")
        if not 0.0 <= self.distill <= 1.0:
            raise EdgejpqError(f"distill {self.distill}: give the distillation share of the loss, from 0 to 1")
        if self.trial_batches < 0:
            raise EdgejpqError(f"trial batches {self.trial_batches}: give 0 or more")
        if self.method == "two-stage" and not self.budgets.items():
            raise EdgejpqError("method two-stage prunes to a budget: give one (--flash, --weights, --ram or "
                               "--latency-ms)")


@dataclass(frozen=True)
class EpochRecord:
    stage: str
    epoch: int
    loss: float
    test_accuracy: float
    flash_bytes: int
    ram_bytes: int
    latency_ms: float
    seconds: float
    weight_bytes: int = 0  # 0 in checkpoints written before it was recorded


@dataclass(frozen=True)
class SearchResult:
    plan: PrecisionPlan
    model: QuantizedModel
    cost: CostReport
    history: tuple[EpochRecord, ...]
    accuracy_float: float
    accuracy_fake_quant: float
    accuracy_integer: float
    seconds: float
    repair_steps: int
    fill_steps: int = 0
    variant_exchanges: int = 0
    pinned: Mapping[str, int] = field(default_factory=dict)  # layer -> the bit-width it was pinned at


def metric_value(report: CostReport, metric: Metric) -> float:
    return {"flash": float(report.flash_bytes), "weights": float(report.weight_bytes), "ram": float(report.ram_bytes),
            "latency": report.latency_ms}[metric]


def _expected(cost: ExpectedCost, metric: Metric, clock_hz: int) -> torch.Tensor:
    if metric == "flash":
        return cost.flash_bytes
    if metric == "weights":
        return cost.weight_bytes
    if metric == "ram":
        return cost.ram_bytes
    return cost.cycles * (1000.0 / clock_hz)


def _unit(metric: Metric, value: float) -> str:
    if metric == "latency":
        return f"{value:.3f} ms"
    return f"{value / 1024:.1f} KiB ({int(value)} B)"


class Evaluator:
    """Exact cost of a plan: export it (with fixed calibration ranges) and cost the integer model."""

    def __init__(self, graph: FloatGraph, ranges: Mapping[str, tuple[float, float]], target: Any) -> None:
        self.graph = graph
        self.ranges = ranges
        self.target = target

    def model(self, plan: PrecisionPlan, graph: FloatGraph | None = None) -> QuantizedModel:
        g = graph or self.graph
        return integerize(g, derive_quant_state(g, plan, self.ranges))

    def cost(self, plan: PrecisionPlan) -> CostReport:
        return model_cost(self.model(plan), self.target)


def pinned_layers(graph: FloatGraph, config: SearchConfig) -> dict[str, int]:
    """The layers `config.pin_input` keeps at the widest bit-width joint and two-stage may use (none for uniform)."""
    if not config.pin_input or config.method == "uniform":
        return {}
    return {name: config.choices[-1] for name in graph.input_layers}


def minimal_plan(graph: FloatGraph, groups: ChannelGroups, choices: tuple[int, ...],
                 pinned: Mapping[str, int] | None = None) -> PrecisionPlan:
    """The cheapest plan reachable: lowest bits (a pinned layer's own), one channel per prunable group."""
    layers = {}
    for layer in graph.weighted:
        g = groups.group_of(layer.name)
        low = (pinned or {}).get(layer.name, min(choices))
        bits = [low] * layer.out_channels if g.fixed else [low] + [0] * (layer.out_channels - 1)
        layers[layer.name] = LayerPlan(tuple(bits))
    return PrecisionPlan(layers)


def check_reachable(evaluator: Evaluator, plan: PrecisionPlan, budgets: Budgets, what: str) -> None:
    report = evaluator.cost(plan)
    for metric, budget in budgets.items():
        value = metric_value(report, metric)
        if value > budget:
            raise EdgejpqError(f"the {metric} budget of {_unit(metric, budget)} cannot be met: {what} needs "
                               f"{_unit(metric, value)}")


def magnitude_pruned_plan(space: SearchableGraph, budgets: Budgets, evaluator: Evaluator,
                          bisections: int = 16) -> PrecisionPlan:
    """Structured magnitude pruning at 8 bits: every prunable group keeps the same fraction of its
    channels, its largest-magnitude ones, at the largest fraction under which every budget holds
    (bisection on the exact cost). One fraction for all: a group whose channels are cheap to drop
    (a residual stream feeding two layers) is not emptied first."""
    order = [torch.argsort(m, descending=True).tolist() for m in space.channel_magnitudes()]

    def plan_at(fraction: float) -> PrecisionPlan:
        layers = {}
        for g in space.groups.groups:
            kept = g.channels if g.fixed else max(1, round(fraction * g.channels))
            keep = set(order[g.index][:kept])
            for name in g.members:
                layers[name] = LayerPlan(tuple(8 if c in keep else 0 for c in range(g.channels)))
        return PrecisionPlan(layers)

    def fits(plan: PrecisionPlan) -> bool:
        report = evaluator.cost(plan)
        return all(metric_value(report, m) <= b for m, b in budgets.items())

    whole = plan_at(1.0)
    if fits(whole):
        return whole
    check_reachable(evaluator, plan_at(0.0), budgets, "the smallest 8-bit plan (one channel per group)")
    low, high = 0.0, 1.0  # the plan fits at low, not at high
    for _ in range(bisections):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(plan_at(mid)) else (low, mid)
    return plan_at(low)


# --------------------------------------------------------------------------- training


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]


@torch.no_grad()
def _accuracy(space: SearchableGraph, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    explore, space.explore = space.explore, False
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((space(x[i: i + batch_size]).argmax(1) == y[i: i + batch_size]).sum())
    space.explore = explore
    return correct / max(1, len(x))


@contextmanager
def _run_as(space: SearchableGraph, plan: PrecisionPlan, *, training: bool) -> Iterator[None]:
    """`space` with its choices frozen to `plan`, no noise, in training or eval mode; its own choices,
    noise and mode are restored on leaving."""
    frozen, mode = (space.frozen_keep, space.frozen_bits, space.explore), space.training
    try:
        space.freeze(plan)
        space.explore = False
        space.train(training)
        yield
    finally:
        space.frozen_keep, space.frozen_bits, space.explore = frozen
        space.train(mode)


class Trainer:
    """Runs epochs of one stage: task loss + cost terms, progress per epoch, exact cost of the plan."""

    def __init__(self, ds: Dataset, target: Any, config: SearchConfig, evaluator: Evaluator,
                 on_epoch: Callable[[EpochRecord], None] | None) -> None:
        self.config = config
        self.target = target
        self.evaluator = evaluator
        self.on_epoch = on_epoch
        device = torch.device(config.device)
        self.device = device
        self.x = torch.from_numpy(ds.x_train).to(device)
        self.y = torch.from_numpy(ds.y_train).to(device)
        # the per-epoch check: eval_samples test images drawn across the whole test set, the same for every
        # run (DS-CNN's plans scored up to 1.5 points higher on Fashion-MNIST's first 2,000 than on all)
        n = min(config.eval_samples, len(ds.x_test))
        check = np.sort(np.random.default_rng(0).choice(len(ds.x_test), n, replace=False))
        self.x_test = torch.from_numpy(ds.x_test[check]).to(device)
        self.y_test = torch.from_numpy(ds.y_test[check]).to(device)
        self.generator = torch.Generator().manual_seed(config.seed)
        # the float model's logits on the training set, once (no augmentation, so they never change)
        self.teacher = (torch.from_numpy(predict_float(evaluator.graph, ds.x_train)).to(device)
                        if config.distill else None)
        self.history: list[EpochRecord] = []
        self.reference: dict[Metric, float] = {}
        # a fixed subset of the training images on which plans of the searched weights are compared
        picked = np.random.default_rng(config.seed).choice(len(self.x), size=min(JUDGE_SAMPLES, len(self.x)),
                                                           replace=False)
        self.judge_index = torch.from_numpy(np.sort(picked)).to(device)

    def cost_loss(self, expected: ExpectedCost) -> torch.Tensor:
        loss = torch.zeros((), device=self.device)
        clock = int(self.target.clock_hz)
        if self.config.strength:
            metric = self.config.objective
            loss = loss + self.config.strength * _expected(expected, metric, clock) / self.reference[metric]
        for metric, budget in self.config.budgets.items():
            ratio = _expected(expected, metric, clock) / (BUDGET_MARGIN * budget)
            loss = loss + BUDGET_WEIGHT * F.relu(ratio - 1.0)
        return loss

    def task_loss(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, self.y[index])
        if self.teacher is None:
            return loss
        share = self.config.distill
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(self.teacher[index], dim=1), log_target=True,
                      reduction="batchmean")
        return (1.0 - share) * loss + share * kl

    @torch.no_grad()
    def plan_loss(self, space: SearchableGraph, plan: PrecisionPlan, batch_size: int = 512) -> float:
        """Mean cross entropy of `space`'s weights run as `plan` (its hard choices, no noise, no
        fine-tuning) on the judge's training images; `space`'s own choices are left as they were."""
        total = 0.0
        with _run_as(space, plan, training=False):
            for i in range(0, len(self.judge_index), batch_size):
                index = self.judge_index[i: i + batch_size]
                total += float(F.cross_entropy(space(self.x[index]), self.y[index], reduction="sum"))
        return total / len(self.judge_index)

    def trial_loss(self, space: SearchableGraph, plan: PrecisionPlan) -> float:
        """plan_loss after `config.trial_batches` steps (at most one pass over the training set) of
        training `space`'s weights as `plan`, Adam at the weights' learning rate, the same batches for
        every plan: a pruned channel's neighbours get to adapt before the plan is judged. `space`'s
        weights and choices are left as they were."""
        saved = [p.detach().clone() for p in space.weight_parameters()]
        order = _batches(len(self.x), self.config.batch_size, torch.Generator().manual_seed(self.config.seed + 1))
        try:
            with _run_as(space, plan, training=True):
                optimizer = torch.optim.Adam(space.weight_parameters(), lr=self.config.lr)
                for index in order[: self.config.trial_batches]:
                    loss = self.task_loss(space(self.x[index]), index)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            return self.plan_loss(space, plan)
        finally:
            with torch.no_grad():
                for param, value in zip(space.weight_parameters(), saved):
                    param.copy_(value)
            space.zero_grad(set_to_none=True)

    def run(self, space: SearchableGraph, stage: str, epochs: int, *, search: bool,
            cost_model: CostModel | None) -> None:
        if epochs <= 0:
            return
        config = self.config
        space.to(self.device)
        groups = [{"params": space.weight_parameters(), "lr": config.lr}]
        if search:
            groups.append({"params": space.arch_parameters(), "lr": config.arch_lr})
        if space.range_parameters():
            groups.append({"params": space.range_parameters(), "lr": config.lr * 10})
        if space.step_parameters():  # log steps: lr is the relative change per batch
            groups.append({"params": space.step_parameters(), "lr": config.lr})
        optimizer = torch.optim.Adam(groups)
        batches_per_epoch = math.ceil(len(self.x) / config.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * batches_per_epoch)
        t0, t1 = config.temperature
        for epoch in range(epochs):
            start = time.perf_counter()
            if search:
                fraction = epoch / max(1, epochs - 1)
                space.temperature = t0 * (t1 / t0) ** fraction
            space.explore = search
            space.train()
            total, seen = 0.0, 0
            for index in _batches(len(self.x), config.batch_size, self.generator):
                logits = space(self.x[index])
                loss = self.task_loss(logits, index)
                if search and cost_model is not None:
                    keep, selections = space.last_choices
                    loss = loss + self.cost_loss(cost_model(keep=keep, probs=selections))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(index)
                seen += len(index)
            space.eval()
            space.explore = False
            accuracy = _accuracy(space, self.x_test, self.y_test)
            report = self.evaluator.cost(space.discrete_plan())
            record = EpochRecord(stage, len(self.history) + 1, total / seen, accuracy, report.flash_bytes,
                                 report.ram_bytes, report.latency_ms, time.perf_counter() - start,
                                 report.weight_bytes)
            self.history.append(record)
            if self.on_epoch:
                self.on_epoch(record)


# --------------------------------------------------------------------------- repair


def hard_choices(space: SearchableGraph, plan: PrecisionPlan) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A discrete plan as 0/1 keep and bit-width probabilities (with gradients) for the CostModel: a pruned
    channel's bits are the highest choice, which its keep of 0 cancels."""
    choices = space.choices
    keep = [torch.tensor([1.0 if b else 0.0 for b in plan.layers[g.members[0]].bits], requires_grad=True)
            for g in space.groups.groups]
    sel = [torch.tensor([[1.0 if (b or choices[-1]) == c else 0.0 for c in choices]
                         for b in plan.layers[l.name].bits], requires_grad=True) for l in space.layers]
    return keep, sel


def _budget_gradients(space: SearchableGraph, plan: PrecisionPlan, budgets: list[tuple[Metric, float]],
                      cost_model: CostModel, clock_hz: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`plan` as hard choices (hard_choices) carrying in .grad the gradient of Σ expected cost / budget over
    `budgets` (zeros where a budget does not depend on a choice: RAM ignores bits): what repair and fill
    rank their moves by."""
    keep, sel = hard_choices(space, plan)
    expected = cost_model(keep=keep, probs=sel)
    sum(_expected(expected, m, clock_hz) / b for m, b in budgets).backward()
    for tensor in (*keep, *sel):
        if tensor.grad is None:
            tensor.grad = torch.zeros_like(tensor)
    return keep, sel


def repair(space: SearchableGraph, plan: PrecisionPlan, budgets: Budgets, evaluator: Evaluator,
           cost_model: CostModel, max_steps: int = 400,
           pinned: frozenset[tuple[int, int]] = frozenset(),
           closed: frozenset[tuple[int, int]] = frozenset()) -> tuple[PrecisionPlan, int]:
    """Lower bit-widths and prune channels, least regret per unit of cost saved first, until every
    budget holds under the exact cost model. A `pinned` kernel variant (family index, bits) is never
    moved down whole, and no channel moves down into a `closed` one (exchange_variants: the variant
    it is trying and the one it left)."""
    choices = space.choices
    steps = 0
    while True:
        report = evaluator.cost(plan)
        violated = [(m, b) for m, b in budgets.items() if metric_value(report, m) > b]
        if not violated:
            return plan, steps
        if steps >= max_steps:
            raise EdgejpqError("repair did not converge; loosen the budgets")
        steps += 1
        keep, sel = _budget_gradients(space, plan, violated, cost_model, int(evaluator.target.clock_hz))
        candidates: list[tuple[float, str, int, int]] = []  # (score, kind, index, channel)
        fallback: list[tuple[float, str, int, int]] = []
        with torch.no_grad():
            for i, layer in enumerate(space.layers):
                if i in space.pinned:
                    continue
                probs = torch.softmax(space.bit_logits[i].detach().cpu(), dim=1)
                for o, bits in enumerate(plan.layers[layer.name].bits):
                    if not bits or bits == choices[0]:
                        continue
                    j = choices.index(bits)
                    if (space.layer_family[i], choices[j - 1]) in closed:
                        continue
                    saving = float(sel[i].grad[o, j] - sel[i].grad[o, j - 1])
                    regret = max(float(probs[o, j] - probs[o, j - 1]), 0.0) + 1e-3
                    (candidates if saving > 0 else fallback).append((regret / max(saving, 1e-9), "bits", i, o))
            for g in space.groups.prunable:
                bits = plan.layers[g.members[0]].bits
                if sum(1 for b in bits if b) <= 1:
                    continue
                prob = torch.sigmoid(space.keep_logits[g.index].detach().cpu())
                for c, b in enumerate(bits):
                    saving = float(keep[g.index].grad[c])
                    if b and space.prune:
                        (candidates if saving > 0 else fallback).append(
                            ((float(prob[c]) + 1e-3) / max(saving, 1e-9), "prune", g.index, c))
        # Moving a whole kernel variant down one bit-width drops its code, which no single channel's
        # gradient shows while other channels still use it: priced exactly, it competes with the rest.
        variant = _variant_move(space, plan, report, violated, evaluator, pinned, closed) if any(
            m == "flash" for m, _ in violated) else None
        if variant is not None and (not candidates or variant[0] <= min(candidates)[0]):
            plan = variant[1]
            continue
        # The gradient is a local estimate: where it promises no saving (run splits, say) but the budget is
        # still missed, any remaining move leads towards the minimal plan, so take the least regretted one.
        candidates = candidates or fallback
        if not candidates:
            metric, budget = violated[0]
            widths = {space.layers[i].name: bits for i, bits in space.pinned.items()}  # the pinned layers'
            floor = metric_value(evaluator.cost(minimal_plan(space.graph, space.groups, choices, widths)), metric)
            raise EdgejpqError(f"the {metric} budget of {_unit(metric, budget)} cannot be met: the smallest plan "
                               f"reachable needs {_unit(metric, floor)}")
        candidates.sort()
        chosen = candidates[: max(1, len(candidates) // 50)]
        layers = {name: list(lp.bits) for name, lp in plan.layers.items()}
        kept = {g.index: sum(1 for b in layers[g.members[0]] if b) for g in space.groups.groups}
        for _, kind, index, channel in chosen:
            if kind == "bits":
                name = space.layers[index].name
                if layers[name][channel]:  # not pruned by an earlier candidate of this step
                    layers[name][channel] = choices[choices.index(layers[name][channel]) - 1]
            elif kept[index] > 1:  # never the last channel of a group
                kept[index] -= 1
                for name in space.groups.groups[index].members:
                    layers[name][channel] = 0
        plan = PrecisionPlan({name: LayerPlan(tuple(bits)) for name, bits in layers.items()})


def fill(space: SearchableGraph, plan: PrecisionPlan, budgets: Budgets, evaluator: Evaluator,
         cost_model: CostModel, max_steps: int = 200, patience: int = 25) -> tuple[PrecisionPlan, int]:
    """Spend what the budgets leave: keep pruned channels again and raise channels to the next bit-width
    their family already links, cheapest per unit of the search's preference first, while every budget
    holds under the exact cost model. (The search pays each kernel variant's code while many channels
    may use it and stops paying when it drops it, so it can end well under a flash budget with the
    weights sized for a smaller one.) Returns the plan and the number of accepted steps."""
    if not budgets.items():
        return plan, 0
    choices = space.choices
    clock = int(evaluator.target.clock_hz)
    probs = [torch.softmax(space.bit_scores(i, logits).detach().cpu(), dim=1)  # temperature 1, as repair
             for i, logits in enumerate(space.bit_logits)]
    keep_probs = [torch.sigmoid(logits.detach().cpu()) for logits in space.keep_logits]
    rejected: set[tuple[str, int, int]] = set()
    steps = misses = 0

    def fits(candidate: PrecisionPlan) -> bool:
        report = evaluator.cost(candidate)
        return all(metric_value(report, m) <= b for m, b in budgets.items())

    while steps < max_steps and misses < patience:
        keep, sel = _budget_gradients(space, plan, budgets.items(), cost_model, clock)
        layers = {name: list(lp.bits) for name, lp in plan.layers.items()}
        linked = {(space.layer_family[i], b) for i, layer in enumerate(space.layers) for b in layers[layer.name] if b}

        def likeliest(i: int, o: int) -> int:  # a re-kept channel's bits: its likeliest linked variant
            if i in space.pinned:
                return space.pinned[i]
            options = [j for j, c in enumerate(choices) if (space.layer_family[i], c) in linked]
            return choices[max(options, key=lambda j: float(probs[i][o, j]))]

        candidates: list[tuple[float, str, int, int]] = []  # (cost per preference, kind, index, channel)
        for i, layer in enumerate(space.layers):
            grad = sel[i].grad
            for o, bits in enumerate(layers[layer.name]):
                higher = [c for c in choices if c > bits and (space.layer_family[i], c) in linked]
                if bits and higher and i not in space.pinned and ("bits", i, o) not in rejected:
                    j, k = choices.index(bits), choices.index(higher[0])
                    cost = max(float(grad[o, k] - grad[o, j]), 1e-9)
                    candidates.append((cost / (float(probs[i][o, k]) + 1e-3), "bits", i, o))
        if space.prune and space.frozen_keep is None:  # two-stage's pruning is its first stage's
            for g in space.groups.prunable:
                grad = keep[g.index].grad
                for c, bits in enumerate(layers[g.members[0]]):
                    if not bits and ("keep", g.index, c) not in rejected:
                        cost = max(float(grad[c]), 1e-9)
                        candidates.append((cost / (float(keep_probs[g.index][c]) + 1e-3), "keep", g.index, c))
        if not candidates:
            break
        candidates.sort()
        size = max(1, len(candidates) // 50)
        for batch in (candidates[:size], *([candidates[:1]] if size > 1 else [])):  # a batch, else the best alone
            trial = {name: list(bits) for name, bits in layers.items()}
            for _, kind, index, channel in batch:
                if kind == "bits":
                    name = space.layers[index].name
                    trial[name][channel] = choices[choices.index(trial[name][channel]) + 1]
                    while (space.layer_family[index], trial[name][channel]) not in linked:
                        trial[name][channel] = choices[choices.index(trial[name][channel]) + 1]
                else:
                    for name in space.groups.groups[index].members:
                        trial[name][channel] = likeliest(space.index[name], channel)
            candidate = PrecisionPlan({name: LayerPlan(tuple(bits)) for name, bits in trial.items()})
            if fits(candidate):
                plan, steps, misses = candidate, steps + 1, 0
                break
        else:
            _, kind, index, channel = candidates[0]
            rejected.add((kind, index, channel))
            misses += 1
    return plan, steps


def exchange_variants(space: SearchableGraph, plan: PrecisionPlan, budgets: Budgets, evaluator: Evaluator,
                      cost_model: CostModel, judge: Callable[[PrecisionPlan], float],
                      max_rounds: int = 3) -> tuple[PrecisionPlan, int]:
    """Re-decide on data which kernel variants (family × bit-width) the plan links.

    The search opens and closes a family's bit-widths with gates that move under cost pressure long
    before the weights show what each width is worth, and repair and fill only ever drop code or
    reuse linked code, so a plan can end at 2 bits with the budget's room for the 4-bit kernel unused,
    or mixing two widths in a family whose second kernel costs more flash than its channels gain.
    Here every channel of a family at a linked bit-width b moves to the nearest wider and, separately,
    the nearest narrower bit-width: one the family does not link (linking it instead of b) or one it
    does (unlinking b); so, as one candidate, do the channels at b of every family linking b (a plan
    at 2 bits everywhere may gain from 4 bits everywhere, paid for by pruning, where no single
    family's move to 4 bits does). Each candidate is repaired to the budgets (the width moved to
    pinned, so repair pays for it with other moves, and b closed to the families moved, so repair
    cannot move channels back to it: a wider width is paid for by pruning or by other families, not
    by relinking b) and filled, and the one `judge` scores lowest (Trainer.trial_loss: the loss of
    the searched weights run as the plan after a few steps of training them so) replaces the plan
    when it scores lower than the plan. Up to `max_rounds` rounds. Returns the plan and the exchanges made."""
    if not budgets.items():
        return plan, 0
    choices = space.choices
    score, exchanges = judge(plan), 0
    for _ in range(max_rounds):
        linked = sorted({(space.layer_family[i], b) for i, layer in enumerate(space.layers) if i not in space.pinned
                         for b in plan.layers[layer.name].bits if b})  # what moving channels can change
        sharing: dict[int, list[int]] = {}  # bit-width -> the families linking it
        for family, bits in linked:
            sharing.setdefault(bits, []).append(family)
        moves = [((family,), bits) for family, bits in linked] + \
            [(tuple(families), bits) for bits, families in sorted(sharing.items()) if len(families) > 1]
        best: tuple[float, PrecisionPlan] | None = None
        for families, bits in moves:
            wider, narrower = [c for c in choices if c > bits][:1], [c for c in choices if c < bits][-1:]
            for new in (*wider, *narrower):
                moved = PrecisionPlan({name: LayerPlan(tuple(new if b == bits and space.layer_family[space.index[name]]
                                                             in families and space.index[name] not in space.pinned
                                                             else b for b in lp.bits))
                                       for name, lp in plan.layers.items()})
                try:
                    candidate, _ = repair(space, moved, budgets, evaluator, cost_model,
                                          pinned=frozenset((family, new) for family in families),
                                          closed=frozenset((family, bits) for family in families))
                except EdgejpqError:  # no room for this variant
                    continue
                candidate, _ = fill(space, candidate, budgets, evaluator, cost_model)
                value = judge(candidate)
                if value < (score if best is None else best[0]):
                    best = (value, candidate)
        if best is None:
            break
        (score, plan), exchanges = best, exchanges + 1
    return plan, exchanges


def _variant_move(space: SearchableGraph, plan: PrecisionPlan, report: CostReport, violated: list[tuple[Metric, float]],
                  evaluator: Evaluator, pinned: frozenset[tuple[int, int]],
                  closed: frozenset[tuple[int, int]]) -> tuple[float, PrecisionPlan] | None:
    """The best move of every channel on one kernel variant (family × bits) to the next lower bit-width:
    (regret per unit of the violated budgets saved, the plan), priced with the exact cost model."""
    choices = space.choices
    used: dict[tuple[int, int], list[tuple[int, int]]] = {}  # variant -> (layer index, channel)
    for i, layer in enumerate(space.layers):
        for o, bits in enumerate(plan.layers[layer.name].bits):
            family = space.layer_family[i]
            if bits and bits != choices[0] and i not in space.pinned and (family, bits) not in pinned and \
                    (family, choices[choices.index(bits) - 1]) not in closed:
                used.setdefault((family, bits), []).append((i, o))
    probs = [torch.softmax(logits.detach().cpu(), dim=1) for logits in space.bit_logits]
    best: tuple[float, PrecisionPlan] | None = None
    for (_, bits), channels in used.items():
        j = choices.index(bits)
        layers = {name: list(lp.bits) for name, lp in plan.layers.items()}
        regret = 0.0
        for i, o in channels:
            regret += max(float(probs[i][o, j] - probs[i][o, j - 1]), 0.0) + 1e-3
            layers[space.layers[i].name][o] = choices[j - 1]
        moved = PrecisionPlan({name: LayerPlan(tuple(b)) for name, b in layers.items()})
        after = evaluator.cost(moved)
        saving = sum((metric_value(report, m) - metric_value(after, m)) / b for m, b in violated)
        if saving > 0 and (best is None or regret / saving < best[0]):
            best = (regret / saving, moved)
    return best


# --------------------------------------------------------------------------- the whole run


def _save_checkpoint(path: Path, config: SearchConfig, space: SearchableGraph, plan: PrecisionPlan,
                     history: list[EpochRecord], repair_steps: int, fill_steps: int, exchanges: int) -> None:
    import io

    from edgejpq.artifact import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save({"format": "edgejpq.search_checkpoint", "schema_version": 1, "method": config.method,
                "plan": plan.to_json(), "weights": [w.detach().cpu() for w in space.weights],
                "biases": [b.detach().cpu() for b in space.biases], "history": [asdict(r) for r in history],
                "repair_steps": repair_steps, "fill_steps": fill_steps, "variant_exchanges": exchanges}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(path: Path, config: SearchConfig,
                     space: SearchableGraph) -> tuple[PrecisionPlan, list[EpochRecord], int, int, int]:
    import json as _json

    from edgejpq.plan import load_plan_body

    try:
        saved = torch.load(path, weights_only=True)
    except Exception as exc:
        raise EdgejpqError(f"{path}: unreadable search checkpoint ({exc}); delete it or run without --resume") from None
    if not isinstance(saved, dict) or saved.get("format") != "edgejpq.search_checkpoint":
        raise EdgejpqError(f"{path}: not an edgejpq search checkpoint")
    if saved.get("method") != config.method or len(saved["weights"]) != len(space.weights):
        raise EdgejpqError(f"{path}: checkpoint of method {saved.get('method')!r} for another model; "
                           "use a new run folder or drop --resume")
    with torch.no_grad():
        for param, value in zip([*space.weights, *space.biases], [*saved["weights"], *saved["biases"]]):
            param.copy_(value)
    plan = load_plan_body(_json.loads(saved["plan"]), space.graph, where=str(path))
    return (plan, [EpochRecord(**r) for r in saved["history"]], int(saved["repair_steps"]),
            int(saved.get("fill_steps", 0)), int(saved.get("variant_exchanges", 0)))


def run_search(graph: FloatGraph, ds: Dataset, target: Any, config: SearchConfig,
               on_epoch: Callable[[EpochRecord], None] | None = None, *,
               checkpoint: Path | None = None, resume: bool = False) -> SearchResult:
    """Search (or train a baseline), repair to the budgets, fine-tune, export and score.

    With `checkpoint`, the searched plan and weights are saved there after the search; with
    `resume`, an existing checkpoint replaces the search stage (fine-tuning then runs again)."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    groups = channel_groups(graph)
    calib = calibration_subset(ds, min(config.calibration, len(ds.x_train)), seed=config.seed)
    evaluator = Evaluator(graph, calibrate(graph, calib), target)
    full = uniform_plan(graph, 8)
    trainer = Trainer(ds, target, config, evaluator, on_epoch)
    full_cost = evaluator.cost(full)
    trainer.reference = {m: metric_value(full_cost, m) for m in METRICS}
    choices = (2, 4, 8) if config.method == "uniform" else config.choices
    pinned = pinned_layers(graph, config)
    repair_steps = fill_steps = exchanges = 0

    if resume and checkpoint is not None and checkpoint.exists() and config.method != "uniform":
        space = SearchableGraph(graph, groups, choices=choices, pinned=pinned)
        plan, trainer.history, repair_steps, fill_steps, exchanges = _load_checkpoint(checkpoint, config, space)
        finetune_epochs = config.finetune_epochs
    elif config.method == "uniform":
        plan = uniform_plan(graph, config.bits)
        check_reachable(evaluator, plan, config.budgets, f"the uniform {config.bits}-bit model")
        space = SearchableGraph(graph, groups, choices=choices)
        finetune_epochs = config.search_epochs + config.finetune_epochs
    else:
        check_reachable(evaluator, minimal_plan(graph, groups, choices, pinned), config.budgets,
                        f"the smallest plan reachable ({choices[0]} bits, one channel per group"
                        + "".join(f", {name} at {bits}" for name, bits in pinned.items()) + ")")
        if config.method == "joint":
            space = SearchableGraph(graph, groups, choices=choices, pinned=pinned)
            cost_model = CostModel(space, target, evaluator.model(full), evaluator.ranges)
            trainer.run(space, "search", config.search_epochs, search=True, cost_model=cost_model)
        else:  # two-stage
            first = config.search_epochs // 2
            pruning = SearchableGraph(graph, groups, choices=choices[-1:])
            pruned = magnitude_pruned_plan(pruning, config.budgets, evaluator)
            pruning.freeze(pruned)
            trainer.run(pruning, "prune", first, search=False, cost_model=None)
            space = SearchableGraph(pruning.trained_graph(), groups, choices=choices, pinned=pinned)
            space.freeze_keep_only(pruned)
            cost_model = CostModel(space, target, evaluator.model(full), evaluator.ranges)
            trainer.run(space, "precision", config.search_epochs - first, search=True, cost_model=cost_model)
        space.frozen_keep = None if config.method == "joint" else space.frozen_keep
        plan_model = CostModel(space, target, evaluator.model(full), evaluator.ranges)  # its gradients rank the moves
        plan, repair_steps = repair(space, space.discrete_plan(), config.budgets, evaluator, plan_model)
        plan, fill_steps = fill(space, plan, config.budgets, evaluator, plan_model)
        plan, exchanges = exchange_variants(space, plan, config.budgets, evaluator, plan_model,
                                            lambda candidate: trainer.trial_loss(space, candidate))
        finetune_epochs = config.finetune_epochs
        if checkpoint is not None:
            _save_checkpoint(checkpoint, config, space, plan, trainer.history, repair_steps, fill_steps, exchanges)

    # quantization-aware fine-tuning of the discrete plan, activation ranges learned
    space.prepare_finetune(plan, calib, learn_steps=config.learn_steps and finetune_epochs > 0,
                           batch_norm=config.batch_norm and finetune_epochs > 0)
    trainer.run(space, "finetune", finetune_epochs, search=False, cost_model=None)
    trained = space.trained_graph()
    ranges = space.activation_ranges() if finetune_epochs > 0 else calibrate(trained, calib, plan)
    all_ranges = dict(calibrate(trained, calib, plan))
    all_ranges.update(ranges)
    state: QuantState = derive_quant_state(trained, plan, all_ranges, space.learned_weight_scales())
    model = integerize(trained, state, provenance={"method": config.method, "target": getattr(target, "name", ""),
                                                   "config": _jsonable(asdict(config))})
    x, y = ds.x_test, ds.y_test
    acc_float = float((predict_float(graph, x).argmax(1) == y).mean())  # the float model searched from
    acc_fake = float((predict_float(trained, x, state=state).argmax(1) == y).mean())
    acc_int = float((integer_logits(model, x).argmax(1) == y).mean())
    return SearchResult(plan=plan, model=model, cost=model_cost(model, target), history=tuple(trainer.history),
                        accuracy_float=acc_float, accuracy_fake_quant=acc_fake, accuracy_integer=acc_int,
                        seconds=time.perf_counter() - start, repair_steps=repair_steps, fill_steps=fill_steps,
                        variant_exchanges=exchanges, pinned=pinned)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value

