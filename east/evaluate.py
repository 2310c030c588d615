"""``east evaluate RUN_DIR``: test accuracy, sparsity, FLOPs and effective sparsity of a
trained cell, written to ``RUN_DIR/metrics.json``.

Definitions (docs/design.md, "Evaluation"):
- ``test_acc``: the final model (``model.pt``; the paper's number); ``test_acc_best_val``:
  the best-validation model (``best.pt``: chosen among final-architecture epochs only, see
  ``best``: its epoch, step, β, nnz and how it was selected, as recorded in the file).
- ``n_masked``: masked weights of the *unshared* network (N_full, the denominator of the
  nominal sparsity); ``nnz_masked``: non-zero unique masked weights; ``density_masked =
  nnz_masked / n_masked`` (= 1 - s at the target, weight sharing included).
  ``n_masked_unique``/``density_unique``: the same over unique tensors (what masks hold).
- ``n_params``/``nnz_params``: every parameter the inference network (beta = 0) uses,
  unique tensors once (DyReLU hyper-function layers are unused then and not counted);
  ``density_all = nnz_params / n_params``.
- ``flops_inference`` / ``flops_inference_dense``: per example, ``east.flops``;
  ``flops_train``: what training spent (``east.train.cost``, RigL's accounting, booked
  step by step); ``flops_train_parts``: its parts (sparse_steps, dense_gradient_steps,
  scoring, dyrelu); ``flops_train_vs_dense``: over dense training of the same network
  (= 1.0 for dense).
- ``effective_nnz``: non-zero masked weights on some input-to-output path
  (``east.flops``); ``effective_sparsity = 1 - effective_nnz / n_masked``;
  ``collapsed_layers``: masked tensors with no effective weight.
- ``wall_time_s``: the training wall time (from summary.json); ``eval_time_s``: this
  command's. ``status``: ``done``, or ``diverged`` (then no model exists: the accuracies
  are null and ``diverged`` says where).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from east.errors import EastError
from east.io import atomic_write_json
from east.rundir import (
    BEST_FILE,
    CELL_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    load_model_file,
)
from east.runlock import reads_run


def load_trained_model(run_dir: Path, cell: Any, which: str,
                       device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A trained model from ``model.pt``/``best.pt`` (masks included), in eval mode at the
    DyReLU β the file records; returns (model, the file's meta: epoch, step, beta, nnz,
    val_acc, selection)."""
    from east.models import model_for_cell
    from east.sparsity.budget import masked_parameters
    from east.sparsity.masks import register_masks

    path = Path(run_dir) / which
    if not path.exists():
        raise EastError(f"{path}: missing (train the cell first)")
    loaded = load_model_file(path)
    model = model_for_cell(cell)
    register_masks(model, masked_parameters(model))  # the file holds the mask buffers
    try:
        model.load_state_dict(loaded.state_dict)
    except RuntimeError as error:  # another architecture
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise EastError(f"{path}: does not fit {cell.cell_id()} ({first})") from None
    model.set_beta(float(loaded.meta["beta"]))
    return model.to(device).eval(), loaded.meta


@reads_run("evaluate")  # shared run lock: waits while a trainer writes the run
def evaluate_run(run_dir: str | Path, *, device: str | None = None,
                 md5s: dict[str, str] | None = None) -> dict[str, Any]:
    """Compute and write ``metrics.json``; returns the metrics."""
    from east.train.history import read_summary
    from east.train.run import read_cell

    began = time.perf_counter()
    run = Path(run_dir)
    cell = read_cell(run / CELL_FILE)
    summary = read_summary(run / SUMMARY_FILE)
    if summary.get("status") == "diverged":
        metrics = _diverged_metrics(cell, summary)
    else:
        metrics = _trained_metrics(run, cell, summary, device=device, md5s=md5s)
    metrics["eval_time_s"] = time.perf_counter() - began
    atomic_write_json(run / METRICS_FILE, metrics)
    return metrics


def _identity(cell: Any) -> dict[str, Any]:
    return {
        "cell_id": cell.cell_id(),
        "row": cell.row,
        "arch": cell.model.arch,
        "dataset": cell.data.name,
        "method": cell.sparsity.method,
        "sparsity": cell.sparsity.sparsity,
        "seed": cell.seed,
    }


