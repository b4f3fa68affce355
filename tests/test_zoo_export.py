"""Every zoo model lowers to a float graph that matches PyTorch and exports to an integer model.

Three levels:
- the recipe of tests/test_graph_export.py (randomized batch-norm statistics, uniform 8-bit plan,
  integer argmax vs fake-quant argmax on random inputs);
- op by op: with batch-norm statistics measured on the inputs (so activations neither vanish nor
  explode), each integer op fed the fake-quant model's own inputs lands within one quantization
  step of the fake-quant output. End to end this is the stronger check for deep models: a random
  14-layer MobileNet amplifies such one-step rounding differences layer after layer (measured:
  ~70% argmax agreement with randomly initialised weights, 96-99% once trained), so its end-to-end
  agreement is only meaningful for trained weights;
- slow: briefly trained models, where integer and fake-quant predictions must agree end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgejpq.artifact import Pool
from edgejpq.graph import FlattenLayer, FloatGraph, build_float_graph
from edgejpq.plan import uniform_plan
from edgejpq.quant.integerize import QuantState, export_model, forward, integer_logits, predict_float
from edgejpq.quant.reference import run_op
from edgejpq.zoo import ZOO_NAMES, build_model

from models import randomize_batch_norm

pytestmark = pytest.mark.unit

FASHION, DIGITS, MNIST1D, RGB16 = (1, 28, 28), (1, 8, 8), (1, 40), (3, 16, 16)

# Every zoo model with the data shapes it is meant for: Fashion-MNIST, digits, MNIST-1D, small RGB.
CASES: list[tuple[str, tuple[int, ...]]] = [
    ("cnn", FASHION), ("cnn", DIGITS),
    ("resnet8", FASHION), ("resnet8", DIGITS),
    ("mlp", FASHION), ("mlp", DIGITS), ("mlp", MNIST1D),
    ("dscnn", FASHION), ("dscnn", DIGITS), ("dscnn", RGB16),
    ("mobilenet", FASHION), ("mobilenet", DIGITS), ("mobilenet", RGB16),
    ("cnn1d", MNIST1D),
]
CASE_IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, shape in CASES]


def _inputs(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """Images like the loaders give ([0, 1)); 1-D signals roughly zero-centred like MNIST-1D."""
    rng = np.random.default_rng(seed)
    if len(shape) == 2:
        return rng.standard_normal((n, *shape)).astype(np.float32)
    return rng.random((n, *shape), dtype=np.float32)


def _batch_norm_from_data(model: nn.Module, x: np.ndarray, seed: int = 0) -> nn.Module:
    """Running statistics measured on `x` (so every layer sees normalised activations), random affine."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batch below
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(x))
    return model.eval()


def _agreement(graph: FloatGraph, qmodel, state: QuantState, x: np.ndarray) -> float:
    fake = predict_float(graph, x, state=state).reshape(len(x), -1).argmax(1)
    real = integer_logits(qmodel, x).argmax(1)
    return float((fake == real).mean())


def test_every_zoo_model_is_covered() -> None:
    assert {name for name, _ in CASES} == set(ZOO_NAMES)


@pytest.mark.parametrize("name,shape", CASES, ids=CASE_IDS)
def test_zoo_model_lowers_and_exports(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = randomize_batch_norm(build_model(f"zoo:{name}", shape, 10))
    graph = build_float_graph(model, shape)
    x = _inputs(shape, 64, seed=0)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predict_float(graph, x), expected, rtol=1e-4, atol=1e-4)
    qmodel, state = export_model(graph, uniform_plan(graph, 8), _inputs(shape, 128, seed=1))
    assert _agreement(graph, qmodel, state, x) >= 0.9


