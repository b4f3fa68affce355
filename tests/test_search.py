"""The search: channel groups, the cost model (exact and expected), repair, short searches."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from torch import nn

from edgejpq.cost.model import kernel_names, model_cost
from edgejpq.cost.target import load_target
from edgejpq.data import load_dataset
from edgejpq.errors import EdgejpqError
from edgejpq.graph import build_float_graph
from edgejpq.plan import LayerPlan, PrecisionPlan, uniform_plan
from edgejpq.quant.integerize import calibrate, derive_quant_state, predict_float, quantize_weight_rows
from edgejpq.search.cost import CostModel
from edgejpq.search.groups import channel_groups
from edgejpq.search.run import (Budgets, Evaluator, SearchConfig, Trainer, exchange_variants, fill, hard_choices,
                                magnitude_pruned_plan, metric_value, minimal_plan, repair, run_search)
from edgejpq.search.space import SearchableGraph, fake_quant_activation, learned_step_weight
from edgejpq.train import train_float
from edgejpq.zoo import build_model

from models import ConcatNet, DepthwiseNet

TOY = Path(__file__).parent / "data" / "toy.yaml"


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1), 1))


def _evaluator(graph, shape, target):
    x = np.random.default_rng(0).random((32, *shape), dtype=np.float32)
    return Evaluator(graph, calibrate(graph, x), target)


@pytest.mark.unit
def test_channel_groups_residual_and_depthwise():
    groups = channel_groups(build_float_graph(build_model("zoo:resnet8", (1, 28, 28), 10), (1, 28, 28)))
    members = {g.members: g.fixed for g in groups.groups}
    assert members[("stem.0", "stack1.conv2")] is False  # joined by the first residual add
    assert members[("stack2.conv2", "stack2.shortcut.0")] is False
    assert members[("stack3.conv2", "stack3.shortcut.0")] is False
    assert members[("classifier",)] is True  # the classes are never pruned
    assert members[("stack1.conv1",)] is False
    dw = channel_groups(build_float_graph(DepthwiseNet(), (1, 16, 16)))
    assert {g.members for g in dw.groups} == {("conv", "dw"), ("pw",), ("fc",)}
    with pytest.raises(EdgejpqError, match="fx node 'add'.*concatenation"):
        channel_groups(build_float_graph(ConcatNet(), (1, 8, 8)))


@pytest.mark.unit
def test_exact_cost_on_a_toy_target():
    target = load_target(str(TOY))
    graph = build_float_graph(Toy(), (1, 6, 6))
    plan = PrecisionPlan({"conv": LayerPlan((8, 8, 4, 0)), "fc": LayerPlan((8, 8, 8))})
    cost = _evaluator(graph, (1, 6, 6), target).cost(plan)
    # conv: 3 kept channels × 9 taps; rows of 9 B (8 bit) ×2 and ceil(9×4/8) = 5 B; fc: 3×3 B
    assert cost.weight_bytes == 18 + 5 + 9
    assert cost.constant_bytes == 12 * 3 + 12 * 3
    # base 1000 + 3 layers × 10 + 3 runs × 20 + kernels conv2d_w8 500, conv2d_w4 400, avg_pool 50, fc_w8 300
    assert cost.code_bytes == 1000 + 30 + 60 + 1250
    assert cost.flash_bytes == 32 + 72 + 2340
    # conv, 2 runs (8 and 4 bits): 2×(100 + 5×36 px) + 10×3×36 values + 2 ch×36×9 MACs×2.0 + 1×36×9×3.0
    conv = 2 * (100 + 180) + 1080 + 1296 + 972
    pool = 100 + 3 * 36 * 3  # 3 channels × 36 window taps × 3 cycles
    fc = 100 + 5 + 10 * 3 + 3 * 3 * 2.0
    assert cost.cycles == conv + pool + fc
    assert cost.latency_ms == pytest.approx((conv + pool + fc) / 1e8 * 1e3)
    assert cost.arena_bytes == 108 + 4  # conv output (6×6×3) live with the pooled 3 B (aligned to 4)


@pytest.mark.unit
def test_cost_moves_the_right_way():
    target = load_target("cortex-m4")
    graph = build_float_graph(build_model("zoo:cnn", (1, 12, 12), 10), (1, 12, 12))
    ev = _evaluator(graph, (1, 12, 12), target)
    c8, c4, c2 = (ev.cost(uniform_plan(graph, b)) for b in (8, 4, 2))
    assert c8.weight_bytes > c4.weight_bytes > c2.weight_bytes
    assert c8.arena_bytes == c4.arena_bytes == c2.arena_bytes  # bits do not change activations
    pruned = dict(uniform_plan(graph, 8).layers)
    pruned["features.0"] = LayerPlan((8,) * 8 + (0,) * 8)
    cp = ev.cost(PrecisionPlan(pruned))
    assert cp.weight_bytes < c8.weight_bytes and cp.cycles < c8.cycles and cp.arena_bytes < c8.arena_bytes
    assert cp.flash_bytes < c8.flash_bytes


@pytest.mark.unit
def test_expected_cost_equals_exact_cost_at_a_discrete_plan():
    target = load_target("cortex-m4")
    graph = build_float_graph(build_model("zoo:cnn", (1, 12, 12), 10), (1, 12, 12))
    groups = channel_groups(graph)
    ev = _evaluator(graph, (1, 12, 12), target)
    space = SearchableGraph(graph, groups)
    rng = np.random.default_rng(1)
    plan = PrecisionPlan({l.name: LayerPlan(tuple(int(b) for b in rng.choice([8, 4, 2], l.out_channels)))
                          for l in graph.weighted})
    layers = dict(plan.layers)
    layers["features.3"] = LayerPlan(tuple(0 if i % 3 == 0 else b for i, b in enumerate(plan.layers["features.3"].bits)))
    plan = PrecisionPlan(layers)
    space.freeze(plan)
    exact = ev.cost(plan)
    expected = CostModel(space, target, ev.model(uniform_plan(graph, 8)))()
    assert float(expected.cycles) == pytest.approx(exact.cycles, rel=1e-6)
    assert float(expected.ram_bytes) == pytest.approx(exact.arena_bytes, abs=4)  # a chain: arena = lower bound
    # the expected flash and weights ignore per-row byte padding, which is below one byte per kept row
    rows = sum(lp.kept for lp in plan.layers.values())
    assert exact.flash_bytes - rows <= float(expected.flash_bytes) <= exact.flash_bytes + 1e-3
    assert exact.weight_bytes - rows <= float(expected.weight_bytes) <= exact.weight_bytes + 1e-3
    assert float(expected.flash_bytes - expected.weight_bytes) == pytest.approx(
        exact.flash_bytes - exact.weight_bytes, abs=1e-2)  # constants and code, which have no padding


def _cnn_space(target):
    graph = build_float_graph(build_model("zoo:cnn", (1, 12, 12), 10), (1, 12, 12))
    space = SearchableGraph(graph, channel_groups(graph))
    ev = _evaluator(graph, (1, 12, 12), target)
    return graph, space, ev, CostModel(space, target, ev.model(uniform_plan(graph, 8)))


def _random_plan_pruning_every_group(graph, space, rng) -> PrecisionPlan:
    """Random 2/4/8 bits per channel, with the first channel of every prunable group pruned."""
    layers = {layer.name: [int(b) for b in rng.choice([2, 4, 8], layer.out_channels)] for layer in graph.weighted}
    for g in space.groups.prunable:
        for name in g.members:
            layers[name][0] = 0
    return PrecisionPlan({name: LayerPlan(tuple(bits)) for name, bits in layers.items()})


@pytest.mark.unit
def test_searched_weights_are_exports_weights():
    """The search trains on the weight grid that export writes: every kept channel's fake-quantized
    weights are its integer weights times its exported scale, at each of its bit-widths."""
    graph, space, _, _ = _cnn_space(load_target("cortex-m4"))
    rng = np.random.default_rng(3)
    plan = PrecisionPlan({layer.name: LayerPlan(tuple(int(b) for b in rng.choice([2, 4, 8], layer.out_channels)))
                          for layer in graph.weighted})
    space.freeze(plan)
    _, selections = hard_choices(space, plan)
    state = derive_quant_state(graph, plan, calibrate(graph, np.zeros((4, 1, 12, 12), np.float32)))
    for i, layer in enumerate(graph.weighted):
        searched = space.mixed_weight(i, selections[i].detach()).detach().double()
        scales = torch.from_numpy(state.weight_scales[layer.name])
        exported = torch.from_numpy(quantize_weight_rows(layer.weight.reshape(layer.out_channels, -1).double().numpy(),
                                                         scales.numpy(), np.array(plan.layers[layer.name].bits)))
        assert torch.allclose(searched.reshape(layer.out_channels, -1), exported * scales[:, None], rtol=0, atol=1e-6)


@pytest.mark.unit
def test_learned_weight_steps_start_least_error_and_are_the_steps_export_writes():
    """Fine-tuning starts every kept channel's trained step at its least-error one; export writes the
    trained steps (0 for a pruned channel), and the fake-quantized weights are the integer weights
    times them. The gradients are LSQ's: the weight's passes inside the grid and stops where it
    clips; the step's is (rounded - w/step) inside and the clipped level outside."""
    graph, space, _, _ = _cnn_space(load_target("cortex-m4"))
    rng = np.random.default_rng(5)
    plan = _random_plan_pruning_every_group(graph, space, rng)
    calibration = rng.random((8, 1, 12, 12)).astype(np.float32)
    space.prepare_finetune(plan, calibration)
    least_error = derive_quant_state(graph, plan, calibrate(graph, calibration))
    start = space.learned_weight_scales()
    for layer in graph.weighted:
        assert np.allclose(start[layer.name], least_error.weight_scales[layer.name], rtol=1e-6, atol=0)
    with torch.no_grad():
        for log_step in space.log_steps:
            log_step.add_(torch.from_numpy(rng.normal(0.0, 0.3, log_step.shape)).float())
    state = derive_quant_state(space.trained_graph(), plan, calibrate(graph, calibration), space.learned_weight_scales())
    _, selections = hard_choices(space, plan)
    for i, layer in enumerate(graph.weighted):
        bits = np.array(plan.layers[layer.name].bits)
        scales = state.weight_scales[layer.name]
        assert (scales[bits == 0] == 0).all() and (scales[bits > 0] > 0).all()
        assert not np.allclose(scales, least_error.weight_scales[layer.name])
        searched = space.mixed_weight(i, selections[i].detach()).detach().double().reshape(layer.out_channels, -1)
        exported = quantize_weight_rows(layer.weight.reshape(layer.out_channels, -1).double().numpy(), scales, bits)
        kept = torch.from_numpy(bits > 0)
        assert torch.allclose(searched[kept], torch.from_numpy(exported * scales[:, None])[kept], rtol=1e-6, atol=1e-7)

    w = torch.tensor([[0.3, -0.9, 2.5, 0.05]], requires_grad=True)
    step = torch.tensor([0.5], requires_grad=True)
    out = learned_step_weight(w, step, 2)  # levels -1, 0, 1: w/step = 0.6, -1.8 (clips), 5 (clips), 0.1
    assert out.tolist() == [[0.5, -0.5, 0.5, 0.0]]
    out.sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0, 0.0, 1.0]]
    assert float(step.grad) == pytest.approx((1 - 0.6) - 1 + 1 + (0 - 0.1))


