"""On real data: the integer reference tracks the fake-quantized PyTorch model at 8 bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgejpq.data import calibration_subset, load_dataset
from edgejpq.graph import build_float_graph
from edgejpq.plan import uniform_plan
from edgejpq.quant.integerize import export_model, integer_logits, predict_float
from edgejpq.train import train_float
from edgejpq.zoo import build_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("spec", ["zoo:cnn", "zoo:resnet8"])
def test_integer_reference_within_one_point_of_fake_quant_on_fashion_mnist(spec):
    ds = load_dataset("fashion-mnist")
    torch.manual_seed(0)
    model = build_model(spec, ds.input_shape, ds.num_classes)
    train_float(model, ds, epochs=1, seed=0)
    graph = build_float_graph(model, ds.input_shape)
    qmodel, state = export_model(graph, uniform_plan(graph, 8), calibration_subset(ds, 1000))
    x, y = ds.x_test, ds.y_test
    acc_float = float((predict_float(graph, x).argmax(1) == y).mean())
    acc_fake = float((predict_float(graph, x, state=state).argmax(1) == y).mean())
    acc_int = float((integer_logits(qmodel, x).argmax(1) == y).mean())
    print(f"{spec}: float {acc_float:.4f} fake-quant {acc_fake:.4f} integer {acc_int:.4f}")
    assert acc_float > 0.7  # the model really learned something, so the comparison means something
    assert abs(acc_int - acc_fake) <= 0.01
    assert abs(acc_int - acc_float) <= 0.02
