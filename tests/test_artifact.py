"""The .ejq file: round trip and refusal of damaged or inconsistent files, naming the fault."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgejpq.artifact import MemoryLayout, Placement, load_model, save_model
from edgejpq.errors import EdgejpqError
from edgejpq.graph import build_float_graph
from edgejpq.plan import uniform_plan
from edgejpq.quant.integerize import export_model
from edgejpq.zoo import build_model

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    graph = build_float_graph(build_model("zoo:resnet8", (1, 8, 8), 10), (1, 8, 8))
    qmodel, _ = export_model(graph, uniform_plan(graph, 4), np.random.default_rng(0).random((16, 1, 8, 8),
                                                                                            dtype=np.float32))
    return qmodel


@pytest.fixture()
def saved(model, tmp_path: Path) -> Path:
    path = tmp_path / "m.ejq"
    save_model(model, path)
    return path


def _rewrite(path: Path, manifest_edit=None, arrays_edit=None) -> None:
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
        arrays = dict(np.load(io.BytesIO(z.read("arrays.npz"))))
    if manifest_edit:
        manifest_edit(manifest)
    if arrays_edit:
        arrays_edit(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
        z.writestr("arrays.npz", buf.getvalue())


def test_round_trip(model, saved):
    loaded = load_model(saved)
    assert loaded.content_hash == model.content_hash
    assert loaded.ops == model.ops and loaded.tensors == model.tensors and loaded.layout == model.layout
    for name, array in model.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name], array)


def test_truncated_file_is_refused(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgejpqError, match=r"m\.ejq: not a readable \.ejq file \(truncated or corrupted"):
        load_model(saved)


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9])
def test_flipped_byte_is_refused(saved, fraction):
    data = bytearray(saved.read_bytes())
    data[int(len(data) * fraction)] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(EdgejpqError, match=r"m\.ejq: "):
        load_model(saved)


def test_missing_file_and_not_a_zip(tmp_path):
    with pytest.raises(EdgejpqError, match="no such model file"):
        load_model(tmp_path / "absent.ejq")
    (tmp_path / "x.ejq").write_text("hello")
    with pytest.raises(EdgejpqError, match="not a readable .ejq file"):
        load_model(tmp_path / "x.ejq")


def test_schema_version_and_field_types_are_named(saved):
    _rewrite(saved, lambda m: m.update(schema_version=99))
    with pytest.raises(EdgejpqError, match="schema_version is 99"):
        load_model(saved)


def test_bad_field_names_its_path(saved):
    def edit(m):
        m["ops"][2]["stride"] = [1, "two"]
    _rewrite(saved, edit)
    with pytest.raises(EdgejpqError, match=r"manifest field ops\.2\.conv2d\.stride\.1"):
        load_model(saved)


def test_changed_array_breaks_the_hash(saved, model):
    name = next(n for n in model.arrays if n.endswith(".bias"))

    def edit(arrays):
        arrays[name] = arrays[name] + np.int32(1)
    _rewrite(saved, arrays_edit=edit)
    with pytest.raises(EdgejpqError, match="content hash mismatch"):
        load_model(saved)


def test_array_dtype_and_shape_are_checked(saved, model):
    name = next(n for n in model.arrays if n.endswith(".multiplier"))

    def edit_arrays(arrays):
        arrays[name] = arrays[name].astype(np.int64)

    def edit_manifest(m):
        m["arrays"][name]["dtype"] = "int64"
    _rewrite(saved, edit_manifest, edit_arrays)
    with pytest.raises(EdgejpqError, match=rf"array {name} is int64.*expected int32"):
        load_model(saved)


def test_overflowing_accumulator_is_refused(model, tmp_path):
    name = next(n for n in model.arrays if n.endswith(".bias"))
    arrays = dict(model.arrays)
    bias = arrays[name].copy()
    bias[1] = 2**31 - 10
    arrays[name] = bias
    with pytest.raises(EdgejpqError, match=r"output channel 1 can overflow the int32 accumulator"):
        save_model(replace(model, arrays=arrays), tmp_path / "bad.ejq")
    assert not (tmp_path / "bad.ejq").exists()


def test_overlapping_layout_is_refused(model, tmp_path):
    placements = dict(model.layout.placements)
    arena = [n for n, p in placements.items() if p.region == "arena"]
    first, second = arena[0], arena[1]  # the first conv's output and the next one's are both live then
    placements[second] = Placement("arena", placements[first].offset)
    layout = MemoryLayout(model.layout.arena_bytes, model.layout.lower_bound, "hand-made", placements)
    with pytest.raises(EdgejpqError, match="memory layout"):
        save_model(model.with_layout(layout), tmp_path / "bad.ejq")


def test_unwritable_destination(model, tmp_path):
    with pytest.raises(EdgejpqError, match="does not exist"):
        save_model(model, tmp_path / "missing" / "m.ejq")