@pytest.mark.unit
def test_fine_tuning_batch_norm_starts_at_the_folded_model_and_exports_exactly_what_it_trained():
    """prepare_finetune(batch_norm=True) puts a batch norm after every convolution (not the linear
    layer) that leaves the model as it was. Training moves the norms' running statistics, gamma and
    beta. In eval the model is exactly its folded graph, `trained_graph()`, the one export
    takes: a space built on that graph with the same weight steps and activation ranges computes the
    same logits, bit for bit."""
    graph, space, _, _ = _cnn_space(load_target("cortex-m4"))
    rng = np.random.default_rng(7)
    plan = _random_plan_pruning_every_group(graph, space, rng)
    x = torch.from_numpy(rng.random((32, 1, 12, 12)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 10, 32))
    plain = SearchableGraph(graph, channel_groups(graph))
    plain.prepare_finetune(plan, x.numpy())
    space.prepare_finetune(plan, x.numpy(), batch_norm=True)
    assert sorted(space.batch_norms) == sorted(l.name.replace(".", "__") for l in graph.weighted if l.kind != "linear")
    space.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(space(x), plain(x), rtol=0, atol=1e-6)

    def state(norm):
        return torch.stack([norm.running_mean, norm.running_var, norm.weight.detach(), norm.bias.detach()])

    start = {key: state(norm).clone() for key, norm in space.batch_norms.items()}
    optimizer = torch.optim.Adam([*space.weight_parameters(), *space.step_parameters(), *space.range_parameters()],
                                 lr=1e-2)
    space.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(space(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, norm in space.batch_norms.items():
        assert (state(norm) != start[key]).any(dim=1).all(), key  # running mean and variance, gamma, beta

    trained = space.trained_graph()
    folded = SearchableGraph(trained, channel_groups(trained))
    folded.prepare_finetune(plan, x.numpy())
    with torch.no_grad():
        for mine, theirs in zip(folded.log_steps, space.log_steps):
            mine.copy_(theirs)
        for key in folded.act_lo:
            folded.act_lo[key].copy_(space.act_lo[key])
            folded.act_hi[key].copy_(space.act_hi[key])
    space.eval()
    folded.eval()
    with torch.no_grad():
        assert torch.equal(space(x), folded(x))


@pytest.mark.unit
def test_distillation_mixes_the_float_models_soft_targets_into_the_task_loss():
    ds = load_dataset("digits")
    graph = build_float_graph(build_model("zoo:cnn", ds.input_shape, ds.num_classes), ds.input_shape)
    target = load_target("cortex-m4")
    ev = _evaluator(graph, ds.input_shape, target)
    trainer = Trainer(ds, target, SearchConfig(distill=0.25), ev, None)
    teacher = torch.from_numpy(predict_float(graph, ds.x_train))
    assert torch.equal(trainer.teacher, teacher)
    index = torch.arange(16)
    ce = torch.nn.functional.cross_entropy(teacher[index], trainer.y[index])
    assert float(trainer.task_loss(teacher[index], index)) == pytest.approx(0.75 * float(ce), rel=1e-6)
    other = teacher[index].flip(1)
    assert float(trainer.task_loss(other, index)) > 0.75 * float(torch.nn.functional.cross_entropy(other, trainer.y[index]))
    assert Trainer(ds, target, SearchConfig(), ev, None).teacher is None
    with pytest.raises(EdgejpqError, match="distill 1.5"):
        SearchConfig(distill=1.5)


@pytest.mark.unit
def test_code_gradient_prices_the_last_channel_of_a_kernel_variant():
    """Kernel code is linked per family × bits: moving the only 8-bit conv channel to 4 bits saves the whole
    conv2d_w8 kernel, and moving one classifier channel onto unused 2 bits costs the fully_connected_w2
    kernel; the expected cost's gradient says so (within a weight run descriptor and row padding)."""
    target = load_target("cortex-m4")
    graph, space, ev, cost_model = _cnn_space(target)
    four = uniform_plan(graph, 4)
    layers = dict(four.layers)
    layers["features.3"] = LayerPlan((8,) + four.layers["features.3"].bits[1:])
    plan = PrecisionPlan(layers)
    keep, sel = hard_choices(space, plan)
    expected = cost_model(keep=keep, probs=sel)
    rows = sum(lp.kept for lp in plan.layers.values())
    assert ev.cost(plan).flash_bytes - rows <= float(expected.flash_bytes.detach()) <= ev.cost(plan).flash_bytes
    expected.flash_bytes.backward()
    j = {bits: space.choices.index(bits) for bits in space.choices}
    conv = sel[space.index["features.3"]].grad[0]
    actual = ev.cost(four).flash_bytes - ev.cost(plan).flash_bytes
    assert actual <= -target.kernel_bytes("conv2d_w8")
    assert float(conv[j[4]] - conv[j[8]]) == pytest.approx(actual, abs=64)
    fc = sel[space.index["classifier"]].grad[0]
    layers = dict(four.layers)
    layers["classifier"] = LayerPlan((2,) + four.layers["classifier"].bits[1:])
    actual = ev.cost(PrecisionPlan(layers)).flash_bytes - ev.cost(four).flash_bytes
    assert actual >= target.kernel_bytes("fully_connected_w2") - 64
    keep, sel = hard_choices(space, four)
    cost_model(keep=keep, probs=sel).flash_bytes.backward()
    fc = sel[space.index["classifier"]].grad[0]
    assert float(fc[j[2]] - fc[j[4]]) == pytest.approx(actual, abs=64)


@pytest.mark.unit
def test_a_closed_kernel_variant_is_never_chosen_and_its_gate_prices_its_code():
    """Closing the 8-bit conv variant's gate takes 8 bits out of every conv layer's choices (hard, soft and
    discrete), not out of the classifier's; an open, used variant's gate carries the gradient of its whole
    kernel (size x sigmoid'), which closing it saves."""
    target = load_target("cortex-m4")
    graph, space, ev, cost_model = _cnn_space(target)
    conv, fc = space.families.index("conv2d"), space.families.index("fully_connected")
    j8 = space.choices.index(8)
    with torch.no_grad():
        for logits in space.bit_logits:
            logits[:, j8] += 5.0  # every channel prefers 8 bits
    space(torch.zeros(2, 1, 12, 12))
    keep, sel = space.last_choices
    cost = cost_model(keep=[k.detach() for k in keep], probs=[s.detach() for s in sel])  # the gate's own path
    cost.flash_bytes.backward()
    gate_grad = float(space.variant_logits.grad[conv, j8])
    sigmoid = torch.sigmoid(torch.tensor(2.0))
    assert gate_grad == pytest.approx(target.kernel_bytes("conv2d_w8") * float(sigmoid * (1 - sigmoid)), rel=1e-3)
    assert float(space.variant_logits.grad[conv, space.choices.index(2)]) == pytest.approx(0.0, abs=1.0)

    with torch.no_grad():
        space.variant_logits[conv, j8] = -1.0
    space(torch.zeros(2, 1, 12, 12))
    _, sel = space.last_choices
    plan = space.discrete_plan()
    probs = space.bit_probabilities()
    for i, layer in enumerate(space.layers):
        is_conv = space.layer_family[i] == conv
        assert bool((sel[i].detach().argmax(dim=1) == j8).all()) is not is_conv, layer.name
        assert (8 in plan.layers[layer.name].bits) is not is_conv, layer.name
        assert (float(probs[i][:, j8].detach().max()) == 0.0) is is_conv, layer.name
    assert space.layer_family[space.index["classifier"]] == fc
    with torch.no_grad():
        space.variant_logits[conv] = torch.tensor([-3.0, -2.0, -1.0])  # all closed: the family keeps its likeliest
    assert space.open_variants()[conv].tolist() == [False, False, True]
    assert set(space.discrete_plan().layers["features.0"].bits) <= {0, 8}


@pytest.mark.unit
def test_search_summary_names_the_kernel_variants_the_plan_links():
    from types import SimpleNamespace

    from edgejpq.cli import _code_rows

    target = load_target("cortex-m4")
    graph, _, ev, _ = _cnn_space(target)
    layers = dict(uniform_plan(graph, 4).layers)
    layers["features.3"] = LayerPlan((8, 0) + layers["features.3"].bits[2:])
    layers["classifier"] = LayerPlan((2,) * len(layers["classifier"].bits))
    model = ev.model(PrecisionPlan(layers))
    result = SimpleNamespace(model=model, cost=model_cost(model, target), variant_exchanges=0)
    flash = SearchConfig(budgets=Budgets(flash_bytes=result.cost.flash_bytes))
    rows = dict(_code_rows(result, flash))
    assert rows["kernel variants"] == "conv2d 4,8-bit; fully_connected 2-bit"
    exchanged = SimpleNamespace(model=model, cost=result.cost, variant_exchanges=1)
    assert dict(_code_rows(exchanged, flash))["kernel variants"] == (
        "conv2d 4,8-bit; fully_connected 2-bit (1 exchange after the search)")
    assert 2 * result.cost.code_bytes > result.cost.flash_bytes  # so the note is due
    assert "keep the variants that fit" in rows["note"]
    weights = SearchConfig(budgets=Budgets(weight_bytes=result.cost.weight_bytes))
    assert "without --flash no budget counts that code" in dict(_code_rows(result, weights))["note"]
    assert "note" not in dict(_code_rows(result, SearchConfig(choices=(4,))))


@pytest.mark.unit
def test_repair_drops_a_kernel_variant_rather_than_the_weights():
    """Several conv channels at 8 bits in a 4-bit plan link the 8-bit conv kernel; a flash budget just above
    the uniform 4-bit plan is met by moving them all to 4 bits (dropping that kernel), not by cutting the
    other channels' weights, which no single channel's gradient would avoid."""
    target = load_target("cortex-m4")
    graph, space, ev, cost_model = _cnn_space(target)
    four = uniform_plan(graph, 4)
    layers = {name: LayerPlan(tuple(8 if name.startswith("features") and i % 4 == 0 else b
                                    for i, b in enumerate(lp.bits))) for name, lp in four.layers.items()}
    plan = PrecisionPlan(layers)
    budget = Budgets(flash_bytes=ev.cost(four).flash_bytes + 100)
    assert ev.cost(plan).flash_bytes > budget.flash_bytes
    repaired, steps = repair(space, plan, budget, ev, cost_model)
    final = ev.cost(repaired)
    assert final.flash_bytes <= budget.flash_bytes
    assert final.weight_bytes >= ev.cost(four).weight_bytes, (steps, repaired.layers)


@pytest.mark.unit
def test_repair_pays_for_a_pinned_variant_without_moving_channels_into_a_closed_one():
    """The exchange's wider move: a uniform 4-bit plan over budget, the 4-bit conv kernel pinned, after a
    search that preferred 2 bits per channel and whose gates closed every 2-bit variant (so the cost
    model prices their code at nothing). Left free, repair pays by moving conv channels back to 2 bits,
    relinking that kernel; with the 2-bit conv kernel closed it prunes instead, and the plan still fits."""
    target = load_target("cortex-m4")
    graph, space, ev, cost_model = _cnn_space(target)
    with torch.no_grad():
        for logits in space.bit_logits:
            logits[:, 0] = 2.0
        space.variant_logits.fill_(-3.0)
        space.variant_logits[:, space.choices.index(4)] = 3.0
    four = uniform_plan(graph, 4)
    conv = space.layer_family[space.index["features.0"]]
    budget = Budgets(flash_bytes=ev.cost(four).flash_bytes - ev.cost(four).weight_bytes // 4)

    def conv_bits(plan: PrecisionPlan) -> set[int]:
        return {b for name, lp in plan.layers.items() if name != "classifier" for b in lp.bits}

    free, _ = repair(space, four, budget, ev, cost_model, pinned=frozenset({(conv, 4)}))
    assert 2 in conv_bits(free) and ev.cost(free).flash_bytes <= budget.flash_bytes
    closed, _ = repair(space, four, budget, ev, cost_model, pinned=frozenset({(conv, 4)}),
                       closed=frozenset({(conv, 2)}))
    assert conv_bits(closed) == {0, 4} and ev.cost(closed).flash_bytes <= budget.flash_bytes


@pytest.mark.host_c
def test_cost_figures_equal_the_generated_c(tmp_path):
    from codegen.generate import generate_sources

    target = load_target("cortex-m4")
    graph = build_float_graph(build_model("zoo:resnet8", (1, 12, 12), 10), (1, 12, 12))
    ev = _evaluator(graph, (1, 12, 12), target)
    rng = np.random.default_rng(2)
    plan = PrecisionPlan({l.name: LayerPlan(tuple(int(b) for b in rng.choice([8, 4, 2], l.out_channels)))
                          for l in graph.weighted})
    model = ev.model(plan)
    cost = model_cost(model, target)
    sources = generate_sources(model, tmp_path / "src")
    objects = []
    for name in (f"{sources.name}_weights.c", f"{sources.name}_model.c"):
        obj = tmp_path / (name + ".o")
        subprocess.run(["cc", "-std=c99", "-O2", "-c", str(tmp_path / "src" / name), "-I", str(tmp_path / "src"),
                        "-o", str(obj)], check=True)
        objects.append(obj)
    symbols = {}
    for obj in objects:
        out = subprocess.run(["nm", "-S", "--size-sort", str(obj)], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4:
                symbols[parts[3]] = int(parts[1], 16)
    weights = sum(size for sym, size in symbols.items() if sym.endswith("_weights"))
    arena = sum(size for sym, size in symbols.items() if "arena" in sym)
    assert weights == cost.weight_bytes
    assert arena == cost.arena_bytes


@pytest.mark.unit
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # each example trains nothing but is not free
@given(seed=st.integers(0, 10_000), flash_frac=st.floats(0.0, 1.0), weights_frac=st.floats(0.0, 1.0),
       ram_frac=st.floats(0.0, 1.0), lat_frac=st.floats(0.0, 1.0),
       which=st.sets(st.sampled_from(["flash", "weights", "ram", "latency"]), min_size=1), pin=st.booleans())
@example(seed=1150, flash_frac=0.4542861304445217, weights_frac=0.0, ram_frac=2.2250738585e-313, lat_frac=0.0,
         which={"ram", "latency", "flash"}, pin=False)  # the gradient promised no saving while latency was still missed
@example(seed=7, flash_frac=0.0, weights_frac=0.3, ram_frac=0.0, lat_frac=0.0, which={"weights"}, pin=True)
def test_repaired_plan_satisfies_every_budget(seed, flash_frac, weights_frac, ram_frac, lat_frac, which, pin):
    """...and a pinned layer (the input layer at 8 bits, as run_search pins it) keeps its width throughout."""
    target = load_target("cortex-m4")
    graph = _REPAIR["graph"]
    ev = _REPAIR["evaluator"]
    pinned = {name: 8 for name in graph.input_layers} if pin else {}
    space = SearchableGraph(graph, _REPAIR["groups"], pinned=pinned)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for logits in [*space.keep_logits, *space.bit_logits]:
            logits.copy_(torch.randn(logits.shape, generator=g) * 2)
    start = space.discrete_plan()
    low, high = ev.cost(minimal_plan(graph, space.groups, space.choices, pinned)), ev.cost(start)
    fracs = {"flash": flash_frac, "weights": weights_frac, "ram": ram_frac, "latency": lat_frac}
    values = {m: metric_value(low, m) + fracs[m] * (metric_value(high, m) - metric_value(low, m)) for m in which}
    budgets = Budgets(flash_bytes=int(values["flash"]) + 1 if "flash" in values else None,
                      weight_bytes=int(values["weights"]) + 1 if "weights" in values else None,
                      ram_bytes=int(values["ram"]) + 4 if "ram" in values else None,
                      latency_ms=values.get("latency", 0) * 1.0001 if "latency" in values else None)
    cost_model = CostModel(space, target, ev.model(uniform_plan(graph, 8)))
    plan, _ = repair(space, start, budgets, ev, cost_model)
    repaired = ev.cost(plan)
    for metric, budget in budgets.items():
        assert metric_value(repaired, metric) <= budget, metric
    filled, _ = fill(space, plan, budgets, ev, cost_model, max_steps=20)
    final = ev.cost(filled)
    for metric, budget in budgets.items():
        assert metric_value(final, metric) <= budget, metric
    assert kernel_names(ev.model(filled)) <= kernel_names(ev.model(plan))  # fill links no new kernel
    assert final.weight_bytes >= repaired.weight_bytes
    for name, bits in pinned.items():
        for p in (start, plan, filled):
            assert set(p.layers[name].bits) <= {0, bits}, (name, p.layers[name])


@pytest.mark.unit
def test_sweep_points_take_a_weights_budget_beside_the_others():
    from edgejpq.cli import parse_size
    from edgejpq.search.sweep import sweep_points

    points = sweep_points("40KiB", "4KiB,6KiB", None, None, "0", parse_size)
    assert [p.label for p in points] == ["weights-4KiB", "weights-6KiB"]
    assert [p.budgets for p in points] == [Budgets(flash_bytes=40 * 1024, weight_bytes=w * 1024) for w in (4, 6)]
    assert points[0].budgets.items() == [("flash", 40 * 1024.0), ("weights", 4 * 1024.0)]
    with pytest.raises(EdgejpqError, match="sweep one option at a time: --flash and --weights"):
        sweep_points("40KiB,48KiB", "4KiB,6KiB", None, None, "0", parse_size)


@pytest.mark.unit
def test_input_layers_are_the_weighted_layers_reading_the_model_input():
    resnet = build_float_graph(build_model("zoo:resnet8", (1, 8, 8), 10), (1, 8, 8))
    assert resnet.input_layers == ("stem.0",)
    two = build_float_graph(ConcatNet(), (1, 8, 8))  # two branches read the input
    assert two.input_layers == ("a", "b")

    class PoolFirst(nn.Module):  # a pool between the input and the first convolution
        def __init__(self) -> None:
            super().__init__()
            self.pool, self.conv, self.fc = nn.MaxPool2d(2), nn.Conv2d(1, 4, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(self.pool(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    assert build_float_graph(PoolFirst(), (1, 8, 8)).input_layers == ("conv",)


@pytest.mark.unit
def test_a_pinned_layer_takes_its_width_in_every_sample_and_plan():
    """Its kept channels run, sample and discretize at the pinned width whatever its logits and its family's
    gate say, and its pruning stays searched; a width outside the searched ones is refused."""
    graph = _REPAIR["graph"]
    space = SearchableGraph(graph, _REPAIR["groups"], pinned={"stem.0": 8})
    i = space.index["stem.0"]
    with torch.no_grad():
        space.bit_logits[i].copy_(torch.tensor([5.0, 0.0, -5.0]))  # wants 2 bits
        space.variant_logits.fill_(-3.0)  # every variant gate closed
        space.keep_logits[space.groups.layer_group["stem.0"]][:3] = -4.0
    space.train()
    space.explore = True
    assert torch.equal(space.bit_probabilities()[i], space._one_hot_bits(torch.full((16,), 8)))
    assert bool((space._selections()[i].detach().argmax(dim=1) == 2).all())
    plan = space.discrete_plan()
    assert set(plan.layers["stem.0"].bits) == {0, 8} and plan.layers["stem.0"].bits[:3] == (0, 0, 0)
    assert space.open_variants()[space.layer_family[i], 2]
    with pytest.raises(EdgejpqError, match=r"layer stem.0: pinned at 8 bits, which are not among the bit-widths "
                                           r"searched \(2,4\)"):
        SearchableGraph(graph, _REPAIR["groups"], choices=(2, 4), pinned={"stem.0": 8})


@pytest.mark.unit
def test_fill_spends_the_budget_the_search_left():
    """A 2-bit plan with half its channels pruned, under a budget that holds the uniform 4-bit plan: fill
    re-keeps channels and raises bit-widths to variants already linked while the budget holds."""
    target = load_target("cortex-m4")
    graph, space, ev, cost_model = _cnn_space(target)
    two = uniform_plan(graph, 2)
    start = PrecisionPlan({name: LayerPlan(tuple(0 if name != "classifier" and i % 2 else b
                                                 for i, b in enumerate(lp.bits))) for name, lp in two.layers.items()})
    layers = dict(start.layers)
    layers["features.3"] = LayerPlan((4,) + start.layers["features.3"].bits[1:])  # links conv2d_w4
    start = PrecisionPlan(layers)
    budget = Budgets(flash_bytes=ev.cost(uniform_plan(graph, 4)).flash_bytes)
    before = ev.cost(start)
    assert before.flash_bytes < budget.flash_bytes - 4000
    filled, steps = fill(space, start, budget, ev, cost_model)
    after = ev.cost(filled)
    assert steps > 0 and after.flash_bytes <= budget.flash_bytes
    # every conv channel kept at 4 bits (which drops the 2-bit conv kernel); the classifier stays at 2 bits,
    # the only fully connected variant linked
    assert all(set(lp.bits) == {4} for name, lp in filled.layers.items() if name != "classifier"), filled.layers
    assert filled.layers["classifier"] == start.layers["classifier"]
    assert kernel_names(ev.model(filled)) == kernel_names(ev.model(start)) - {"conv2d_w2"}
    assert fill(space, start, Budgets(), ev, cost_model) == (start, 0)


@pytest.mark.unit
def test_exchange_links_the_kernel_variant_the_judge_prefers_within_the_budget():
    """A uniform 2-bit plan under a budget that holds the uniform 4-bit plan: fill cannot link the 4-bit conv
    kernel, the exchange can. It tries whole-family moves, each repaired to the budget (every plan judged
    fits it), and keeps one only when the judge scores it better than the plan; a judge that prefers the
    plan leaves it alone, and without budgets nothing is tried."""
    target = load_target("cortex-m4")
    graph, space, ev, cost_model = _cnn_space(target)
    start = uniform_plan(graph, 2)
    budget = Budgets(flash_bytes=ev.cost(uniform_plan(graph, 4)).flash_bytes)
    assert fill(space, start, budget, ev, cost_model)[0] == start  # every channel kept, no wider variant linked
    judged: list[PrecisionPlan] = []

    def conv_bits(plan: PrecisionPlan) -> int:
        return sum(sum(lp.bits) for name, lp in plan.layers.items() if name != "classifier")

    def prefers_wide_convs(plan: PrecisionPlan) -> float:
        assert ev.cost(plan).flash_bytes <= budget.flash_bytes
        judged.append(plan)
        return -float(conv_bits(plan))

    exchanged, count = exchange_variants(space, start, budget, ev, cost_model, prefers_wide_convs)
    assert count >= 1 and len(judged) > 2
    assert ev.cost(exchanged).flash_bytes <= budget.flash_bytes
    assert judged[0] == start and conv_bits(exchanged) > conv_bits(start)
    assert kernel_names(ev.model(exchanged)) & {"conv2d_w4", "conv2d_w8"}, exchanged.layers
    assert exchange_variants(space, start, budget, ev, cost_model, lambda plan: float(plan != start)) == (start, 0)
    assert exchange_variants(space, start, Budgets(), ev, cost_model, prefers_wide_convs) == (start, 0)

    # a family mixing 2 and 4 bits can also be merged onto one of its linked widths, unlinking the other
    mixed = PrecisionPlan({name: LayerPlan(tuple(4 if name == "features.0" else 2 for _ in lp.bits))
                           for name, lp in start.layers.items()})

    def conv_variants(plan: PrecisionPlan) -> set[str]:
        return {k for k in kernel_names(ev.model(plan)) if k.startswith("conv2d_w")}

    assert conv_variants(mixed) == {"conv2d_w2", "conv2d_w4"}
    merged, count = exchange_variants(space, mixed, budget, ev, cost_model, lambda plan: float(len(conv_variants(plan))))
    assert count >= 1 and len(conv_variants(merged)) == 1
    assert ev.cost(merged).flash_bytes <= budget.flash_bytes


@pytest.mark.unit
def test_exchange_moves_every_family_at_a_width_together():
    """A uniform 2-bit plan whose judge gains only when no layer is left at 2 bits: moving the conv family
    alone or the classifier's alone leaves 2-bit channels and scores as the plan does, so only the move of
    every family at 2 bits at once, repaired to the budget, is an exchange."""
    target = load_target("cortex-m4")
    graph, space, ev, cost_model = _cnn_space(target)
    start = uniform_plan(graph, 2)
    budget = Budgets(flash_bytes=ev.cost(uniform_plan(graph, 4)).flash_bytes)
    judged: list[PrecisionPlan] = []

    def no_two_bits(plan: PrecisionPlan) -> float:
        judged.append(plan)
        return float(any(b == 2 for lp in plan.layers.values() for b in lp.bits))

    exchanged, count = exchange_variants(space, start, budget, ev, cost_model, no_two_bits)
    assert count == 1 and no_two_bits(exchanged) == 0.0
    # several families, each at 2 bits: no single family's move clears every 2-bit channel
    assert len({space.layer_family[space.index[name]] for name in start.layers}) > 1
    assert ev.cost(exchanged).flash_bytes <= budget.flash_bytes
    assert any(set(lp.bits) <= {0, 2} for lp in judged[1].layers.values())  # a single family's move first


def _digits_space():
    """Digits, an untrained CNN's search space with its noise on (as mid-search), target and evaluator."""
    ds = load_dataset("digits")
    graph = build_float_graph(build_model("zoo:cnn", ds.input_shape, ds.num_classes), ds.input_shape)
    target = load_target("cortex-m4")
    space = SearchableGraph(graph, channel_groups(graph))
    space.explore = True
    return ds, graph, space, target, _evaluator(graph, ds.input_shape, target)


@pytest.mark.unit
def test_plan_loss_scores_the_searched_weights_as_the_plan_and_leaves_the_search_as_it_was():
    ds, graph, space, target, evaluator = _digits_space()
    trainer = Trainer(ds, target, SearchConfig(), evaluator, None)
    eight, two = uniform_plan(graph, 8), uniform_plan(graph, 2)
    loss = trainer.plan_loss(space, eight)
    assert space.explore and space.training and space.frozen_keep is None and space.frozen_bits is None
    x, y = trainer.x[trainer.judge_index], trainer.y[trainer.judge_index]
    expected = nn.functional.cross_entropy(torch.from_numpy(predict_float(graph, x.numpy())), y)
    assert loss == pytest.approx(float(expected), rel=1e-4)  # 8 bits of the float model: close to it
    assert trainer.plan_loss(space, two) != loss and trainer.plan_loss(space, eight) == loss


@pytest.mark.unit
def test_trial_loss_trains_the_plan_briefly_then_restores_the_search():
    ds, graph, space, target, evaluator = _digits_space()
    before = [p.detach().clone() for p in space.parameters()]
    two = uniform_plan(graph, 2)
    untrained = Trainer(ds, target, SearchConfig(trial_batches=0), evaluator, None).trial_loss(space, two)
    trainer = Trainer(ds, target, SearchConfig(trial_batches=20), evaluator, None)
    trained = trainer.trial_loss(space, two)
    assert untrained == trainer.plan_loss(space, two)  # no steps: the searched weights as they are
    assert trained < untrained  # 20 steps at 2 bits recover part of what rounding lost
    assert trainer.trial_loss(space, two) == trained  # the same batches every time
    assert all(torch.equal(a, b) for a, b in zip(before, space.parameters()))
    assert all(p.grad is None for p in space.parameters())
    assert space.explore and space.training and space.frozen_keep is None and space.frozen_bits is None


def _repair_fixture():
    graph = build_float_graph(build_model("zoo:resnet8", (1, 8, 8), 10), (1, 8, 8))
    return {"graph": graph, "groups": channel_groups(graph),
            "evaluator": _evaluator(graph, (1, 8, 8), load_target("cortex-m4"))}


_REPAIR = _repair_fixture()


@pytest.mark.unit
def test_unreachable_budget_names_it_and_the_smallest_figure():
    ds = load_dataset("digits")
    graph = build_float_graph(build_model("zoo:cnn", ds.input_shape, ds.num_classes), ds.input_shape)
    with pytest.raises(EdgejpqError, match=r"the flash budget of 1\.0 KiB \(1024 B\) cannot be met: the smallest "
                                           r"plan reachable .* needs .*KiB"):
        run_search(graph, ds, load_target("cortex-m4"), SearchConfig(budgets=Budgets(flash_bytes=1024)))
    with pytest.raises(EdgejpqError, match=r"the ram budget .* cannot be met: the uniform 8-bit model needs"):
        run_search(graph, ds, load_target("cortex-m4"),
                   SearchConfig(method="uniform", budgets=Budgets(ram_bytes=64)))


@pytest.mark.unit
def test_two_stage_pruning_removes_the_smallest_channels_of_every_group_alike():
    torch.manual_seed(0)
    graph = build_float_graph(build_model("zoo:resnet8", (1, 8, 8), 10), (1, 8, 8))
    space = SearchableGraph(graph, channel_groups(graph), choices=(8,))
    small = {}
    with torch.no_grad():
        for g in space.groups.prunable:  # a quarter of each group's channels made small in every member
            small[g.index] = set(torch.randperm(g.channels, generator=torch.Generator().manual_seed(g.index))
                                 [: g.channels // 4].tolist())
            for name in g.members:
                space.weights[space.index[name]][sorted(small[g.index])] *= 0.01
    target = load_target("cortex-m4")
    ev = _evaluator(graph, (1, 8, 8), target)
    full = ev.cost(uniform_plan(graph, 8)).flash_bytes
    budget = Budgets(flash_bytes=int(0.8 * full))
    plan = magnitude_pruned_plan(space, budget, ev)
    assert ev.cost(plan).flash_bytes <= budget.flash_bytes
    fractions = []
    for g in space.groups.prunable:
        bits = plan.layers[g.members[0]].bits
        pruned = {c for c, b in enumerate(bits) if b == 0}
        assert pruned and pruned <= small[g.index], g.members  # the small ones go, and only they
        assert set(bits) <= {0, 8}
        fractions.append(len(pruned) / g.channels)
    assert max(fractions) - min(fractions) <= 0.1  # no group emptied because its channels were cheap


@pytest.fixture(scope="module")
def digits_float():
    """A float CNN trained on digits, its graph, the target and its uniform 8-bit cost."""
    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = build_model("zoo:cnn", ds.input_shape, ds.num_classes)
    train_float(model, ds, epochs=6, lr=1e-2, batch_size=32)
    graph = build_float_graph(model, ds.input_shape)
    target = load_target("cortex-m4")
    full = Evaluator(graph, calibrate(graph, ds.x_train[:256]), target).cost(uniform_plan(graph, 8))
    return ds, graph, target, full


@pytest.mark.slow
def test_two_stage_prunes_to_the_budget_and_keeps_accuracy(digits_float):
    ds, graph, target, full = digits_float
    budget = Budgets(flash_bytes=int(0.75 * full.flash_bytes))
    result = run_search(graph, ds, target, SearchConfig(method="two-stage", search_epochs=2, finetune_epochs=1,
                                                        batch_size=32, budgets=budget))
    assert result.cost.flash_bytes <= budget.flash_bytes
    assert any(lp.kept < len(lp.bits) for lp in result.plan.layers.values())  # it pruned
    assert result.accuracy_integer >= result.accuracy_float - 0.08
    assert [r.stage for r in result.history] == ["prune", "precision", "finetune"]


@pytest.fixture(scope="module")
def digits_search(digits_float):
    ds, graph, target, full = digits_float
    budget = Budgets(flash_bytes=int(0.6 * full.flash_bytes))
    result = run_search(graph, ds, target, SearchConfig(search_epochs=3, finetune_epochs=1, batch_size=32,
                                                        budgets=budget, pin_input=True))
    return ds, graph, target, budget, result


@pytest.mark.slow
def test_short_search_meets_budget_and_keeps_accuracy(digits_search):
    """...with the input layer pinned at 8 bits (SearchConfig(pin_input=True))."""
    ds, graph, _, budget, result = digits_search
    assert result.cost.flash_bytes <= budget.flash_bytes
    assert result.accuracy_integer >= result.accuracy_float - 0.08
    assert abs(result.accuracy_integer - result.accuracy_fake_quant) <= 0.02
    assert graph.input_layers and all(set(result.plan.layers[name].bits) <= {0, 8} for name in graph.input_layers)
    stages = [r.stage for r in result.history]
    assert stages == ["search"] * 3 + ["finetune"]


@pytest.mark.slow
def test_search_keeps_to_the_allowed_bit_widths(digits_float):
    ds, graph, target, full = digits_float
    budget = Budgets(flash_bytes=int(0.8 * full.flash_bytes))
    result = run_search(graph, ds, target, SearchConfig(search_epochs=1, finetune_epochs=0, batch_size=32,
                                                        budgets=budget, choices=(4, 8), pin_input=True))
    used = {bits for lp in result.plan.layers.values() for bits in lp.bits}
    assert used <= {0, 4, 8} and 4 in used, used
    assert result.cost.flash_bytes <= budget.flash_bytes
    assert graph.input_layers and all(set(result.plan.layers[name].bits) <= {0, 8} for name in graph.input_layers)


@pytest.mark.slow
def test_search_to_a_weights_budget_leaves_the_code_out_of_it(digits_float):
    """A budget on the packed weights alone: met by the exported model, with the kernels' code not counted (the
    flash ends well above the weights budget), and recorded in the provenance."""
    ds, graph, target, full = digits_float
    budget = Budgets(weight_bytes=int(0.3 * full.weight_bytes))
    result = run_search(graph, ds, target, SearchConfig(search_epochs=1, finetune_epochs=0, batch_size=32,
                                                        budgets=budget))
    assert result.model.weight_bytes == result.cost.weight_bytes <= budget.weight_bytes
    assert result.cost.flash_bytes > budget.weight_bytes + result.cost.code_bytes // 2
    assert result.model.provenance["config"]["budgets"] == {"flash_bytes": None, "weight_bytes": budget.weight_bytes,
                                                            "ram_bytes": None, "latency_ms": None}


@pytest.mark.slow
def test_hard_and_soft_models_agree_after_a_short_search():
    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = build_model("zoo:cnn", ds.input_shape, ds.num_classes)
    train_float(model, ds, epochs=6, lr=1e-2, batch_size=32)
    graph = build_float_graph(model, ds.input_shape)
    target = load_target("cortex-m4")
    from edgejpq.search.run import Trainer

    config = SearchConfig(search_epochs=4, batch_size=32, strength=1.0)
    ev = Evaluator(graph, calibrate(graph, ds.x_train[:256]), target)
    space = SearchableGraph(graph, channel_groups(graph))
    trainer = Trainer(ds, target, config, ev, None)
    full = ev.cost(uniform_plan(graph, 8))
    trainer.reference = {m: metric_value(full, m) for m in ("flash", "ram", "latency")}
    trainer.run(space, "search", 4, search=True, cost_model=CostModel(space, target, ev.model(uniform_plan(graph, 8))))
    x = torch.from_numpy(ds.x_test)
    with torch.no_grad():
        hard = space(x).argmax(1)
        space.soft = True
        soft = space(x).argmax(1)
    assert float((hard == soft).float().mean()) >= 0.95
    assert space.discrete_plan() != uniform_plan(graph, 8)  # the strength really moved the plan


@pytest.mark.slow
def test_searched_plan_exports_and_is_bit_exact_on_the_host(digits_search, tmp_path):
    from edgejpq.emulate.host import emulate_host
    from edgejpq.quant.integerize import quantize_input

    ds, _, _, _, result = digits_search
    inputs = quantize_input(result.model, ds.x_test)
    emulation = emulate_host(result.model, inputs, tmp_path)
    assert emulation.bit_exact, emulation.mismatch
    accuracy = float((emulation.outputs.reshape(len(inputs), -1).argmax(1) == ds.y_test).mean())
    assert accuracy == pytest.approx(result.accuracy_integer)


def _fake_quant_activation_by_autograd(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The same function written with plain autograd ops (the definition the fused node must match)."""
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp(hi - lo, min=1e-8) / 255.0
    zero_point = torch.clamp(torch.round(-128 - lo.detach() / scale.detach()), -128, 127)
    clamped = torch.minimum(torch.maximum(x, (-128 - zero_point) * scale), (127 - zero_point) * scale)
    q = torch.clamp(torch.round(x / scale) + zero_point, -128, 127)
    return clamped + ((q - zero_point) * scale - clamped).detach()


@pytest.mark.unit
@given(st.floats(-3.0, 0.5), st.floats(-0.5, 4.0), st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_fused_activation_fake_quant_matches_autograd_definition(lo: float, hi: float, seed: int) -> None:
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(seed)) * 2
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1))
    grads = []
    for fn in (fake_quant_activation, _fake_quant_activation_by_autograd):
        xx = x.clone().requires_grad_(True)
        lo_t = torch.tensor(lo, requires_grad=True)
        hi_t = torch.tensor(hi, requires_grad=True)
        y = fn(xx, lo_t, hi_t)
        (y * upstream).sum().backward()
        grads.append((y.detach(), xx.grad, lo_t.grad, hi_t.grad))
    fused, plain = grads
    torch.testing.assert_close(fused[0], plain[0], rtol=0, atol=1e-6)  # the same grid point
    for a, b in zip(fused[1:], plain[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
