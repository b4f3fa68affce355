"""TFLite interoperability: Keras models converted to full int8, imported, and checked byte for byte.

The reference is the TFLite interpreter (ai-edge-litert) with its reference kernels (BUILTIN_REF,
see edgejpq/tflite_import.py for why). Every model runs through edgejpq's numpy reference, the host
C build and the Cortex-M4 firmware in QEMU; all three must equal the interpreter's int8 outputs.
Needs the `tflite` extra (tensorflow-cpu, ai-edge-litert); skipped without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from edgejpq.artifact import Conv2D, FullyConnected, Pool, load_model  # noqa: E402
from edgejpq.errors import EdgejpqError  # noqa: E402
from edgejpq.quant.reference import predict  # noqa: E402
from edgejpq.tflite_import import import_tflite, run_interpreter  # noqa: E402

pytestmark = pytest.mark.tflite
SAMPLES = 400
keras = tf.keras
L = keras.layers


def convert(model: "keras.Model", shape: tuple[int, ...], *, seed: int = 0, float_io: bool = False) -> bytes:
    """Full-int8 conversion with a representative data set (int8 input/output unless float_io)."""
    rng = np.random.default_rng(seed)

    def representative():
        for _ in range(64):
            yield [rng.normal(size=(1, *shape)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def mixed_model() -> tuple["keras.Model", tuple[int, ...]]:
    """Conv (SAME, stride 2, ReLU), depthwise (ReLU6), 1x1 conv, add, avg/max pool (SAME), concat,
    ZeroPadding2D folded into a VALID stride-2 conv, both MEAN forms, dense, softmax (dropped)."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((9, 7, 3), batch_size=1)
    x = L.Conv2D(5, 3, strides=2, padding="same", activation="relu")(inp)
    y = L.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    z = L.Conv2D(5, 1)(x)
    a = L.Add()([y, z])
    p = L.AveragePooling2D(2, strides=1, padding="same")(a)
    m = L.MaxPooling2D(2, strides=1, padding="same")(p)
    c = L.Concatenate()([m, a])
    padded = L.ZeroPadding2D(((1, 0), (2, 1)))(c)
    c2 = L.Conv2D(6, 3, strides=2)(padded)
    g = L.GlobalAveragePooling2D()(c2)
    g2 = L.Flatten()(L.GlobalAveragePooling2D(keepdims=True)(c2))
    out = L.Dense(10)(L.Concatenate()([g, g2]))
    return keras.Model(inp, L.Softmax()(out)), (9, 7, 3)


