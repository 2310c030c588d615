"""``east evaluate RUN_DIR``: test accuracy, sparsity, FLOPs and effective sparsity of a
trained cell, written to ``RUN_DIR/metrics.json``.

Definitions (docs/design.md, "Evaluation"):
- ``test_acc``: the final model (``model.pt``; the paper's number); ``test_acc_best_val``:
  the best-validation model (``best.pt``).
- ``n_masked``: masked weights of the *unshared* network (N_full, the denominator of the
  nominal sparsity); ``nnz_masked``: non-zero unique masked weights; ``density_masked =
  nnz_masked / n_masked`` (= 1 - s at the target, weight sharing included).
  ``n_masked_unique``/``density_unique``: the same over unique tensors (what masks hold).
- ``n_params``/``nnz_params``: every parameter the inference network (beta = 0) uses,
  unique tensors once (DyReLU hyper-function layers are unused then and not counted);
  ``density_all = nnz_params / n_params``.
- ``flops_inference`` / ``flops_inference_dense``: per example, ``east.flops``;
  ``flops_train``: ``east.flops.training_flops`` over the run's history.
- ``effective_nnz``: non-zero masked weights on some input-to-output path
  (``east.flops``); ``effective_sparsity = 1 - effective_nnz / n_masked``;
  ``collapsed_layers``: masked tensors with no effective weight.
- ``wall_time_s``: the training wall time (from summary.json); ``eval_time_s``: this
  command's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from east.errors import EastError
from east.io import atomic_write_json

METRICS_FILE = "metrics.json"


def load_trained_model(run_dir: Path, cell: Any, which: str, device: torch.device,
                       steps: int) -> tuple[torch.nn.Module, float]:
    """A trained model from ``model.pt``/``best.pt`` (masks included), in eval mode at the
    DyReLU beta of its last training step; returns (model, beta)."""
    from east.data.registry import dataset_info
    from east.models import build_model
    from east.sparsity.methods import build_sparsifier

    path = run_dir / which
    if not path.exists():
        raise EastError(f"{path}: missing (train the cell first)")
    info = dataset_info(cell.data.name)
    model = build_model(
        cell.model.arch, num_classes=info.num_classes, in_channels=info.in_channels,
        stem=cell.model.stem, activation=cell.activation, sharing_ratio=cell.sharing_ratio,
    )
    epochs = cell.train.epochs
    sparsifier = build_sparsifier(model, cell.sparsity, steps_per_epoch=max(1, steps // epochs),
                                  total_steps=steps, seed=cell.seed)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as error:  # truncated file, wrong architecture
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise EastError(f"{path}: cannot load ({first})") from None
    beta = float(sparsifier.beta(max(steps - 1, 0)))
    model.set_beta(beta)
    return model.to(device).eval(), beta


def evaluate_run(run_dir: str | Path, *, device: str | None = None,
                 md5s: dict[str, str] | None = None) -> dict[str, Any]:
    """Compute and write ``metrics.json``; returns the metrics."""
    from east.data import build_test_loader, dataset_info
    from east.flops import analyze, training_flops
    from east.train import distributed as D
    from east.train.history import HISTORY_FILE, SUMMARY_FILE, read_history, read_summary
    from east.train.loop import evaluate_loader, resolve_device, resolve_precision
    from east.train.run import read_cell

    began = time.perf_counter()
    run = Path(run_dir)
    cell = read_cell(run / "cell.json")
    summary = read_summary(run / SUMMARY_FILE)
    # train.device is an execution knob of training: evaluate wherever this runs.
    dev = resolve_device(device, "auto", D.DistEnv())
    amp = resolve_precision(cell.train.precision, dev)
    test_loader = build_test_loader(
        cell.data, eval_batch_size=cell.train.eval_batch_size, device=dev,
        workers=cell.train.workers, md5s=md5s,
    )
    info = dataset_info(cell.data.name)
    steps = int(summary["steps"])

    def test_accuracy(which: str) -> tuple[torch.nn.Module, float]:
        model, _ = load_trained_model(run, cell, which, dev, steps)
        _, acc, _ = evaluate_loader(model, test_loader, device=dev, amp_dtype=amp)
        return model, acc

    final, test_acc = test_accuracy("model.pt")
    _, test_acc_best = test_accuracy("best.pt")

    analysis = analyze(final.cpu(), (info.in_channels, info.image_size, info.image_size))
    history = read_history(run / HISTORY_FILE)
    n_masked = analysis.n_masked_full
    density_now = history[-1]["density"] if history else analysis.nnz_masked / analysis.n_masked
    flops_train = training_flops(
        analysis.flops, analysis.flops_dense,
        [(float(r["density"]), int(r["examples"])) for r in history], float(density_now),
    )
    metrics: dict[str, Any] = {
        "cell_id": cell.cell_id(),
        "row": cell.row,
        "arch": cell.model.arch,
        "dataset": cell.data.name,
        "method": cell.sparsity.method,
        "sparsity": cell.sparsity.sparsity,
        "seed": cell.seed,
        "test_acc": test_acc,
        "test_acc_best_val": test_acc_best,
        "best_val_acc": summary.get("best_val_acc"),
        "final_val_acc": summary.get("final_val_acc"),
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
        "flops_train": flops_train,
        "effective_nnz": analysis.effective_nnz,
        "effective_sparsity": 1.0 - analysis.effective_nnz / n_masked,
        "collapsed_layers": analysis.collapsed_layers,
        "layers": [layer.as_dict() for layer in analysis.layers],
        "wall_time_s": summary.get("wall_time_s"),
        "eval_time_s": time.perf_counter() - began,
    }
    atomic_write_json(run / METRICS_FILE, metrics)
    return metrics


def cmd_evaluate(args: argparse.Namespace) -> int:
    metrics = evaluate_run(args.run_dir, device=args.device)
    print(
        f"east: {metrics['cell_id']} seed {metrics['seed']}: test acc {metrics['test_acc']:.4f} "
        f"(best-val model {metrics['test_acc_best_val']:.4f}), density "
        f"{metrics['density_masked']:.4g}, effective sparsity "
        f"{metrics['effective_sparsity']:.4g}, {metrics['flops_inference'] / 1e6:.3f} MFLOPs"
        f" -> {Path(args.run_dir) / METRICS_FILE}"
    )
    return 0