def _as_integer(graph: FloatGraph, qmodel, state: QuantState, fake: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Fake-quant tensors (PyTorch layout) as the integer model's int8 channels-last tensors."""
    values: dict[str, np.ndarray] = {}
    flatten_of = {layer.output: layer.input for layer in graph.layers if isinstance(layer, FlattenLayer)}
    for name in [graph.input, *(layer.output for layer in graph.layers)]:
        n = len(fake[name])
        if name in flatten_of:  # the integer model flattens its channels-last memory as is
            values[name] = values[flatten_of[name]].reshape((n, *qmodel.tensors[name].shape))
            continue
        qp = state.tensors[name]
        q = np.round(fake[name].astype(np.float64) / qp.scale + qp.zero_point)
        if q.ndim == 4:
            q = q.transpose(0, 2, 3, 1)  # (N, C, H, W) → (N, H, W, C)
        elif q.ndim == 3:
            q = q.transpose(0, 2, 1)[:, None]  # (N, C, L) → (N, 1, L, C)
        values[name] = q.reshape((n, *qmodel.tensors[name].shape)).astype(np.int8)
    return values


@pytest.mark.parametrize("name,shape", CASES, ids=CASE_IDS)
def test_zoo_integer_ops_track_fake_quant_within_one_step(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    model = _batch_norm_from_data(build_model(f"zoo:{name}", shape, 10), _inputs(shape, 256, seed=2))
    graph = build_float_graph(model, shape)
    x = _inputs(shape, 64, seed=3)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predict_float(graph, x), expected, rtol=1e-4, atol=1e-4)
    assert expected.std(axis=0).mean() > 0.01, "outputs barely depend on the input: the check would be vacuous"
    qmodel, state = export_model(graph, uniform_plan(graph, 8), _inputs(shape, 128, seed=4))
    fake: dict[str, np.ndarray] = {}
    forward(graph, torch.from_numpy(x), state=state, observe=lambda t, v: fake.__setitem__(t, v.numpy()))
    values = _as_integer(graph, qmodel, state, fake)
    for op in qmodel.ops:
        got = run_op(op, values, qmodel).astype(np.int64)
        diff = np.abs(got - values[op.output].astype(np.int64))
        where = f"{type(op).__name__} {op.source or op.output}"
        assert diff.max() <= 1, f"{where}: integer op is {diff.max()} steps from fake-quant"
        # Average pools round ties half away from zero on the int8 codes (TFLite), fake-quant rounds
        # the float mean half to even: a 2x2 global pool lands on a tie in 1 of 4 cases (measured <= 13%
        # off by one). Other ops differ only where float and fixed-point requantization round apart (< 1%).
        limit = 0.2 if isinstance(op, Pool) else 0.02
        assert (diff > 0).mean() <= limit, f"{where}: {100 * (diff > 0).mean():.1f}% of values off by one step"


# --------------------------------------------------------------------------- architecture


def _graph(name: str, shape: tuple[int, ...]) -> FloatGraph:
    return build_float_graph(build_model(f"zoo:{name}", shape, 10), shape)


def test_dscnn_structure() -> None:
    graph = _graph("dscnn", FASHION)
    convs = [layer for layer in graph.weighted if layer.kind == "conv"]
    assert [layer.depthwise for layer in convs] == [False] + [True, False] * 4
    assert convs[0].stride == (2, 2) and convs[0].kernel == (3, 3)
    assert all(layer.activation == "relu" for layer in convs)
    assert all(layer.out_channels == 64 for layer in convs)
    assert graph.shapes[convs[-1].output] == (64, 14, 14)


@pytest.mark.parametrize("shape,stride2,final", [
    (FASHION, 4, (256, 2, 2)), (DIGITS, 2, (256, 2, 2)), (RGB16, 3, (256, 2, 2)), ((3, 96, 96), 5, (256, 3, 3)),
])
def test_mobilenet_structure(shape: tuple[int, ...], stride2: int, final: tuple[int, ...]) -> None:
    graph = _graph("mobilenet", shape)
    convs = [layer for layer in graph.weighted if layer.kind == "conv"]
    assert sum(layer.depthwise for layer in convs) == 13
    pointwise = [layer.out_channels for layer in convs if not layer.depthwise]
    assert pointwise == [8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256]
    assert all(layer.activation == "relu6" for layer in convs)
    assert sum(layer.stride == (2, 2) for layer in convs) == stride2
    assert graph.shapes[convs[-1].output] == final


def test_cnn1d_structure() -> None:
    graph = _graph("cnn1d", MNIST1D)
    convs = [layer for layer in graph.weighted if layer.kind == "conv"]
    assert [layer.spatial_dims for layer in convs] == [1, 1, 1]
    assert [graph.shapes[layer.output] for layer in convs] == [(32, 40), (32, 20), (64, 10)]
    assert [layer.kernel for layer in convs] == [(1, 5), (1, 3), (1, 3)]


# --------------------------------------------------------------------------- trained (slow)


def _train_and_export(name: str, data: str, epochs: int) -> tuple[float, float, float]:
    from edgejpq.data import calibration_subset, load_dataset
    from edgejpq.train import train_float

    ds = load_dataset(data)
    model = build_model(f"zoo:{name}", ds.input_shape, ds.num_classes)
    history = train_float(model, ds, epochs=epochs, lr=3e-3, batch_size=64, seed=0)
    graph = build_float_graph(model, ds.input_shape)
    qmodel, state = export_model(graph, uniform_plan(graph, 8), calibration_subset(ds, 256))
    int_accuracy = float((integer_logits(qmodel, ds.x_test).argmax(1) == ds.y_test).mean())
    return history[-1]["test_accuracy"], int_accuracy, _agreement(graph, qmodel, state, ds.x_test)


@pytest.mark.slow
@pytest.mark.parametrize("name,data,epochs,floor", [
    ("dscnn", "digits", 4, 0.85),
    ("mobilenet", "digits", 4, 0.6),
    ("cnn1d", "mnist1d", 4, 0.7),
])
def test_trained_zoo_model_integer_tracks_fake_quant(name: str, data: str, epochs: int, floor: float) -> None:
    float_accuracy, int_accuracy, agreement = _train_and_export(name, data, epochs)
    assert float_accuracy >= floor
    assert agreement >= 0.9
    assert int_accuracy >= float_accuracy - 0.03