def odd_model() -> tuple["keras.Model", tuple[int, ...]]:
    """1-channel odd-sized input, depth multiplier on one channel, stride-2 SAME with odd sizes,
    channel counts that are not multiples of 4, VALID and SAME pooling, dense layers with ReLU."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((13, 11, 1), batch_size=1)
    x = L.DepthwiseConv2D(3, depth_multiplier=3, padding="same", activation="relu")(inp)
    x = L.Conv2D(7, 4, strides=2, padding="same", activation="relu")(x)
    x = L.MaxPooling2D(3, strides=2, padding="valid")(x)
    x = L.Conv2D(5, (2, 3), strides=(1, 2), padding="same")(x)
    x = L.AveragePooling2D(3, strides=2, padding="same")(x)
    x = L.Reshape((-1,))(x)
    x = L.Dense(6, activation="relu")(x)
    return keras.Model(inp, L.Dense(3)(x)), (13, 11, 1)


@dataclass(frozen=True)
class Case:
    name: str
    content: bytes
    shape: tuple[int, ...]


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    built = {}
    for name, factory in (("mixed", mixed_model), ("odd", odd_model)):
        model, shape = factory()
        built[name] = Case(name, convert(model, shape), shape)
    model, shape = odd_model()
    built["float_io"] = Case("float_io", convert(model, shape, float_io=True), shape)
    return built


def inputs_for(shape: tuple[int, ...], n: int = SAMPLES, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, size=(n, *shape), dtype=np.int8)


@pytest.mark.parametrize("name", ["mixed", "odd", "float_io"])
def test_numpy_reference_equals_interpreter(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    imported = import_tflite(case.content)
    x = inputs_for(case.shape)
    expected = run_interpreter(case.content, x, tensor=imported.reference_tensor)
    got = predict(imported.model, x).reshape(len(x), -1)
    assert np.array_equal(got, expected)
    kinds = {type(op).__name__ for op in imported.model.ops}
    if name == "mixed":
        assert {"Conv2D", "Add", "Pool", "Concat", "Reshape", "FullyConnected"} <= kinds
        assert any("SOFTMAX" in note for note in imported.notes) and any("PAD" in note for note in imported.notes)
        assert sum(op.name.startswith("mean") for op in imported.model.ops) == 2
        assert {op.mode for op in imported.model.ops if isinstance(op, Pool)} == {"avg", "max"}
        assert any(op.depthwise for op in imported.model.ops if isinstance(op, Conv2D))
        padded = [op for op in imported.model.ops if isinstance(op, Conv2D) and op.stride == (2, 2) and op.kernel == (3, 3)]
        assert padded[-1].padding == (1, 0, 2, 1)  # the folded PAD, VALID otherwise
    if name == "odd":
        first = imported.model.ops[0]
        assert isinstance(first, Conv2D) and not first.depthwise  # depth multiplier 3 on one channel
        assert imported.model.ops[1].padding == (1, 2, 1, 2)  # SAME, kernel 4, stride 2, 13x11: the odd row/column after
    if name == "float_io":
        assert imported.float_input
        assert all(op.rounding == "single" for op in imported.model.ops if isinstance(op, FullyConnected))


@pytest.mark.host_c
@pytest.mark.parametrize("name", ["mixed", "odd"])
def test_host_c_equals_interpreter(cases: dict[str, Case], name: str, tmp_path: Path) -> None:
    from edgejpq.emulate.host import emulate_host

    case = cases[name]
    imported = import_tflite(case.content)
    x = inputs_for(case.shape, seed=11)
    expected = run_interpreter(case.content, x, tensor=imported.reference_tensor)
    result = emulate_host(imported.model, x, tmp_path)
    assert result.bit_exact, result.mismatch
    assert np.array_equal(result.outputs.reshape(len(x), -1), expected)


@pytest.mark.qemu
@pytest.mark.parametrize("name", ["mixed", "odd"])
def test_qemu_cortex_m4_equals_interpreter(cases: dict[str, Case], name: str, tmp_path: Path) -> None:
    from edgejpq.cost.target import load_target
    from edgejpq.emulate.qemu import emulate_qemu

    case = cases[name]
    imported = import_tflite(case.content)
    x = inputs_for(case.shape, n=300, seed=13)
    expected = run_interpreter(case.content, x, tensor=imported.reference_tensor)
    result = emulate_qemu(imported.model, x, tmp_path, load_target("cortex-m4"))
    assert result.bit_exact, result.mismatch
    assert np.array_equal(result.outputs.reshape(len(x), -1), expected)
    assert result.instructions_per_inference and result.instructions_per_inference > 0


def test_int4_weights(cases: dict[str, Case]) -> None:
    """A conv filter stored as TFLite INT4 (two values per byte, low nibble first) imports at 4 bits."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(cases["odd"].content), 0)
    graph = model.subgraphs[0]
    conv_code = [i for i, c in enumerate(model.operatorCodes)
                 if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.CONV_2D]
    op = next(o for o in graph.operators if o.opcodeIndex in conv_code)
    tensor = graph.tensors[op.inputs[1]]
    values = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype=np.int8).astype(np.int16)
    values = np.clip(np.round(values / 18.0), -7, 7).astype(np.int16)  # int4 codes
    if values.size % 2:
        values = np.append(values, 0)
    nibbles = (values & 0x0F).astype(np.uint8)
    model.buffers[tensor.buffer].data = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
    tensor.type = schema.TensorType.INT4
    content = _repack(model)
    try:
        x = inputs_for(cases["odd"].shape, n=100)
        imported = import_tflite(content)
        expected = run_interpreter(content, x, tensor=imported.reference_tensor)
    except (RuntimeError, ValueError) as exc:  # an interpreter build without int4 conv filters
        pytest.skip(f"the interpreter does not run int4 filters: {exc}")
    conv = next(o for o in imported.model.ops if isinstance(o, Conv2D) and o.kernel == (4, 4))
    assert {run.bits for run in conv.runs} == {4}
    assert np.array_equal(predict(imported.model, x).reshape(len(x), -1), expected)


def _repack(model: object) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")  # type: ignore[attr-defined]
    return bytes(builder.Output())


