"""Trace a PyTorch model with torch.fx into a small float graph the exporter can integerize.

The graph is the model as edgejpq understands it: weighted layers with batch norm already
folded, ReLU/ReLU6 fused into the layer that produces their input, pooling, residual adds,
channel concats and flattens. Shapes follow PyTorch (channels first, batch dropped). Anything
else is refused with an EdgejpqError naming the fx node, what it calls and why.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edgejpq.errors import EdgejpqError

Activation = Literal["none", "relu", "relu6"]


@dataclass(frozen=True)
class WeightedLayer:
    """Conv1d/Conv2d (also depthwise) or Linear with batch norm folded in; `weight` is (O, I/groups, KH, KW)."""

    kind: Literal["conv", "linear"]
    name: str  # the module's qualified name: the key of the precision plan
    input: str
    output: str
    weight: torch.Tensor
    bias: torch.Tensor
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right
    depthwise: bool = False
    activation: Activation = "none"
    spatial_dims: int = 2  # 1 for Conv1d (run as a 1×L convolution)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class PoolLayer:
    name: str
    input: str
    output: str
    mode: Literal["max", "avg"]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    global_pool: bool = False


@dataclass(frozen=True)
class AddLayer:
    name: str
    inputs: tuple[str, str]
    output: str
    activation: Activation = "none"


@dataclass(frozen=True)
class ConcatLayer:
    name: str
    inputs: tuple[str, ...]
    output: str


@dataclass(frozen=True)
class FlattenLayer:
    name: str
    input: str
    output: str


Layer = WeightedLayer | PoolLayer | AddLayer | ConcatLayer | FlattenLayer


@dataclass(frozen=True)
class FloatGraph:
    """Layers in execution order; `shapes` maps every tensor to its PyTorch shape without batch."""

    input: str
    output: str
    layers: tuple[Layer, ...]
    shapes: dict[str, tuple[int, ...]]
    consumers: dict[str, tuple[Layer, ...]] = field(repr=False)

    @property
    def weighted(self) -> tuple[WeightedLayer, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, WeightedLayer))

    @property
    def input_layers(self) -> tuple[str, ...]:
        """The weighted layers that read the model's input, directly or through layers without weights
        (pooling, reshapes): no other weighted layer between."""
        raw, out = {self.input}, []
        for layer in self.layers:  # in execution order
            if any(name in raw for name in layer_inputs(layer)):
                if isinstance(layer, WeightedLayer):
                    out.append(layer.name)
                else:
                    raw.add(layer.output)
        return tuple(out)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def layer_inputs(layer: Layer) -> tuple[str, ...]:
    return tuple(layer.inputs) if isinstance(layer, (AddLayer, ConcatLayer)) else (layer.input,)


# --------------------------------------------------------------------------- tracing

_PASS_THROUGH = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1])) if len(value) else (0, 0)
    return int(value), int(value)


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"fx node {node.name!r} (module {node.target!r}, {type(modules[str(node.target)]).__name__})"
    if node.op == "call_function":
        return f"fx node {node.name!r} (function {getattr(node.target, '__name__', node.target)})"
    return f"fx node {node.name!r} ({node.op} {node.target!r})"


def _fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d))
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
    factor = gamma / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight * factor.reshape(shape), (bias - bn.running_mean) * factor + beta


class _Tracer(fx.Tracer):
    """Treats modules listed as leaves (wrapped search layers later) as opaque calls."""

    def __init__(self, leaves: tuple[type, ...] = ()) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, input_shape: tuple[int, ...], leaves: tuple[type, ...] = ()) -> fx.GraphModule:
    """Symbolically trace `model` and annotate shapes for a batch of one (eval mode)."""
    model = model.eval()
    try:
        graph = _Tracer(leaves).trace(model)
    except Exception as exc:  # fx raises many kinds of errors for untraceable code
        raise EdgejpqError(f"cannot trace the model with torch.fx ({type(exc).__name__}: {exc}); "
                           "remove data-dependent control flow from forward()") from None
    gm = fx.GraphModule(model, graph)
    with torch.no_grad():
        try:
            ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
        except Exception as exc:
            raise EdgejpqError(f"the model does not accept inputs of shape {tuple(input_shape)} "
                               f"({type(exc).__name__}: {exc})") from None
    return gm


def build_float_graph(model: nn.Module, input_shape: tuple[int, ...]) -> FloatGraph:
    """Trace `model` and lower it to a FloatGraph (batch norm folded, activations fused)."""
    gm = trace(model, input_shape)
    modules = dict(gm.named_modules())
    nodes = [n for n in gm.graph.nodes]
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise EdgejpqError(f"the model must take exactly one input tensor, forward() takes {len(placeholders)}")
    alias: dict[str, str] = {}  # fx node name → tensor name (pass-through nodes point at their input)
    layers: list[Layer] = []
    shapes: dict[str, tuple[int, ...]] = {}
    producer: dict[str, Layer] = {}
    pending_bn: dict[str, nn.Module] = {}

    def shape_of(node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise EdgejpqError(f"{_describe(node, modules)} does not produce a single tensor")
        return tuple(int(d) for d in meta.shape[1:])

    def tensor_arg(node: fx.Node, arg: Any) -> str:
        if not isinstance(arg, fx.Node) or arg.name not in alias:
            raise EdgejpqError(f"{_describe(node, modules)}: argument {arg!r} is not a tensor of the graph "
                               "(constants and scalars in the data path are not supported)")
        return alias[arg.name]

    def emit(layer: Layer, node: fx.Node) -> None:
        layers.append(layer)
        alias[node.name] = layer.output
        shapes[layer.output] = shape_of(node)
        producer[layer.output] = layer

    def fuse_activation(node: fx.Node, activation: Activation) -> None:
        source = node.args[0] if node.args else node.kwargs.get("input")
        name = tensor_arg(node, source)
        layer = producer.get(name)
        if not isinstance(layer, (WeightedLayer, AddLayer)) or layer.activation != "none":
            raise EdgejpqError(f"{_describe(node, modules)}: {activation} must directly follow a conv, linear, "
                               "batch norm or residual add (it is fused into that layer's requantization)")
        if len(source.users) != 1:
            raise EdgejpqError(f"{_describe(node, modules)}: the tensor before this {activation} is also used "
                               "elsewhere, so the activation cannot be fused into its producer")
        fused = _replace(layer, activation=activation)
        layers[layers.index(layer)] = fused
        producer[name] = fused
        alias[node.name] = name

    for node in nodes:
        if node.op == "placeholder":
            alias[node.name] = "input"
            shapes["input"] = shape_of(node)
            continue
        if node.op == "output":
            out = node.args[0]
            if isinstance(out, (tuple, list)):
                if len(out) != 1:
                    raise EdgejpqError("the model must return exactly one tensor")
                out = out[0]
            output_name = tensor_arg(node, out)
            continue
        if node.op == "get_attr":
            raise EdgejpqError(f"{_describe(node, modules)}: parameters used directly in forward() are not "
                               "supported; put them in a Conv/Linear module")
        if node.op == "call_module":
            module = modules[str(node.target)]
            if isinstance(module, _PASS_THROUGH):
                alias[node.name] = tensor_arg(node, node.args[0])
            elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                emit(_weighted_from_module(node, module, modules, shape_of, tensor_arg(node, node.args[0])), node)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                name = tensor_arg(node, node.args[0])
                layer = producer.get(name)
                if not isinstance(layer, WeightedLayer) or layer.activation != "none" or len(node.args[0].users) != 1:
                    raise EdgejpqError(f"{_describe(node, modules)}: batch norm must directly follow a conv or linear "
                                       "layer whose output it alone uses (it is folded into that layer)")
                weight, bias = _fold_batch_norm(layer.weight, layer.bias, module)
                fused = _replace(layer, weight=weight, bias=bias)
                layers[layers.index(layer)] = fused
                producer[name] = fused
                alias[node.name] = name
            elif isinstance(module, nn.ReLU):
                fuse_activation(node, "relu")
            elif isinstance(module, nn.ReLU6) or (isinstance(module, nn.Hardtanh)
                                                   and (module.min_val, module.max_val) == (0.0, 6.0)):
                fuse_activation(node, "relu6")
            elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                                     nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
                emit(_pool_from_module(node, module, modules, tensor_arg, shapes), node)
            elif isinstance(module, nn.Flatten):
                if module.start_dim not in (1, -len(shapes[tensor_arg(node, node.args[0])])) or module.end_dim != -1:
                    raise EdgejpqError(f"{_describe(node, modules)}: only flattening everything but the batch is supported")
                emit(FlattenLayer(node.name, tensor_arg(node, node.args[0]), node.name), node)
            else:
                raise EdgejpqError(f"{_describe(node, modules)}: unsupported layer type {type(module).__name__}; "
                                   "supported: Conv1d, Conv2d (incl. depthwise), Linear, BatchNorm after them, ReLU, "
                                   "ReLU6, MaxPool, AvgPool, AdaptiveAvgPool(1), Flatten, Dropout, add, cat")
            continue
        target = node.target
        method = node.op == "call_method"
        if (not method and target in _ADD_FUNCTIONS) or (method and target in ("add", "add_", "__add__", "__iadd__")):
            if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
                raise EdgejpqError(f"{_describe(node, modules)}: only the sum of two tensors is supported")
            a, b = (tensor_arg(node, arg) for arg in node.args)
            if shapes[a] != shapes[b]:
                raise EdgejpqError(f"{_describe(node, modules)}: adds tensors of shapes {shapes[a]} and {shapes[b]} "
                                   "(broadcasting is not supported)")
            emit(AddLayer(node.name, (a, b), node.name), node)
        elif (not method and target in _RELU_FUNCTIONS) or (method and target in ("relu", "relu_")):
            fuse_activation(node, "relu")
        elif not method and target in (F.relu6,):
            fuse_activation(node, "relu6")
        elif not method and target is F.hardtanh and node.args[1:] == (0.0, 6.0):
            fuse_activation(node, "relu6")
        elif (not method and target is torch.flatten) or (method and target in ("flatten", "view", "reshape")):
            src = tensor_arg(node, node.args[0])
            if len(shape_of(node)) != 1:
                raise EdgejpqError(f"{_describe(node, modules)}: a reshape is supported only as a flatten to "
                                   f"(batch, features); this one gives {(-1, *shape_of(node))}")
            if len(shapes[src]) == 1:
                alias[node.name] = src
            else:
                emit(FlattenLayer(node.name, src, node.name), node)
        elif not method and target is torch.cat:
            tensors = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim not in (1, -len(shape_of(node))) or len(shape_of(node)) < 2:
                raise EdgejpqError(f"{_describe(node, modules)}: only concatenation along channels (dim=1) is supported")
            emit(ConcatLayer(node.name, tuple(tensor_arg(node, t) for t in tensors), node.name), node)
        elif method and target == "size":
            continue  # shape queries feed view(); they carry no data
        elif (not method and target in (F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, torch.mean)) or (
                method and target == "mean"):
            emit(_global_pool_from_call(node, modules, tensor_arg, shapes, shape_of), node)
        else:
            raise EdgejpqError(f"{_describe(node, modules)}: unsupported operation; supported: conv, linear, "
                               "batch norm, relu/relu6, max/avg/adaptive-avg pool, flatten, add, cat")
    graph_layers = tuple(layers)
    consumers: dict[str, list[Layer]] = {name: [] for name in shapes}
    for layer in graph_layers:
        for name in layer_inputs(layer):
            consumers[name].append(layer)
    if output_name == "input":
        raise EdgejpqError("the model returns its input unchanged")
    return FloatGraph(input="input", output=output_name, layers=graph_layers, shapes=shapes,
                      consumers={k: tuple(v) for k, v in consumers.items()})


def _replace(layer: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(layer, **changes)


def _conv_padding(module: nn.Module, node: fx.Node, modules: dict[str, nn.Module], kernel: tuple[int, int],
                  spatial_dims: int) -> tuple[int, int, int, int]:
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        # 'same' (stride 1): PyTorch puts the extra element of an even kernel at the end
        total = [k - 1 for k in kernel]
        return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    if module.padding_mode != "zeros":
        raise EdgejpqError(f"{_describe(node, modules)}: padding_mode {module.padding_mode!r} is not supported (use 'zeros')")
    ph, pw = (0, int(padding[0])) if spatial_dims == 1 else _pair(padding)
    return (ph, ph, pw, pw)


def _weighted_from_module(node: fx.Node, module: nn.Module, modules: dict[str, nn.Module],
                          shape_of: Callable[[fx.Node], tuple[int, ...]], input_name: str) -> WeightedLayer:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    weight = module.weight.detach().clone().float()
    bias = (module.bias.detach().clone().float() if module.bias is not None
            else torch.zeros(weight.shape[0]))
    if isinstance(module, nn.Linear):
        in_shape = shape_of(source)
        if len(in_shape) != 1:
            raise EdgejpqError(f"{_describe(node, modules)}: Linear needs a flattened (batch, features) input, "
                               f"got {(-1, *in_shape)}; flatten the tensor first")
        return WeightedLayer(kind="linear", name=str(node.target), input=input_name, output=node.name,
                             weight=weight.reshape(weight.shape[0], weight.shape[1], 1, 1), bias=bias)
    spatial_dims = 1 if isinstance(module, nn.Conv1d) else 2
    dilation = _pair(module.dilation) if spatial_dims == 2 else (1, int(module.dilation[0]))
    if dilation != (1, 1):
        raise EdgejpqError(f"{_describe(node, modules)}: dilation {module.dilation} is not supported")
    depthwise = False
    if module.groups != 1:
        if not (module.groups == module.in_channels == module.out_channels):
            raise EdgejpqError(f"{_describe(node, modules)}: grouped convolution with groups={module.groups} is not "
                               "supported (only groups=1 or depthwise with in = out channels)")
        depthwise = True
    if spatial_dims == 1:
        weight = weight.unsqueeze(2)  # (O, I, 1, K): a Conv1d runs as a 1×L convolution
        kernel = (1, int(module.kernel_size[0]))
        stride = (1, int(module.stride[0]))
    else:
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride)
    padding = _conv_padding(module, node, modules, kernel, spatial_dims)
    return WeightedLayer(kind="conv", name=str(node.target), input=input_name, output=node.name, weight=weight, bias=bias,
                         kernel=kernel, stride=stride, padding=padding, depthwise=depthwise,
                         spatial_dims=spatial_dims)


def _pool_from_module(node: fx.Node, module: nn.Module, modules: dict[str, nn.Module],
                      tensor_arg: Callable[[fx.Node, Any], str], shapes: dict[str, tuple[int, ...]]) -> PoolLayer:
    src = tensor_arg(node, node.args[0])
    in_shape = shapes[src]
    spatial = (1, in_shape[1]) if len(in_shape) == 2 else in_shape[1:]
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        size = module.output_size
        if size not in (1, (1,), (1, 1)):
            raise EdgejpqError(f"{_describe(node, modules)}: only AdaptiveAvgPool with output size 1 (global average "
                               f"pooling) is supported, got {size}")
        return PoolLayer(node.name, src, node.name, "avg", tuple(spatial), tuple(spatial), (0, 0, 0, 0), True)
    one_d = isinstance(module, (nn.MaxPool1d, nn.AvgPool1d))

    def dims(value: Any, height: int = 1) -> tuple[int, int]:
        """A 1-D pool runs over a 1×L plane: height `height` (1 for kernel/stride, 0 for padding)."""
        return (height, int(value[0] if isinstance(value, (tuple, list)) else value)) if one_d else _pair(value)

    kernel = dims(module.kernel_size)
    stride = dims(module.stride if module.stride is not None else module.kernel_size)
    pad = dims(module.padding, height=0)
    if getattr(module, "ceil_mode", False):
        raise EdgejpqError(f"{_describe(node, modules)}: ceil_mode=True is not supported")
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
        if (dims(module.dilation) != (1, 1)):
            raise EdgejpqError(f"{_describe(node, modules)}: pooling dilation is not supported")
        mode: Literal["max", "avg"] = "max"
    else:
        if module.count_include_pad and any(pad):
            raise EdgejpqError(f"{_describe(node, modules)}: average pooling with padding must use "
                               "count_include_pad=False (edgejpq divides by the in-bounds count, as TFLite)")
        if getattr(module, "divisor_override", None):
            raise EdgejpqError(f"{_describe(node, modules)}: divisor_override is not supported")
        mode = "avg"
    return PoolLayer(node.name, src, node.name, mode, kernel, stride, (pad[0], pad[0], pad[1], pad[1]))


def _global_pool_from_call(node: fx.Node, modules: dict[str, nn.Module], tensor_arg: Callable[[fx.Node, Any], str],
                           shapes: dict[str, tuple[int, ...]],
                           shape_of: Callable[[fx.Node], tuple[int, ...]]) -> PoolLayer:
    """F.adaptive_avg_pool(x, 1) or x.mean over every spatial axis (with or without keepdim)."""
    src = tensor_arg(node, node.args[0])
    in_shape = shapes[src]
    out_shape = shape_of(node)
    if len(in_shape) < 2 or out_shape[0] != in_shape[0] or any(d != 1 for d in out_shape[1:]):
        raise EdgejpqError(f"{_describe(node, modules)}: only a global average over all spatial positions is "
                           f"supported (input {(-1, *in_shape)}, output {(-1, *out_shape)})")
    spatial = (1, in_shape[1]) if len(in_shape) == 2 else (in_shape[1], in_shape[2])
    return PoolLayer(node.name, src, node.name, "avg", spatial, spatial, (0, 0, 0, 0), True)
