"""The training setups the benchmarks time, built exactly as ``east train`` builds them.

A ``StepSetup`` is what ``east.train.setup.build`` makes for one cell — the model
(``build_model``, moved to the device, channels_last where the loop uses it), the
sparsifier (``build_sparsifier``, initialised), SGD (``build_optimizer``), the lr schedule
(``build_schedule``) and a ``StepContext`` with the loop's autocast dtype — and one step is
the loop's own ``train_step``. Only the data differ: one fixed synthetic CIFAR-shaped batch,
so that the input pipeline (measured on its own) adds nothing to the step times.

The schedules are those of the paper's CIFAR run: 250 epochs of 352 steps (45,000 training
images, batch 128), whatever batch size is timed, so that "a step where no mask update is
due" or "a step after the DyReLU phase-out" mean what they mean in a real run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from east.config import CellConfig, DataConfig, ModelConfig, TrainConfig
from east.data.registry import dataset_info
from east.errors import EastError
from east.models import EastResNet, build_model
from east.sparsity.methods import Sparsifier, build_sparsifier
from east.sparsity.presets import resolve_sparsity
from east.train.devices import resolve_channels_last, resolve_device, resolve_precision
from east.train.distributed import DistEnv
from east.train.optim import build_optimizer, build_schedule
from east.train.step import StepContext, train_step

PAPER_EPOCHS = 250
PAPER_BATCH = 128
DATASET = "cifar10"


def paper_run_length() -> tuple[int, int]:
    """(steps per epoch, total steps) of the paper's CIFAR protocol: 352 and 88,000."""
    info = dataset_info(DATASET)
    train_images = info.split_sizes(0.1)["train"]
    steps_per_epoch = math.ceil(train_images / PAPER_BATCH)
    return steps_per_epoch, steps_per_epoch * PAPER_EPOCHS


@dataclass(frozen=True)
class DeviceSetup:
    """The device and the loop's settings for it: bf16 autocast and channels_last on CUDA,
    fp32 NCHW on the CPU (``train.precision`` and ``train.channels_last`` left at auto)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def label(self) -> str:
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return "cpu"


def resolve_bench_device(name: str) -> DeviceSetup:
    """``cpu`` or ``cuda``; a one-line EastError when CUDA is asked for but absent."""
    if name not in ("cpu", "cuda"):
        raise EastError(f"--device: expected cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise EastError(f"--device cuda: no CUDA device is available here (torch "
                        f"{torch.__version__}); run `east bench --device cpu`")
    device = resolve_device(name, "auto", DistEnv())
    return DeviceSetup(device, resolve_precision("auto", device),
                       resolve_channels_last("auto", device))


def make_cell(arch: str, sparse: dict[str, Any], *, batch_size: int = PAPER_BATCH,
              seed: int = 0) -> CellConfig:
    """A CIFAR-10 cell of the paper's protocol (the TrainConfig defaults are that protocol)
    with the method fields ``sparse`` (method defaults filled by the presets)."""
    return CellConfig(
        row="bench",
        seed=seed,
        data=DataConfig(name=DATASET),
        model=ModelConfig(arch=arch),
        train=TrainConfig(epochs=PAPER_EPOCHS, batch_size=batch_size),
        sparsity=resolve_sparsity(dict(sparse), "bench.sparsity"),
    )


def due_iterations(sparsifier: Sparsifier, total_steps: int) -> dict[str, int]:
    """How many times each mask-update rule of the sparsifier fires over the run (iterations
    1..total_steps), from the rules' own schedules."""
    counts = {rule.name: 0 for rule in sparsifier.rules}
    for it in range(1, total_steps + 1):
        for rule in sparsifier.rules:
            if rule.due(it):
                counts[rule.name] += 1
    return counts


def quiet_step(sparsifier: Sparsifier, start: int = 0) -> int:
    """The first step >= start after which no mask update is due (an ordinary step)."""
    step = start
    while any(rule.due(step + 1) for rule in sparsifier.rules):
        step += 1
    return step


