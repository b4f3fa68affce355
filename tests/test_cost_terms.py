"""The latency table's kernel quantities (latency.kernel_cycles, edgejpq.cost.model.kernel_counts).

Each quantity counts a part of the DSP kernels' loops (firmware_templates/kernels/dsp/); these tests
check that the counts follow the kernels' structure (they move the right way with the plan), that the
target schema refuses a misspelt one naming the key, and that the differentiable expectation at a
hard plan equals the exact cost of that plan's export with every quantity priced.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from edgejpq.calibrate import conv1d_case, conv_case, fc_case, kernel_model, mixed_case, pool_case
from edgejpq.cost.model import Geometry, kernel_counts, model_cost, slow_requantization
from edgejpq.cost.target import KERNEL_QUANTITIES, Latency, load_target, validate_target
from edgejpq.errors import EdgejpqError
from edgejpq.graph import build_float_graph
from edgejpq.plan import LayerPlan, PrecisionPlan, uniform_plan
from edgejpq.resources import targets_dir
from edgejpq.search.cost import CostModel
from edgejpq.search.groups import channel_groups
from edgejpq.quant.integerize import calibrate
from edgejpq.search.run import Evaluator
from edgejpq.search.space import SearchableGraph
from edgejpq.zoo import build_model


def _priced(target):
    """`target` with every kernel quantity costing something (distinct, so a missed count shows)."""
    table = {kind: {q: 3.0 + 1.7 * i + 0.3 * j for j, q in enumerate(qs)} for i, (kind, qs) in
             enumerate(KERNEL_QUANTITIES.items())}
    return replace(target, latency=replace(target.latency, kernel_cycles=table))


@pytest.mark.unit
def test_depthwise_counts_follow_the_eight_channel_passes() -> None:
    g = Geometry(8, 8, 8, 8, 3, 3, 1, 1, 1, 1)
    eight, nine = (kernel_counts("depthwise_conv2d", g, [(8, n)], n) for n in (8, 9))
    assert eight["pass"] == 1 and nine["pass"] == 2  # a ninth channel opens a second pass
    assert nine["pass_row"] == 2 * eight["pass_row"] == 16 and nine["pass_plane"] == 2 * eight["pass_plane"]
    assert eight["single_input"] == 0 and nine["single_input"] == 1 * 8 * 8  # channel 9 converted byte by byte
    assert eight["quad_input"] == 8 * 8 * 8 and nine["quad_input"] == 8 * 8 * 8
    assert eight["generic_tap"] == 0 and eight["odd_row"] == 0  # 3x3 stride 1, even rows: the assembly path
    odd = kernel_counts("depthwise_conv2d", Geometry(7, 7, 7, 7, 3, 3, 1, 1, 1, 1), [(8, 8)], 8)
    assert odd["odd_row"] == 8 * 7
    strided = kernel_counts("depthwise_conv2d", Geometry(8, 8, 4, 4, 3, 3, 2, 2, 1, 1), [(8, 8)], 8)
    assert strided["generic_tap"] == 8 * 16 * 3 * 4 and strided["generic_window_row"] == 8 * 16 * 3
    assert strided["input_row"] == 1 * 9  # rows -1..7, each filled once
    # two runs of 4 channels: two calls, two passes, where one run of 8 makes one
    split = kernel_counts("depthwise_conv2d", g, [(8, 4), (4, 4)], 8)
    assert split["pass"] == 2 and split["channel_row"] == eight["channel_row"]


@pytest.mark.unit
def test_first_layer_on_the_depthwise_machinery_converts_its_one_plane_per_pass() -> None:
    g = Geometry(28, 28, 14, 14, 3, 3, 2, 2, 1, 1)
    counts = kernel_counts("depthwise_conv2d", g, [(8, 16)], 16, 9, conv1=True)
    assert counts["pass"] == 2 and counts["quad_input"] == 0
    assert counts["single_input"] == 2 * 28 * 28  # the one input plane, once per pass, not once per channel
    as_depthwise = kernel_counts("depthwise_conv2d", g, [(8, 16)], 16, 9)
    assert as_depthwise["quad_input"] == 16 * 28 * 28


@pytest.mark.unit
def test_im2col_counts_per_weight_run() -> None:
    g = Geometry(8, 8, 8, 8, 3, 3, 1, 1, 1, 1)
    one = kernel_counts("conv2d", g, [(8, 16)], 16, 72)
    three = kernel_counts("conv2d", g, [(8, 5), (4, 6), (2, 5)], 16, 72)
    assert one["pixel_pair"] == 32 and three["pixel_pair"] == 3 * 32  # every run redoes the im2col
    assert one["sub_byte_column"] == 0 and three["sub_byte_column"] == 2 * 32 * 72
    assert one["odd_w8_mac"] == 0 and three["odd_w8_mac"] == 64 * 72  # 5 channels: the last one as a pair
    assert kernel_counts("fully_connected", Geometry(), [(8, 7)], 7, 64)["single_w8_mac"] == 3 * 64


@pytest.mark.unit
def test_portable_kernels_pay_only_the_in_bounds_taps() -> None:
    # ejq_conv2d_impl.h visits a window's in-bounds taps only; the DSP kernels multiply the zero padding too
    g = Geometry(4, 4, 4, 4, 3, 3, 1, 1, 1, 1)
    assert g.window_taps == 10 * 10  # rows: 2 + 3 + 3 + 2 per output row, the same per column
    portable = kernel_counts("conv2d", g, [(8, 8)], 8, 9 * 8, skips_padding=True)
    assert portable["window_mac"] == 100 * 8 and "window_mac" not in kernel_counts("conv2d", g, [(8, 8)], 8, 72)
    target = _priced(load_target("cortex-m3"))
    model = kernel_model(conv_case("conv2d", (4, 4, 8), 8, 8))
    cost = model_cost(model, target).layers[-1].cycles
    full = model_cost(model, replace(target, kernels="dsp")).layers[-1].cycles  # same table, padding paid
    assert full - cost == pytest.approx((16 * 72 - 100 * 8) * 8 * target.cycles_per_mac("conv2d", 8), rel=1e-9)


@pytest.mark.unit
def test_slow_requantization_matches_the_kernels_fast_path_condition() -> None:
    # ejq_requant_table: fast when -23 <= shift <= -1 and multiplier > 2^30
    flags = slow_requantization([1 << 30 | 1, 1 << 30 | 1, 1 << 30, 1 << 30 | 1, 1 << 30 | 1], [-1, 0, -3, -23, -24])
    assert flags.tolist() == [False, True, True, False, True]
    target = _priced(load_target("cortex-m4"))
    fast, slow = (model_cost(kernel_model(conv_case("conv2d", (8, 8, 16), 16, 8, slow=n)), target) for n in (0, 8))
    per = target.kernel_quantity_cycles("conv2d", "slow_value")
    assert slow.cycles - fast.cycles == pytest.approx(per * 8 * 64, rel=1e-9)


@pytest.mark.unit
def test_exact_cost_prices_every_quantity_of_a_one_layer_model() -> None:
    """model_cost of a calibration case's model equals the fit's formula on that case (calibrate and the
    cost model count the same quantities)."""
    from edgejpq.calibrate import LatencyFit

    target = _priced(load_target("cortex-m4"))
    lat = target.latency
    fit = LatencyFit(
        cycles_per_mac_table={k: dict(getattr(lat.cycles_per_mac, k)) for k in
                              ("conv2d", "pointwise_conv2d", "depthwise_conv2d", "fully_connected")},
        per_layer_overhead_cycles=lat.per_layer_overhead_cycles,
        per_output_pixel_overhead_cycles=lat.per_output_pixel_overhead_cycles,
        per_output_channel_overhead_cycles=lat.per_output_channel_overhead_cycles,
        per_input_element_cycles=dict(lat.per_input_element_cycles), per_channel_cycles=dict(lat.per_channel_cycles),
        ungrouped_cycles_per_mac=dict(lat.ungrouped_cycles_per_mac),
        sub_byte_output_value_cycles=dict(lat.sub_byte_output_value_cycles),
        per_window_row_cycles=lat.per_window_row_cycles,
        per_gathered_input_element_cycles=lat.per_gathered_input_element_cycles,
        elementwise_cycles_per_element=dict(lat.elementwise_cycles_per_element), kernel_cycles=lat.kernel_cycles)
    cases = [conv_case("depthwise_conv2d", (7, 7, 13), 0, 4, slow=3), conv_case("conv2d", (28, 28, 1), 16, 2, stride=2),
             conv1d_case(40, 1, 32, 8, 5), conv_case("pointwise_conv2d", (5, 5, 32), 17, 8, slow=4),
             mixed_case("conv2d", (6, 6, 8), ((2, 3), (8, 3), (4, 1), (8, 1), (2, 6))), fc_case(64, 7, 8, slow=2),
             pool_case("avg", (6, 6, 24), 6, 6)]
    for case in cases:
        case = replace(case, kernels="dsp")
        assert model_cost(kernel_model(case), target).layers[-1].cycles == pytest.approx(fit.predict(case), rel=1e-9)


@pytest.mark.unit
def test_schema_refuses_an_unknown_kernel_quantity() -> None:
    data = yaml.safe_load((targets_dir() / "cortex-m4.yaml").read_text())
    data["latency"]["kernel_cycles"] = {"depthwise_conv2d": {"passes": 3.0}}
    with pytest.raises(EdgejpqError, match=r"key latency\.kernel_cycles\.depthwise_conv2d\.passes: unknown quantity"):
        validate_target(data, "t.yaml")
    data["latency"]["kernel_cycles"] = {"matmul": {"value": 3.0}}
    with pytest.raises(EdgejpqError, match=r"key latency\.kernel_cycles\.matmul: unknown kernel kind"):
        validate_target(data, "t.yaml")
    data["latency"]["kernel_cycles"] = {"pool": {"output": -1.0}}
    with pytest.raises(EdgejpqError, match=r"key latency\.kernel_cycles\.pool\.output"):
        validate_target(data, "t.yaml")
    assert "kernel_cycles" in Latency.__dataclass_fields__


@pytest.mark.unit
@pytest.mark.parametrize("name, shape, target_name", [("mobilenet", (1, 16, 16), "cortex-m4"),
                                                      ("cnn1d", (1, 24), "cortex-m4"),
                                                      ("mobilenet", (1, 8, 8), "cortex-m3")])
def test_expected_cost_equals_exact_cost_with_kernel_quantities(name: str, shape: tuple[int, ...],
                                                                target_name: str) -> None:
    """Depthwise passes, first layers on the depthwise machinery, runs, odd 8-bit channels, global pools,
    in-bounds taps (portable): the expectation at a hard plan equals the exact cost of that plan's export,
    the slow-requantization channels included (flags per channel and bit-width from the fixed ranges)."""
    target = _priced(load_target(target_name))
    torch.manual_seed(0)
    net = build_model(f"zoo:{name}", shape, 10).eval()
    with torch.no_grad():  # random weights, zero biases (as bench/cost_fidelity.py: a random bias may not fit int32)
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                module.bias.zero_()
    graph = build_float_graph(net, shape)
    x = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    ev = Evaluator(graph, calibrate(graph, x), target)
    space = SearchableGraph(graph, channel_groups(graph))
    rng = np.random.default_rng(3)
    plan = PrecisionPlan({l.name: LayerPlan(tuple(int(b) for b in rng.choice([8, 4, 2], l.out_channels)))
                          for l in graph.weighted})
    space.freeze(plan)
    exact = ev.cost(plan)
    reference = ev.model(uniform_plan(graph, 8))
    model = CostModel(space, target, reference, ev.ranges)
    slow = sum(int(slow_requantization(exact_model.arrays[f"{op.name}.multiplier"],
                                       exact_model.arrays[f"{op.name}.shift"]).sum())
               for exact_model in [ev.model(plan)] for op in exact_model.ops if f"{op.name}.multiplier" in exact_model.arrays)
    assert float(model().cycles) == pytest.approx(exact.cycles, rel=1e-6)
    # the slow-path flags follow each channel's bits (random weights: some channels at 2 bits take it)
    assert slow > 0 or name == "cnn1d"
    # and the uniform plan the search starts from
    plan8 = uniform_plan(graph, 8)
    space.freeze(plan8)
    assert float(model().cycles) == pytest.approx(ev.cost(plan8).cycles, rel=1e-6)
