"""Float training, evaluation and the float checkpoint file format."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgejpq import zoo
from edgejpq.data import Dataset
from edgejpq.errors import EdgejpqError

CHECKPOINT_FORMAT = "edgejpq.float_checkpoint"
CHECKPOINT_SCHEMA_VERSION = 1


def train_float(
    model: nn.Module,
    ds: Dataset,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> list[dict]:
    """Train with Adam + per-step cosine annealing; return [{epoch, train_loss, test_accuracy}, ...]."""
    if epochs < 0:
        raise EdgejpqError(f"epochs must be >= 0, got {epochs}")
    if not lr > 0:
        raise EdgejpqError(f"learning rate must be > 0, got {lr}")
    if batch_size < 1:
        raise EdgejpqError(f"batch size must be >= 1, got {batch_size}")
    torch.manual_seed(seed)
    # A private generator: the shuffle order depends only on `seed`, not on global RNG use elsewhere.
    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(ds.x_train)
    y = torch.from_numpy(ds.y_train)
    n = x.shape[0]
    steps_per_epoch = (n + batch_size - 1) // batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    loss_fn = nn.CrossEntropyLoss()

    history: list[dict] = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator)
        loss_sum = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            scheduler.step()
            # Weighted by batch size so a short last batch counts for what it holds.
            loss_sum += float(loss.detach()) * xb.shape[0]
        train_loss = loss_sum / n
        test_accuracy = evaluate(model, ds.x_test, ds.y_test)
        history.append({"epoch": epoch, "train_loss": train_loss, "test_accuracy": test_accuracy})
        if on_epoch is not None:
            on_epoch(epoch, train_loss, test_accuracy)
    model.eval()
    return history


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1], computed in eval mode without gradients."""
    if x.shape[0] == 0:
        raise EdgejpqError("cannot evaluate accuracy on an empty set of samples")
    if x.shape[0] != y.shape[0]:
        raise EdgejpqError(f"evaluate: {x.shape[0]} inputs but {y.shape[0]} labels")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
                yb = torch.from_numpy(np.asarray(y[start : start + batch_size], dtype=np.int64))
                correct += int((model(xb).argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / x.shape[0]


def save_float_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_spec: str,
    data_spec: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    history: list[dict],
) -> None:
    """Atomically write a float checkpoint (temporary file in the same folder, then os.replace)."""
    path = Path(path)
    checkpoint: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "model_spec": model_spec,
        "data_spec": data_spec,
        # A list, not a tuple: plain containers keep the file loadable with weights_only=True everywhere.
        "input_shape": [int(d) for d in input_shape],
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "history": [dict(h) for h in history],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target so os.replace is an atomic rename on one filesystem.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_float_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Validate a float checkpoint, rebuild its model and load the weights; returns (model in eval mode, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise EdgejpqError(f"checkpoint {path} does not exist")
    try:
        # weights_only=True: loading a checkpoint must not execute pickled code.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgejpqError(f"{path}: not a readable edgejpq float checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict):
        raise EdgejpqError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise EdgejpqError(
            f"{path}: field 'format' is {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT!r}; "
            "create it with `edgejpq train`"
        )
    if ckpt.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
        raise EdgejpqError(
            f"{path}: field 'schema_version' is {ckpt.get('schema_version')!r}, this edgejpq reads "
            f"{CHECKPOINT_SCHEMA_VERSION}; retrain or use a matching edgejpq version"
        )
    expected_types: dict[str, type | tuple[type, ...]] = {
        "model_spec": str,
        "data_spec": str,
        "input_shape": (list, tuple),
        "num_classes": int,
        "state_dict": dict,
        "history": list,
    }
    for field, typ in expected_types.items():
        if not isinstance(ckpt.get(field), typ):
            raise EdgejpqError(f"{path}: field {field!r} is missing or has type {type(ckpt.get(field)).__name__}")
    input_shape = tuple(int(d) for d in ckpt["input_shape"])
    model = zoo.build_model(ckpt["model_spec"], input_shape, ckpt["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise EdgejpqError(
            f"{path}: field 'state_dict' does not fit model {ckpt['model_spec']!r} ({exc}); "
            "was the model file changed after training?"
        ) from exc
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta["input_shape"] = input_shape
    return model, meta