def update_step(sparsifier: Sparsifier, rule_name: str, start: int = 0) -> int:
    """The first step >= start after which the rule ``rule_name`` is due."""
    rules = [r for r in sparsifier.rules if r.name == rule_name]
    if not rules:
        raise ValueError(f"the sparsifier has no {rule_name!r} rule "
                         f"(it has {[r.name for r in sparsifier.rules]})")
    step = start
    while not rules[0].due(step + 1):
        step += 1
        if step > sparsifier.total_steps:
            raise ValueError(f"rule {rule_name!r} is never due after step {start}")
    return step


def phase_out_step(sparsifier: Sparsifier) -> int:
    """The first ordinary step whose forward pass runs at beta = 0."""
    return quiet_step(sparsifier, sparsifier.timing.dyrelu_end)


@dataclass
class StepSetup:
    """One cell ready to step: the loop's objects plus one fixed batch."""

    label: str
    cell: CellConfig
    model: EastResNet
    sparsifier: Sparsifier
    ctx: StepContext
    x: Tensor
    y: Tensor
    step: int

    def run(self, step: int | None = None) -> None:
        """One optimizer step of the training loop (``train_step``) at ``step``."""
        train_step(self.ctx, self.x, self.y, self.step if step is None else step)

    @property
    def masked_weights(self) -> int:
        return int(self.sparsifier.counts.n_unique)


def synthetic_batch(batch_size: int, image_size: int, dev: DeviceSetup, *, num_classes: int = 10,
                    in_channels: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A normalised-looking float32 batch and labels, on the device, in the loop's layout."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_channels, image_size, image_size, generator=generator)
    y = torch.randint(0, num_classes, (batch_size,), generator=generator)
    x = x.to(dev.device)
    if dev.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(dev.device)


def build_step_setup(label: str, arch: str, sparse: dict[str, Any], dev: DeviceSetup, *,
                     batch_size: int, image_size: int = 32, when: str = "quiet",
                     seed: int = 0) -> StepSetup:
    """Build a cell's training objects as ``Trainer._setup`` does and pick its step.

    ``when``: ``"quiet"`` — the first step with no mask update due (β as the schedule says
    there, i.e. 1 for DyReLU runs); ``"phase_out"`` — the first such step at β = 0.
    """
    cell = make_cell(arch, sparse, batch_size=batch_size, seed=seed)
    info = dataset_info(cell.data.name)
    steps_per_epoch, total_steps = paper_run_length()
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=info.num_classes, in_channels=info.in_channels,
                        stem=cell.model.stem, activation=cell.activation,
                        sharing_ratio=cell.sharing_ratio).to(dev.device)
    if dev.channels_last:
        model = model.to(memory_format=torch.channels_last)
    sparsifier = build_sparsifier(model, cell.sparsity, steps_per_epoch=steps_per_epoch,
                                  total_steps=total_steps, seed=seed, debug=False)
    optimizer = build_optimizer(model, cell.train)
    schedule = build_schedule(cell.train, steps_per_epoch, total_steps)
    ctx = StepContext(model=model, optimizer=optimizer, sparsifier=sparsifier,
                      schedule=schedule, device=dev.device, amp_dtype=dev.amp_dtype,
                      label_smoothing=cell.train.label_smoothing,
                      grad_clip=cell.train.grad_clip)
    sparsifier.initialize(model)
    if when == "quiet":
        step = quiet_step(sparsifier)
    elif when == "phase_out":
        step = phase_out_step(sparsifier)
    else:
        raise ValueError(f"when: expected quiet or phase_out, got {when!r}")
    # The loop sets β before the forward pass of each step (only when it changes).
    model.set_beta(sparsifier.beta(step))
    x, y = synthetic_batch(batch_size, image_size, dev, num_classes=info.num_classes,
                           in_channels=info.in_channels, seed=seed)
    return StepSetup(label, cell, model, sparsifier, ctx, x, y, step)
