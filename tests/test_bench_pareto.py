"""bench/pareto.py's merging of runs and its verdict (the measurements themselves are the benchmark's)."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pareto():
    spec = importlib.util.spec_from_file_location("bench_pareto", ROOT / "bench" / "pareto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point(method: str, label: str, weight_bytes: int, accuracy: float, seed: int | None = None) -> dict:
    point = {"method": method, "label": label, "weight_bytes": weight_bytes, "flash_bytes": 2 * weight_bytes,
             "accuracy": accuracy, "epochs": 4 if method == "uniform" else 8, "seconds": 100.0,
             "budget_flash_bytes": None if method == "uniform" else 26946, "budget_weight_bytes": None}
    if method != "uniform":
        point.update(search_epochs=1, finetune_epochs=7, trial_batches=100, pin_input=False)
    if seed is not None:
        point["seed"] = seed
    return point


def _part(tmp_path: Path, name: str, seed: int, points: list[dict], lr: float = 0.005) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({
        "benchmark": "pareto", "model": "dscnn", "data": "fashion-mnist", "target": "cortex-m4",
        "float_accuracy": 0.9012, "pretrain_seconds": 558.3, "uniform8_flash_bytes": 41456, "complete": True,
        "protocol": {"model": "dscnn", "lr": lr, "seed": seed, "distill": 0.0, "learn_steps": True,
                     "batch_norm": False},
        "points": points}))
    return path


def test_combine_judges_each_seed_and_the_mean_of_the_seeds(pareto, tmp_path):
    label = "joint@0.65 1+7 bits 2,4"
    files = [_part(tmp_path, "u0", 0, [_point("uniform", "uniform-8", 19904, 0.9050)]),
             # files from before points recorded their seed take the protocol's
             _part(tmp_path, "j0", 0, [_point("joint", label, 5900, 0.9020),
                                       _point("joint", "joint@0.70 1+7 bits 2,4", 6900, 0.9060)]),
             _part(tmp_path, "s1", 1, [_point("uniform", "uniform-8", 19904, 0.9070, seed=1),
                                       _point("joint", label, 5800, 0.9010, seed=1)])]
    payload = pareto._combine(files)
    assert payload["protocol"]["seed"] == [0, 1]
    assert sorted({p["seed"] for p in payload["points"]}) == [0, 1]
    out = tmp_path / "merged.json"
    pareto._report(payload, Console(file=io.StringIO()), out)
    verdict = json.loads(out.read_text())["verdict"]
    met = pareto.MET
    # seed 0: 0.30 point under at -70.4%; seed 1: 0.60 under, so nothing of its is close enough
    assert verdict["per_seed"]["0"][met] is True
    assert verdict["per_seed"]["0"]["weight_reduction_at_uniform8_accuracy"] == round(1 - 5900 / 19904, 4)
    assert verdict["per_seed"]["1"][met] is False
    assert verdict["target_met_on_every_seed"] is False
    # the mean: uniform 8-bit 90.60%, the label both seeds measured 90.15% at 5,850 B (0.45 under, -70.6%);
    # the 70% point was measured on seed 0 only, so it has no mean
    assert verdict["mean_of_seeds"][met] is True
    assert verdict["mean_of_seeds"]["weight_reduction_at_uniform8_accuracy"] == round(1 - 5850 / 19904, 4)
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_combine_refuses_files_of_different_protocols(pareto, tmp_path):
    files = [_part(tmp_path, "a", 0, [_point("uniform", "uniform-8", 19904, 0.905)]),
             _part(tmp_path, "b", 1, [_point("uniform", "uniform-8", 19904, 0.907)], lr=0.007)]
    with pytest.raises(SystemExit, match=r"b\.json: its protocol .*'lr': 0\.007.* differs from .*a\.json's"):
        pareto._combine(files)