def _cost(summary: dict[str, Any]) -> dict[str, Any]:
    """The training-FLOPs account of summary.json (None for runs of an older east)."""
    record = summary.get("flops_train")
    if not isinstance(record, dict):
        return {"flops_train": None, "flops_train_parts": None, "flops_train_vs_dense": None}
    parts = ("sparse_steps", "dense_gradient_steps", "scoring", "dyrelu")
    return {
        "flops_train": record["total"],
        "flops_train_parts": {k: record[k] for k in parts},
        "flops_train_vs_dense": record["vs_dense"],
    }


def _diverged_metrics(cell: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """A diverged cell has no model: its metrics say so, where, and what it spent."""
    return {
        **_identity(cell),
        "status": "diverged",
        "diverged": summary.get("diverged"),
        "test_acc": None,
        "test_acc_best_val": None,
        "best_val_acc": None,
        "final_val_acc": None,
        **_cost(summary),
        "environment": summary.get("environment"),
        "wall_time_s": summary.get("wall_time_s"),
    }


def _trained_metrics(run: Path, cell: Any, summary: dict[str, Any], *, device: str | None,
                     md5s: dict[str, str] | None) -> dict[str, Any]:
    from east.data import build_test_loader, dataset_info
    from east.flops import analyze
    from east.train import distributed as D
    from east.train.devices import resolve_device, resolve_precision
    from east.train.step import evaluate_loader

    # train.device is an execution knob of training: evaluate wherever this runs.
    dev = resolve_device(device, "auto", D.DistEnv())
    amp = resolve_precision(cell.train.precision, dev)
    test_loader = build_test_loader(
        cell.data, eval_batch_size=cell.train.eval_batch_size, device=dev,
        workers=cell.train.workers, md5s=md5s,
    )
    info = dataset_info(cell.data.name)

    def test_accuracy(which: str) -> tuple[torch.nn.Module, dict[str, Any], float]:
        model, meta = load_trained_model(run, cell, which, dev)
        _, acc, _ = evaluate_loader(model, test_loader, device=dev, amp_dtype=amp)
        return model, meta, acc

    final, final_meta, test_acc = test_accuracy(MODEL_FILE)
    _, best_meta, test_acc_best = test_accuracy(BEST_FILE)

    analysis = analyze(final.cpu(), (info.in_channels, info.image_size, info.image_size))
    n_masked = analysis.n_masked_full
    return {
        **_identity(cell),
        "status": "done",
        "test_acc": test_acc,
        "test_acc_best_val": test_acc_best,
        "best_val_acc": summary.get("best_val_acc"),
        "final_val_acc": summary.get("final_val_acc"),
        "best": {k: best_meta.get(k) for k in ("epoch", "step", "beta", "nnz", "val_acc",
                                               "selection")},
        "final_beta": final_meta.get("beta"),
        "n_masked": n_masked,
        "nnz_masked": analysis.nnz_masked,
        "n_masked_unique": analysis.n_masked,
        "n_params": analysis.n_params,
        "nnz_params": analysis.nnz_params,
        "density_masked": analysis.nnz_masked / n_masked,
        "density_unique": analysis.nnz_masked / analysis.n_masked,
        "density_all": analysis.nnz_params / analysis.n_params,
        "flops_inference": analysis.flops,
        "flops_inference_dense": analysis.flops_dense,
        **_cost(summary),
        "effective_nnz": analysis.effective_nnz,
        "effective_sparsity": 1.0 - analysis.effective_nnz / n_masked,
        "collapsed_layers": analysis.collapsed_layers,
        "layers": [layer.as_dict() for layer in analysis.layers],
        "environment": summary.get("environment"),
        "wall_time_s": summary.get("wall_time_s"),
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    metrics = evaluate_run(args.run_dir, device=args.device)
    where = Path(args.run_dir) / METRICS_FILE
    label = f"east: {metrics['cell_id']} seed {metrics['seed']}"
    if metrics["status"] == "diverged":
        at = metrics["diverged"] or {}
        print(f"{label}: diverged (epoch {at.get('epoch')}, step {at.get('step')}) -> {where}")
        return 0
    ratio = metrics["flops_train_vs_dense"]
    print(
        f"{label}: test acc {metrics['test_acc']:.4f} "
        f"(best-val model {metrics['test_acc_best_val']:.4f}, epoch "
        f"{metrics['best']['epoch']}), density "
        f"{metrics['density_masked']:.4g}, effective sparsity "
        f"{metrics['effective_sparsity']:.4g}, {metrics['flops_inference'] / 1e6:.3f} MFLOPs"
        + (f", training {ratio:.3g}x dense FLOPs" if ratio is not None else "")
        + f" -> {where}"
    )
    return 0
