"""fx lowering, precision plans and post-training export against the float / fake-quant model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgejpq.artifact import Conv2D, FullyConnected, load_model, save_model
from edgejpq.cost.memory import activation_lower_bound, greedy_baseline_bytes
from edgejpq.errors import EdgejpqError
from edgejpq.graph import build_float_graph
from edgejpq.plan import LayerPlan, PrecisionPlan, load_plan, uniform_plan
from edgejpq.quant.integerize import (CLIP_RATIOS, export_model, integer_logits, predict_float, weight_scales,
                                     weight_limits, weight_steps)
from edgejpq.zoo import build_model

from models import ConcatNet, Conv1dNet, DepthwiseNet, Unsupported, randomize_batch_norm

pytestmark = pytest.mark.unit


def _data(shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _agreement(graph, model, x, state) -> float:
    fake = predict_float(graph, x, state=state).reshape(len(x), -1).argmax(1)
    real = integer_logits(model, x).argmax(1)
    return float((fake == real).mean())


@pytest.mark.parametrize("net,shape", [
    (DepthwiseNet, (1, 16, 16)), (ConcatNet, (1, 8, 8)), (Conv1dNet, (1, 40)),
    ("zoo:resnet8", (1, 28, 28)), ("zoo:cnn", (3, 12, 12)), ("zoo:mlp", (1, 8, 8)),
])
def test_float_graph_matches_pytorch_and_export_tracks_fake_quant(net, shape):
    torch.manual_seed(0)
    model = build_model(net, shape, 10) if isinstance(net, str) else net(shape[0], 10)
    model = randomize_batch_norm(model)
    graph = build_float_graph(model, shape)
    x = _data(shape, 64)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predict_float(graph, x), expected, rtol=1e-4, atol=1e-4)
    plan = uniform_plan(graph, 8)
    qmodel, state = export_model(graph, plan, _data(shape, 128, seed=1))
    assert _agreement(graph, qmodel, x, state) >= 0.9
    assert qmodel.layout.arena_bytes <= greedy_baseline_bytes(qmodel)
    assert qmodel.layout.arena_bytes >= activation_lower_bound(qmodel)


def test_resnet8_shape_and_memory():
    graph = build_float_graph(build_model("zoo:resnet8", (1, 28, 28), 10), (1, 28, 28))
    qmodel, _ = export_model(graph, uniform_plan(graph, 8), _data((1, 28, 28), 32))
    assert 70_000 < qmodel.weight_bytes < 85_000
    # three live 28×28×16 maps at the first residual add (skip, conv1, conv2; the add runs in place)
    assert qmodel.layout.arena_bytes == 3 * 28 * 28 * 16


def _mixed_plan(graph, seed: int = 0) -> PrecisionPlan:
    """Random per-channel bits; pruning only where the exporter can drop channels freely."""
    rng = np.random.default_rng(seed)
    layers = {}
    for layer in graph.weighted:
        choices = [2, 4, 8] if layer.output == graph.output else [0, 2, 4, 8]
        bits = rng.choice(choices, size=layer.out_channels).tolist()
        if not any(bits):
            bits[0] = 8
        if layer.depthwise:  # a depthwise channel lives and dies with its input channel
            upstream = next(l for l in graph.weighted if l.output == layer.input)
            bits = [(b or 8) if layers[upstream.name].bits[c] else 0 for c, b in enumerate(bits)]
        layers[layer.name] = LayerPlan(tuple(int(b) for b in bits))
    return PrecisionPlan(layers)


def test_mixed_precision_and_pruning_export_groups_channels_by_bits():
    torch.manual_seed(0)
    shape = (1, 12, 12)
    model = randomize_batch_norm(build_model("zoo:cnn", shape, 10))
    graph = build_float_graph(model, shape)
    plan = _mixed_plan(graph, seed=3)
    qmodel, state = export_model(graph, plan, _data(shape, 128))
    by_source = {op.source: op for op in qmodel.ops if isinstance(op, (Conv2D, FullyConnected))}
    for layer in graph.weighted:
        op = by_source[layer.name]
        bits = plan.layers[layer.name].bits
        assert qmodel.tensors[op.output].shape[2] == sum(1 for b in bits if b)  # pruned channels absent
        if layer.output != graph.output:
            run_bits = [r.bits for r in op.runs]
            assert run_bits == sorted(set(run_bits), reverse=True)  # one run per bit-width, 8 first
    x = _data(shape, 256, seed=5)
    assert _agreement(graph, qmodel, x, state) >= 0.9
    # pruned channels are gated in the float model too, so the plan's float model is what is quantized
    # (at 8 bits, where rounding hardly moves this untrained net's nearly tied logits)
    eight = PrecisionPlan({name: LayerPlan(tuple(8 if b else 0 for b in lp.bits)) for name, lp in plan.layers.items()})
    _, state8 = export_model(graph, eight, _data(shape, 128))
    masked = predict_float(graph, x, plan=eight)
    fake = predict_float(graph, x, state=state8)
    assert float((masked.argmax(1) == fake.argmax(1)).mean()) >= 0.8
    unmasked = predict_float(graph, x)
    assert float(np.abs(fake - masked).mean()) < float(np.abs(fake - unmasked).mean())


def test_residual_pruning_must_agree(tmp_path: Path):
    graph = build_float_graph(build_model("zoo:resnet8", (1, 8, 8), 10), (1, 8, 8))
    plan = uniform_plan(graph, 8)
    bits = list(plan.layers["stack1.conv2"].bits)
    bits[3] = 0
    layers = dict(plan.layers)
    layers["stack1.conv2"] = LayerPlan(tuple(bits))
    with pytest.raises(EdgejpqError, match="residual add .*keep different channels.*channel 3"):
        export_model(graph, PrecisionPlan(layers), _data((1, 8, 8), 16))


def test_plan_file_validation(tmp_path: Path):
    graph = build_float_graph(build_model("zoo:cnn", (1, 8, 8), 10), (1, 8, 8))
    good = uniform_plan(graph, 4)
    path = tmp_path / "plan.json"
    good.save(path)
    assert load_plan(str(path), graph) == good
    body = json.loads(path.read_text())
    body["layers"]["features.0"]["bits"] = [8] * 3
    path.write_text(json.dumps(body))
    with pytest.raises(EdgejpqError, match=r"layers.features.0.bits has 3 entries, the layer has 16"):
        load_plan(str(path), graph)
    body["layers"]["features.0"]["bits"] = [3] * 16
    path.write_text(json.dumps(body))
    with pytest.raises(EdgejpqError, match=r"features.0.bits holds 3"):
        load_plan(str(path), graph)
    body["layers"]["nope"] = {"bits": [8] * 16}
    del body["layers"]["features.0"]
    path.write_text(json.dumps(body))
    with pytest.raises(EdgejpqError, match="layer 'nope' is not a conv/linear layer"):
        load_plan(str(path), graph)
    bits = list(good.layers["classifier"].bits)
    bits[0] = 0
    layers = dict(good.layers)
    layers["classifier"] = LayerPlan(tuple(bits))
    with pytest.raises(EdgejpqError, match="produces the model output"):
        export_model(graph, PrecisionPlan(layers), _data((1, 8, 8), 8))
    with pytest.raises(EdgejpqError, match="uniform:8"):
        load_plan("uniform:x", graph)


def test_unsupported_constructs_are_named():
    with pytest.raises(EdgejpqError, match=r"fx node 'act' \(module 'act', GELU\).*unsupported layer type GELU"):
        build_float_graph(Unsupported(), (1, 8, 8))

    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, groups=2)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(EdgejpqError, match="'conv'.*groups=2"):
        build_float_graph(Grouped(), (4, 8, 8))

    class LoneBatchNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(1)
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(self.bn(x))

    with pytest.raises(EdgejpqError, match="'bn'.*batch norm must directly follow a conv"):
        build_float_graph(LoneBatchNorm(), (1, 8, 8))


def test_export_round_trips_through_file(tmp_path: Path):
    graph = build_float_graph(randomize_batch_norm(DepthwiseNet()), (1, 16, 16))
    qmodel, _ = export_model(graph, _mixed_plan(graph, seed=1), _data((1, 16, 16), 64))
    path = tmp_path / "m.ejq"
    digest = save_model(qmodel, path)
    loaded = load_model(path)
    assert loaded.content_hash == digest == qmodel.content_hash
    x = _data((1, 16, 16), 32, seed=9)
    np.testing.assert_array_equal(integer_logits(loaded, x), integer_logits(qmodel, x))


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([2, 4, 8]), width=st.integers(1, 80),
       outlier=st.floats(1.0, 20.0))
def test_weight_grid_clips_to_the_least_rounding_error(seed: int, bits: int, width: int, outlier: float) -> None:
    """The chosen step never rounds worse than max-abs scaling (one of its candidates), and the
    least-error step of a 2-bit Gaussian channel clips max|w| (most weights keep a non-zero level)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, width, generator=g)
    w[1, 0] = outlier * w[1].abs().max()
    w[2] = 0.0
    lo, hi = weight_limits(bits)
    steps = weight_steps(w, bits)

    def error(step: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(w / step[:, None]), lo, hi) * step[:, None]
        return ((q - w) ** 2).sum(dim=1)

    max_abs = w.abs().amax(dim=1) / hi
    assert bool((error(steps)[:2] <= error(max_abs)[:2]).all())
    assert steps[2] == 1.0 and bool((steps > 0).all())
    ratios = steps[:2].double().numpy() * hi / w[:2].abs().amax(dim=1).double().numpy()
    assert np.abs(ratios[:, None] - np.array(CLIP_RATIOS)[None]).min(axis=1).max() < 1e-5
    if bits == 2 and width >= 40:  # a Gaussian channel: most weights would round to zero at max|w|
        assert steps[0] < max_abs[0]
    scales = weight_scales(w, (bits, 0, bits))
    assert scales[1] == 0.0 and scales[0] == float(steps[0])