def test_mean_keeping_the_input_quantization(cases: dict[str, Case]) -> None:
    """MEAN whose output has the input's scale and zero point (the converter rarely emits it: the
    flatbuffer is edited) takes the same folded-multiplier path in TFLite's reference kernels."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(cases["mixed"].content), 0)
    graph = model.subgraphs[0]
    mean_codes = [i for i, c in enumerate(model.operatorCodes)
                  if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.MEAN]
    mean = next(o for o in graph.operators if o.opcodeIndex in mean_codes)
    source, target = graph.tensors[mean.inputs[0]].quantization, graph.tensors[mean.outputs[0]].quantization
    old = (float(target.scale[0]), int(target.zeroPoint[0]))
    for tensor in graph.tensors:  # every tensor sharing the MEAN output's parameters (concat, reshape) follows
        q = tensor.quantization
        if q is not None and q.scale is not None and len(q.scale) == 1 and (float(q.scale[0]), int(q.zeroPoint[0])) == old:
            q.scale, q.zeroPoint = list(source.scale), list(source.zeroPoint)
    content = _repack(model)
    imported = import_tflite(content)
    x = inputs_for(cases["mixed"].shape, n=200)
    for op in imported.model.ops:
        if op.name.startswith("mean"):
            info_in, info_out = imported.model.tensors[op.input], imported.model.tensors[op.output]
            assert (info_in.scale, info_in.zero_point) == (info_out.scale, info_out.zero_point)
    expected = run_interpreter(content, x, tensor=imported.reference_tensor)
    assert np.array_equal(predict(imported.model, x).reshape(len(x), -1), expected)


def test_requantizing_quantize_op(cases: dict[str, Case]) -> None:
    """An int8 → int8 QUANTIZE (inserted into the flatbuffer before the first dense layer) imports as a
    1x1 unit depthwise conv with TFLite's Requantize arithmetic."""
    import copy

    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(cases["odd"].content), 0)
    graph = model.subgraphs[0]
    fc_codes = [i for i, c in enumerate(model.operatorCodes)
                if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.FULLY_CONNECTED]
    position = next(i for i, o in enumerate(graph.operators) if o.opcodeIndex in fc_codes)
    fc = graph.operators[position]
    source = graph.tensors[fc.inputs[0]]
    requantized = copy.deepcopy(source)
    requantized.name = b"requantized"
    requantized.quantization.scale = [float(source.quantization.scale[0]) * 1.37]
    requantized.quantization.zeroPoint = [max(-128, int(source.quantization.zeroPoint[0]) - 9)]
    graph.tensors.append(requantized)
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
    model.operatorCodes.append(code)
    quantize = schema.OperatorT()
    quantize.opcodeIndex = len(model.operatorCodes) - 1
    quantize.inputs, quantize.outputs = [int(fc.inputs[0])], [len(graph.tensors) - 1]
    fc.inputs = [len(graph.tensors) - 1, *list(fc.inputs)[1:]]
    graph.operators.insert(position, quantize)
    content = _repack(model)
    imported = import_tflite(content)
    assert any(op.name.startswith("requant") for op in imported.model.ops)
    x = inputs_for(cases["odd"].shape, n=300)
    expected = run_interpreter(content, x, tensor=imported.reference_tensor)
    assert np.array_equal(predict(imported.model, x).reshape(len(x), -1), expected)


# --------------------------------------------------------------------------- refusals


def test_float_model_is_refused() -> None:
    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 2), batch_size=1)
    model = keras.Model(inp, L.Dense(3)(L.Flatten()(L.Conv2D(4, 3)(inp))))
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with pytest.raises(EdgejpqError, match=r"op 0 \(CONV_2D\).*float tensor.*representative_dataset"):
        import_tflite(content)


def test_unsupported_op_is_refused() -> None:
    keras.utils.set_random_seed(4)
    inp = keras.Input((6, 6, 2), batch_size=1)
    x = L.Conv2D(4, 3, padding="same")(inp)
    x = L.Activation("sigmoid")(x)
    model = keras.Model(inp, L.Conv2D(2, 1)(x))
    content = convert(model, (6, 6, 2))
    with pytest.raises(EdgejpqError, match=r"op 1 \(LOGISTIC\): unsupported op"):
        import_tflite(content)


def test_not_a_flatbuffer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.tflite"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(EdgejpqError, match="not a TFLite flatbuffer"):
        import_tflite(path)


def test_softmax_kept_is_refused(cases: dict[str, Case]) -> None:
    with pytest.raises(EdgejpqError, match=r"SOFTMAX.*not implemented"):
        import_tflite(cases["mixed"].content, drop_softmax=False)


# --------------------------------------------------------------------------- command line


def _edgejpq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgejpq", *args], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.host_c
def test_cli_import_and_emulate_tflite(cases: dict[str, Case], tmp_path: Path) -> None:
    source = tmp_path / "mixed.tflite"
    source.write_bytes(cases["mixed"].content)
    out = tmp_path / "mixed.ejq"
    result = _edgejpq("import", str(source), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["hash"] == load_model(out).content_hash and summary["ops"] == len(load_model(out).ops)
    result = _edgejpq("emulate", str(source), "--limit", "200", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["bit_exact"] and summary["tflite_interpreter_equal"] is True
    assert summary["samples"] == 200


@pytest.mark.serial
def test_cli_validate_tflite_in_qemu_over_serial(cases: dict[str, Case], tmp_path: Path) -> None:
    source = tmp_path / "mixed.tflite"
    source.write_bytes(cases["mixed"].content)
    result = _edgejpq("validate", str(source), "--qemu", "--target", "cortex-m4", "--limit", "24", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["bit_exact"] and summary["tflite_interpreter_equal"] is True and summary["samples"] == 24
