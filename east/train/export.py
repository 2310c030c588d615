"""``east export RUN_DIR --out FILE``: a trained unshared ReLU model as a torchvision
ResNet ``state_dict``.

Only resnet18/34/50 have torchvision counterparts, and only unshared models (a shared
block has no weights of its own). A DyReLU model exports when its training ended with
beta = 0 (it is then exactly a ReLU network). The export is checked before it is written:
it loads strictly into ``torchvision.models.resnetXX`` and gives the same logits as the
trained model on a random batch. A CIFAR-stem model needs the same stem on the torchvision
side: ``m.conv1 = nn.Conv2d(C, 64, 3, 1, 1, bias=False); m.maxpool = nn.Identity()``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from east.errors import EastError
from east.io import atomic_write
from east.runlock import reads_run

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")


def torchvision_twin(arch: str, num_classes: int, in_channels: int, stem: str) -> nn.Module:
    """The torchvision ResNet with the same shapes as an east model of this config."""
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


@reads_run("export")  # shared run lock: waits while a trainer writes the run
def export_run(run_dir: str | Path, out: str | Path) -> Path:
    from east.data.registry import dataset_info
    from east.evaluate import load_trained_model
    from east.train.history import SUMMARY_FILE, read_summary
    from east.train.run import read_cell

    run = Path(run_dir)
    cell = read_cell(run / "cell.json")
    if cell.model.arch not in TORCHVISION_ARCHS:
        raise EastError(f"{run}: model.arch {cell.model.arch!r} has no torchvision counterpart "
                        f"(exportable: {', '.join(TORCHVISION_ARCHS)})")
    if cell.sharing_ratio is not None:
        raise EastError(f"{run}: weight-shared models cannot be exported to torchvision "
                        "(shared blocks own no weights)")
    summary = read_summary(run / SUMMARY_FILE)
    steps = int(summary["steps"])
    model, beta = load_trained_model(run, cell, "model.pt", torch.device("cpu"), steps)
    if beta != 0.0:
        raise EastError(f"{run}: DyReLU is still active at the end of training "
                        f"(beta = {beta:g}); only ReLU networks export to torchvision")
    state = {k: v.detach().cpu() for k, v in model.export_torchvision_state_dict().items()}
    info = dataset_info(cell.data.name)
    twin = torchvision_twin(cell.model.arch, info.num_classes, info.in_channels,
                            cell.model.stem)
    try:
        twin.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RuntimeError(
            f"export does not match torchvision's {cell.model.arch}: {first}"
        ) from error
    twin.eval()
    x = torch.randn(4, info.in_channels, info.image_size, info.image_size,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (twin(x) - model(x)).abs().max().item()
    if not diff <= 1e-4:
        raise RuntimeError(f"torchvision twin disagrees with the trained model (max |diff| "
                           f"{diff:.3g})")
    out = Path(out)
    atomic_write(out, lambda handle: torch.save(state, handle))
    return out


def cmd_export(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.out)
    print(f"east: wrote {out} (torchvision state_dict; load with strict=True)")
    return 0
