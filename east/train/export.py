"""``east export RUN_DIR``: a trained cell's final network, for use outside east.

Two formats (``--format``):

- ``torchvision`` (default; ``--out FILE`` required): a ``torchvision.models.resnet18/34/50``
  state_dict. Weight-shared models are *materialised* (``east.models.export``): every user
  of a shared tensor gets its own copy, its sharing scalar folded in, and its own BN (never
  shared). Only resnet18/34/50 have torchvision counterparts. A CIFAR-stem model needs the
  same stem on the torchvision side: ``m.conv1 = nn.Conv2d(C, 64, 3, 1, 1, bias=False);
  m.maxpool = nn.Identity()`` (``torchvision_twin`` builds it).
- ``sparse`` (``--out`` default ``RUN_DIR/model.east``): the deployable sparse model of
  ``east.deploy.sparse`` (dead channels removed, convs stored sparse), for ``east infer``
  and ``east.deploy.load_sparse``; any arch. Unless ``--no-measure``, its speed against the
  dense twin is measured (batch 1 and 64, this machine's CPU, interleaved) and written with
  its counts to ``RUN_DIR/inference.json``, which the report reads.

The model must be the final network: beta = 0 (DyReLU is then exactly ReLU); beta > 0 is
refused with a one-line reason. Every export is checked before it is written: the exported
network gives the trained model's logits (fp32 tolerance) on a random batch. Non-zero
weights are reported both ways: unique (what training kept, a shared tensor once) and
materialised (what the exported network stores).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from east.errors import EastError
from east.io import atomic_write, atomic_write_json
from east.rundir import INFERENCE_FILE, SPARSE_FILE
from east.runlock import reads_run

FORMATS = ("torchvision", "sparse")
INFERENCE_SCHEMA = 1


@dataclass
class ExportResult:
    """What ``export_run`` wrote, with the numbers the CLI prints."""

    path: Path
    format: str
    counts: dict[str, int]
    max_abs_diff: float
    details: dict[str, Any] = field(default_factory=dict)

    def summary_line(self) -> str:
        c = self.counts
        both = (f"non-zero weights: {c['nnz_unique']:,} unique (as trained; a shared tensor "
                f"once), {c['nnz_materialized']:,} materialised (what the export stores"
                + (f"; {c['nnz_stored']:,} after dead-channel removal" if "nnz_stored" in c
                   else "") + ")")
        if self.format == "torchvision":
            return (f"east: wrote {self.path} (torchvision state_dict; load with "
                    f"strict=True); {both}")
        d = self.details
        text = (f"east: wrote {self.path} (sparse model; `east infer` or "
                f"east.deploy.load_sparse); {both}; channels computed "
                f"{d['channels']['computed']:,} of {d['channels']['total']:,}; FLOPs/image "
                f"{_si(d['flops']['stored'])} vs {_si(d['flops']['dense'])} dense")
        measured = d.get("measured")
        if measured:
            parts = [f"batch {b}: {m['speedup']['median']:.1f}x"
                     for b, m in measured["batches"].items()]
            text += (f"; measured speed-up vs {d['baseline']} ({measured['threads']} thread"
                     f"{'s' if measured['threads'] != 1 else ''}): " + ", ".join(parts))
        return text


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g}"


def _check_logits(exported: nn.Module | Any, model: nn.Module, shape: tuple[int, ...],
                  what: str) -> float:
    x = torch.randn((4, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        got = exported(x)
    diff = float((got - want).abs().max())
    if not diff <= 1e-4 * max(1.0, float(want.abs().max())):
        raise RuntimeError(f"{what} disagrees with the trained model (max |diff| {diff:.3g})")
    return diff


@reads_run("export")  # shared run lock: waits while a trainer writes the run
def export_run(run_dir: str | Path, out: str | Path | None = None, *,
               format: str = "torchvision", which: str = "model.pt",
               measure: bool = True) -> ExportResult:
    """Export the run's final model (``which``: model.pt) in ``format`` (module docstring)."""
    from east.data.registry import dataset_info
    from east.evaluate import load_trained_model
    from east.models.export import TORCHVISION_ARCHS, active_dyrelu, nonzero_counts
    from east.rundir import CELL_FILE
    from east.train.run import read_cell

    if format not in FORMATS:
        raise EastError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
    run = Path(run_dir)
    cell = read_cell(run / CELL_FILE)
    if format == "torchvision" and cell.model.arch not in TORCHVISION_ARCHS:
        raise EastError(f"{run}: model.arch {cell.model.arch!r} has no torchvision counterpart "
                        f"(exportable: {', '.join(TORCHVISION_ARCHS)}; `--format sparse` "
                        "exports any arch)")
    if format == "torchvision" and out is None:
        raise EastError("--out: required for --format torchvision")
    model, meta = load_trained_model(run, cell, which, torch.device("cpu"))
    beta = float(meta.get("beta", 0.0))
    live = active_dyrelu(model)
    if beta != 0.0 or live:
        beta = beta or next(iter(live.values()))
        raise EastError(f"{run / which}: DyReLU is still active (beta = {beta:g}); only the "
                        "final network (beta = 0, plain ReLU) exports")
    counts = nonzero_counts(model).as_dict()
    info = dataset_info(cell.data.name)
    shape = (info.in_channels, info.image_size, info.image_size)
    if format == "torchvision":
        return _export_torchvision(model, cell.model.arch, info, Path(out), counts, shape)
    return _export_sparse(run, model, cell, info, Path(out) if out else run / SPARSE_FILE,
                          counts, shape, meta, which, measure)


def _export_torchvision(model: nn.Module, arch: str, info: Any, out: Path,
                        counts: dict[str, int], shape: tuple[int, ...]) -> ExportResult:
    from east.models.export import torchvision_state_dict, torchvision_twin

    state = {k: v.detach().cpu() for k, v in torchvision_state_dict(model).items()}
    twin = torchvision_twin(arch, info.num_classes, info.in_channels, model.stem)
    try:
        twin.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RuntimeError(f"export does not match torchvision's {arch}: {first}") from error
    diff = _check_logits(twin.eval(), model, shape, "torchvision twin")
    atomic_write(out, lambda handle: torch.save(state, handle))
    return ExportResult(out, "torchvision", counts, diff)


def _export_sparse(run: Path, model: nn.Module, cell: Any, info: Any, out: Path,
                   counts: dict[str, int], shape: tuple[int, ...], meta: dict[str, Any],
                   which: str, measure: bool) -> ExportResult:
    from east.deploy.measure import dense_twin, measure_speedup
    from east.deploy.sparse import compile_sparse, save_sparse

    resize = 256 if cell.model.stem == "imagenet" else None
    source = {"run_dir": str(run), "model_file": which, "cell_id": cell.cell_id(),
              "seed": cell.seed, "dataset": cell.data.name, "method": cell.sparsity.method,
              "sparsity": cell.sparsity.sparsity, "epoch": meta.get("epoch"),
              "step": meta.get("step")}
    sparse = compile_sparse(model, image_size=info.image_size, mean=info.mean, std=info.std,
                            resize=resize, meta={"source": source})
    diff = _check_logits(sparse, model, shape, "sparse model")
    save_sparse(sparse, out)
    counts = {**counts, "nnz_stored": int(sparse.meta["nnz"]["nnz_stored"])}
    details: dict[str, Any] = {"channels": sparse.meta["channels"],
                               "flops": sparse.meta["flops"]}
    dense, baseline = dense_twin(model)
    details["baseline"] = baseline
    if measure:
        details["measured"] = measure_speedup(sparse, dense)
    flops = sparse.meta["flops"]
    record = {
        "schema": INFERENCE_SCHEMA,
        "cell_id": cell.cell_id(), "seed": cell.seed, "model_file": which,
        "sparse_file": _relative(out, run),
        "nnz": {**sparse.meta["nnz"]}, "channels": sparse.meta["channels"], "flops": flops,
        "flops_ratio": flops["dense"] / flops["stored"] if flops["stored"] else None,
        "max_abs_diff": diff, "baseline": baseline, "measured": details.get("measured"),
    }
    atomic_write_json(run / INFERENCE_FILE, record)
    return ExportResult(out, "sparse", counts, diff, details)


def _relative(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), base.resolve())
    except ValueError:  # another drive (Windows)
        return str(path)


def cmd_export(args: argparse.Namespace) -> int:
    result = export_run(args.run_dir, args.out, format=args.format,
                        measure=not getattr(args, "no_measure", False))
    print(result.summary_line())
    return 0
