"""The measurements of ``east bench``; each returns ``CaseResult``s.

1. ``masked_step``  — a RigL step with no mask update due (masks enforced on gradients,
   weights and optimizer state, as on 3999 of every 4000 steps) / a dense step.
2. ``dyrelu_step``  — a dense step with DyReLU-B at β = 1 / the same with ReLU, at 1, 2
   and all CPU threads, and ``dyrelu_memory``: in ``east.bench.dyrelu``;
   ``east_step``    — an EAST step after the DyReLU phase-out (β = 0, sharing, masks, no
   update due) / a dense step of the unshared ReLU network.
3. ``rigl_update``, ``east_update`` — the mask updates of a whole paper run as a share of
   its training time (see ``update_cases``).
4. ``input_pipeline``, ``loader_vs_indexing`` — see ``pipeline_cases``.
5. ``peak_memory``  — in ``east.bench.memory`` (one subprocess per run).
6. ``planning``     — in ``east.bench.planning``.

Every step is the training loop's ``train_step`` on objects built as ``east train`` builds
them (``east.bench.workload``); every mask update is the sparsifier's own
``after_backward``/``after_step`` at a step where the update is due.
"""

from __future__ import annotations

import gc
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from east.bench.results import CaseResult, Target
from east.bench.timing import Arm, Paired, interleave, spread, time_units
from east.bench.workload import (
    DeviceSetup,
    StepSetup,
    build_step_setup,
    due_iterations,
    paper_run_length,
    quiet_step,
    update_step,
)
from east.data.loader import InMemoryLoader, cpu_generator
from east.data.registry import dataset_info
from east.models import build_model
from east.sparsity.methods import Sparsifier, build_sparsifier
from east.train.optim import build_optimizer

SPARSITY = 0.999  # the paper's extreme regime; enforcement costs the same at any level
MASKED_STEP_TARGET = Target("<=", 1.03)
EAST_STEP_TARGET = Target("<=", 1.05)
UPDATE_SHARE_TARGET = Target("<=", 1.0)  # percent of training time
PIPELINE_TARGET = Target(">=", 0.95)

DENSE = {"method": "dense"}
RIGL = {"method": "rigl", "sparsity": SPARSITY}
EAST = {"method": "east", "sparsity": SPARSITY}
DENSE_DYRELU = {"method": "dense", "dyrelu": True}
RIGL_CYCLIC = {"method": "rigl", "sparsity": SPARSITY, "cyclic": True}


@dataclass(frozen=True)
class Reps:
    """Interleaved repeats, timed units per arm per repeat, untimed warm-up units."""

    repeats: int
    inner: int = 1
    warmup: int = 1


@dataclass(frozen=True)
class Plan:
    """What a run measures, and how often: full (the report) or quick (a smoke run)."""

    quick: bool
    batch_size: int
    image_size: int
    masked_archs: tuple[str, ...]
    dyrelu_arch: str
    east_arch: str
    update_arch: str
    memory_arch: str
    pipeline_images: int
    grid: str
    step_reps: dict[str, Reps]
    update_reps: Reps
    pipeline_reps: Reps
    memory_repeats: int
    dense_step_units: int
    threads: int | None = None  # torch CPU threads to use (None: leave torch's setting)
    dyrelu_threads: tuple[int, ...] = ()  # CPU threads the DyReLU step is timed at (): as is

    def reps(self, arch: str) -> Reps:
        return self.step_reps[arch]

    @classmethod
    def make(cls, *, quick: bool, device: str) -> Plan:
        gpu = device == "cuda"
        if quick:
            # Seconds on a 2-core CPU: resnet20 everywhere, tiny batches and images, two
            # repeats. A smoke run of every code path, not a measurement.
            batch, size = (128, 32) if gpu else (8, 16)
            reps = Reps(3, 3, 2) if gpu else Reps(2, 1, 1)
            return cls(
                quick=True, batch_size=batch, image_size=size, masked_archs=("resnet20",),
                dyrelu_arch="resnet20", east_arch="resnet20", update_arch="resnet20",
                memory_arch="resnet20", pipeline_images=8192 if gpu else 1024,
                grid="params/demo.yaml", step_reps={"resnet20": reps},
                update_reps=Reps(2, 1, 1), pipeline_reps=Reps(2, 1, 1), memory_repeats=1,
                dense_step_units=1, threads=None if gpu else 1,
                dyrelu_threads=() if gpu else (1,),
            )
        if gpu:
            step_reps = {arch: Reps(15, 10, 5) for arch in
                         ("resnet20", "resnet18", "resnet34", "resnet50")}
            update_reps, pipeline_reps, dense_units = Reps(9, 1, 2), Reps(9, 1, 1), 20
        else:
            # Repeats sized so that the full run takes minutes on 2 cores.
            step_reps = {"resnet20": Reps(9, 2, 2), "resnet18": Reps(7, 1, 1),
                         "resnet34": Reps(5, 1, 1), "resnet50": Reps(3, 1, 1)}
            update_reps, pipeline_reps, dense_units = Reps(5, 1, 1), Reps(7, 1, 1), 2
        return cls(
            quick=False, batch_size=128, image_size=32, masked_archs=("resnet20", "resnet18"),
            dyrelu_arch="resnet18", east_arch="resnet34", update_arch="resnet50",
            memory_arch="resnet18", pipeline_images=dataset_info("cifar10").split_sizes(0.1)
            ["train"], grid="params/paper.yaml", step_reps=step_reps, update_reps=update_reps,
            pipeline_reps=pipeline_reps, memory_repeats=2, dense_step_units=dense_units,
            dyrelu_threads=() if gpu else dyrelu_thread_counts(usable_cores()),
        )


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def dyrelu_thread_counts(cores: int) -> tuple[int, ...]:
    """1, 2 and all usable cores, without repeats and never more threads than cores."""
    return tuple(sorted({t for t in (1, 2, cores) if t <= max(1, cores)}))


def _collect() -> None:
    """Free what the caller just deleted, so one case's memory does not slow the next."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ratio_case(case_id: str, kind: str, title: str, measure: str, baseline: StepSetup,
                variant: StepSetup, reps: Reps, dev: DeviceSetup, target: Target | None,
                notes: str = "") -> CaseResult:
    paired = interleave(Arm(baseline.label, baseline.run), Arm(variant.label, variant.run),
                        repeats=reps.repeats, inner=reps.inner, warmup=reps.warmup,
                        sync=dev.sync)
    ratio = paired.ratio_spread()
    batch = int(baseline.x.shape[0])
    details = {
        **paired.as_dict(),
        "arch": baseline.cell.model.arch,
        "batch_size": batch,
        "image_size": int(baseline.x.shape[-1]),
        "baseline": baseline.label,
        "variant": variant.label,
        "baseline_step": baseline.step,
        "variant_step": variant.step,
        "baseline_images_per_s": batch / spread(paired.baseline).median,
        "variant_images_per_s": batch / spread(paired.variant).median,
        "masked_weights": variant.masked_weights,
        "repeats": reps.repeats,
        "units_per_repeat": reps.inner,
    }
    return CaseResult(case_id, kind, title, measure, "x", ratio.median, ratio, target,
                      details, notes)


# ----------------------------------------------------------------------------- 1 and 2


def masked_step_case(arch: str, plan: Plan, dev: DeviceSetup) -> tuple[CaseResult, float]:
    """RigL step with masks enforced, no update due / dense step. Also returns the dense
    step's median seconds (the input-pipeline case compares the loader with it)."""
    dense = build_step_setup("dense step", arch, DENSE, dev, batch_size=plan.batch_size,
                             image_size=plan.image_size)
    rigl = build_step_setup("RigL masked step", arch, RIGL, dev, batch_size=plan.batch_size,
                            image_size=plan.image_size)
    result = _ratio_case(
        f"masked_step/{arch}", "masked_step", f"Masked step / dense step, {arch}",
        f"RigL at {SPARSITY:.1%} sparsity, a step with no mask update due (gradients, weights "
        "and momentum masked) / a dense step", dense, rigl, plan.reps(arch), dev,
        MASKED_STEP_TARGET,
    )
    dense_s = result.details["baseline_s"]["median"]
    del dense, rigl
    _collect()
    return result, dense_s


def east_step_case(plan: Plan, dev: DeviceSetup) -> CaseResult:
    arch = plan.east_arch
    dense = build_step_setup("dense step", arch, DENSE, dev, batch_size=plan.batch_size,
                             image_size=plan.image_size)
    east = build_step_setup("EAST step after phase-out", arch, EAST, dev,
                            batch_size=plan.batch_size, image_size=plan.image_size,
                            when="phase_out")
    if east.sparsifier.beta(east.step) != 0.0:
        raise AssertionError("the EAST step must run after the phase-out (beta = 0)")
    counts = east.model.weight_counts()
    result = _ratio_case(
        f"east_step/{arch}", "east_step", f"EAST step after phase-out / dense step, {arch}",
        f"EAST at {SPARSITY:.1%}: beta = 0 (DyReLU runs as ReLU), in-stage weight sharing "
        "(R = 2), masks enforced, no update due / a dense step of the unshared ReLU network",
        dense, east, plan.reps(arch), dev, EAST_STEP_TARGET,
        notes=f"{counts.n_shared:,} of {counts.n_full:,} conv weights are shared "
              f"({arch}: blocks >= 2 of each stage reuse block 1's convs)",
    )
    result.details["shared_weights"] = int(counts.n_shared)
    del dense, east
    _collect()
    return result


# ----------------------------------------------------------------------------- 3


class UpdateBench:
    """A model's sparsifier, optimizer state and dense synthetic gradients, restorable, so
    that every timed call of ``after_backward`` + ``after_step`` starts from one state."""

    def __init__(self, arch: str, sparse: dict[str, Any], dev: DeviceSetup,
                 seed: int = 0) -> None:
        from east.bench.workload import make_cell

        steps_per_epoch, total_steps = paper_run_length()
        cell = make_cell(arch, sparse, seed=seed)
        info = dataset_info(cell.data.name)
        torch.manual_seed(seed)
        self.model = build_model(arch, num_classes=info.num_classes,
                                 in_channels=info.in_channels, stem=cell.model.stem,
                                 activation=cell.activation,
                                 sharing_ratio=cell.sharing_ratio).to(dev.device)
        self.sparsifier = build_sparsifier(self.model, cell.sparsity,
                                           steps_per_epoch=steps_per_epoch,
                                           total_steps=total_steps, seed=seed, debug=False)
        self.sparsifier.initialize(self.model)
        self.optimizer = build_optimizer(self.model, cell.train)
        self.total_steps = total_steps
        generator = torch.Generator().manual_seed(seed + 1)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # Synthetic dense gradients: what backward leaves before after_backward masks them.
        self.grads = [torch.randn(p.shape, generator=generator).to(dev.device)
                      for p in self.params]
        self.quiet = quiet_step(self.sparsifier)
        self._load_grads()
        # One real step, so that SGD has momentum buffers for the update to zero.
        self.sparsifier.after_backward(self.quiet)
        self.optimizer.step()
        self.sparsifier.after_step(self.quiet, self.optimizer)
        self.snapshot()
        self.updates: list[dict[str, Any]] = []

    def _load_grads(self) -> None:
        for p, g in zip(self.params, self.grads, strict=True):
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)

    def snapshot(self) -> None:
        self._masks = [m.clone() for m in self.sparsifier.masks.values()]
        self._state = self.sparsifier.state_dict()

    def restore(self) -> None:
        """Dense gradients back, masks and sparsifier state back to the snapshot."""
        self._load_grads()
        with torch.no_grad():
            for buf, saved in zip(self.sparsifier.masks.values(), self._masks, strict=True):
                buf.copy_(saved)
        self.sparsifier.load_state_dict(self._state)

    def sparsifier_calls(self, step: int) -> Callable[[], None]:
        """What the loop calls around ``optimizer.step()`` at ``step`` (the optimizer step
        itself is the same on update and ordinary steps, so it is left out of both)."""

        def run() -> None:
            self.sparsifier.after_backward(step)
            self.sparsifier.after_step(step, self.optimizer)
            if step != self.quiet:
                self.updates.append(dict(self.sparsifier.last_update))

        return run

    def compare(self, update_at: int, reps: Reps, dev: DeviceSetup) -> dict[str, Any]:
        """Interleave ordinary-step calls with update-step calls; the extra seconds an
        update costs, per repeat."""
        plain = Arm("ordinary step", self.sparsifier_calls(self.quiet), self.restore)
        update = Arm("update step", self.sparsifier_calls(update_at), self.restore)
        paired = interleave(plain, update, repeats=reps.repeats, inner=reps.inner,
                            warmup=reps.warmup, sync=dev.sync)
        done = [u for u in self.updates if u.get("step") == update_at]
        # Weights moved: the update's own counts, or the change of the active total.
        start_nnz = sum(self._state["budgets"].values())
        moved = [max(sum(v for k, v in u.items()
                         if k.split(".")[-1] in ("dropped", "grown", "pruned")),
                     abs(int(u.get("nnz", start_nnz)) - start_nnz))
                 for u in done]
        if not done or min(moved) <= 0:
            raise AssertionError(f"no mask changed at step {update_at}: {self.updates[-1:]}")
        extra = [u - p for p, u in zip(paired.baseline, paired.variant, strict=True)]
        return {"paired": paired, "extra": extra, "moved": moved, "last": done[-1]}


def _steepest_cyclic_update(sparsifier: Sparsifier) -> tuple[int, int]:
    """(previous, this) update steps of the cyclic rule where its density moves most in
    one interval (its most expensive kind of update) within the first cycle."""
    rule = next(r for r in sparsifier.rules if r.name == "cyclic")
    schedule = rule.schedule  # type: ignore[attr-defined]
    due = [it for it in range(1, schedule.length + 1) if rule.due(it)]
    best = max(itertools.pairwise(due),
               key=lambda pair: abs(schedule.density(pair[1]) - schedule.density(pair[0])))
    return best[0] - 1, best[1] - 1


def _east_update_counts(total_steps: int) -> dict[str, int]:
    """Updates of EAST's own schedule over a paper run (the sparsifier of the EAST preset
    on a small model: the schedule does not depend on the model)."""
    from east.bench.workload import make_cell

    steps_per_epoch, _ = paper_run_length()
    cell = make_cell("resnet20", EAST)
    model = build_model("resnet20", num_classes=10, in_channels=3,
                        activation=cell.activation, sharing_ratio=cell.sharing_ratio)
    sparsifier = build_sparsifier(model, cell.sparsity, steps_per_epoch=steps_per_epoch,
                                  total_steps=total_steps, seed=0, debug=False)
    return due_iterations(sparsifier, total_steps)


def dense_step_seconds(arch: str, plan: Plan, dev: DeviceSetup) -> dict[str, Any]:
    """Median seconds of a dense training step of ``arch`` at the plan's batch."""
    dense = build_step_setup("dense step", arch, DENSE, dev, batch_size=plan.batch_size,
                             image_size=plan.image_size)
    reps = plan.reps(arch)
    arm = Arm("dense step", dense.run)
    for _ in range(reps.warmup):
        dense.run()
    seconds = [time_units(arm, 1, dev.sync) for _ in range(plan.dense_step_units)]
    del arm, dense
    _collect()
    return {"arch": arch, "batch_size": plan.batch_size, "seconds": spread(seconds).as_dict(),
            "per_step_s": seconds}


def update_cases(plan: Plan, dev: DeviceSetup) -> list[CaseResult]:
    """One RigL update and one cyclic update on ``plan.update_arch`` (ResNet-50: 23.5 M
    masked weights), each amortised over a 250-epoch CIFAR run of 352 steps per epoch, as a
    share of that run's training time at the measured dense step time of the same model.

    share = Σ_rules (updates of the rule in the run × extra seconds of one update)
            / (total steps × dense step seconds)

    "Extra seconds" are those of ``after_backward`` + ``after_step`` at an update step
    minus the same calls at an ordinary step. The counts come from the sparsifiers' own
    schedules: RigL's ΔT = 4000 over the whole run; EAST's cyclic updates every 100
    iterations through two cycles of 20 % each, then RigL's.
    """
    arch = plan.update_arch
    _, total_steps = paper_run_length()
    step = dense_step_seconds(arch, plan, dev)
    step_s = step["seconds"]["median"]

    rigl = UpdateBench(arch, RIGL, dev)
    rigl_counts = due_iterations(rigl.sparsifier, total_steps)
    rigl_at = update_step(rigl.sparsifier, "drop_grow")
    rigl_run = rigl.compare(rigl_at, plan.update_reps, dev)
    masked = int(rigl.sparsifier.counts.n_unique)
    del rigl
    _collect()

    cyclic = UpdateBench(arch, RIGL_CYCLIC, dev)
    before, cyclic_at = _steepest_cyclic_update(cyclic.sparsifier)
    # Move to the density of the previous cyclic update (a real update), then snapshot.
    cyclic.sparsifier.after_backward(before)
    cyclic.sparsifier.after_step(before, cyclic.optimizer)
    cyclic.snapshot()
    cyclic_run = cyclic.compare(cyclic_at, plan.update_reps, dev)
    del cyclic
    _collect()

    east_counts = _east_update_counts(total_steps)
    denominator = total_steps * step_s

    def shares(pairs: list[tuple[int, list[float]]]) -> list[float]:
        per_repeat = zip(*(extra for _, extra in pairs), strict=True)
        return [100.0 * sum(n * e for (n, _), e in zip(pairs, extras, strict=True))
                / denominator for extras in per_repeat]

    common = {"arch": arch, "masked_weights": masked, "total_steps": total_steps,
              "dense_step": step}
    rigl_share = shares([(rigl_counts["drop_grow"], rigl_run["extra"])])
    rigl_case = CaseResult(
        f"rigl_update/{arch}", "rigl_update", f"RigL mask updates, {arch}",
        f"{rigl_counts['drop_grow']} RigL updates (ΔT = 4000) over a 250-epoch "
        "run, as a share of its training time", "%", spread(rigl_share).median,
        spread(rigl_share), UPDATE_SHARE_TARGET,
        {**common, "updates_in_run": rigl_counts, "update_step": rigl_at,
         "update_extra_s": spread(rigl_run["extra"]).as_dict(),
         **_paired_details(rigl_run), "share_percent_per_repeat": rigl_share},
        notes="synthetic dense gradients, real tensors; the first update (largest drop "
              "fraction) is timed",
    )
    pairs = [(east_counts.get("cyclic", 0), cyclic_run["extra"]),
             (east_counts.get("drop_grow", 0), rigl_run["extra"])]
    east_share = shares(pairs)
    east_case = CaseResult(
        f"east_update/{arch}", "east_update", f"EAST mask updates (cyclic + RigL), {arch}",
        f"{east_counts.get('cyclic', 0)} cyclic updates (every 100 iterations through the "
        f"cycles, 40 % of training) + {east_counts.get('drop_grow', 0)} RigL updates, as a "
        "share of training time", "%", spread(east_share).median, spread(east_share),
        UPDATE_SHARE_TARGET,
        {**common, "updates_in_run": east_counts, "cyclic_update_step": cyclic_at,
         "cyclic_from_step": before,
         "cyclic_update_extra_s": spread(cyclic_run["extra"]).as_dict(),
         "rigl_update_extra_s": spread(rigl_run["extra"]).as_dict(),
         **_paired_details(cyclic_run), "share_percent_per_repeat": east_share},
        notes=f"cyclic update timed where the density moves most per interval, on the "
              f"unshared {arch} ({masked:,} masked weights; EAST's shared model has fewer "
              "unique weights, so this is an upper bound)",
    )
    return [rigl_case, east_case]


def _paired_details(run: dict[str, Any]) -> dict[str, Any]:
    paired = run["paired"]
    return {"ordinary_step_calls_s": spread(paired.baseline).as_dict(),
            "update_step_calls_s": spread(paired.variant).as_dict(),
            "weights_moved_per_update": run["moved"][-1],
            "last_update": run["last"]}


# ----------------------------------------------------------------------------- 4


def _endless(loader: InMemoryLoader) -> Iterator[tuple[Tensor, Tensor]]:
    while True:
        yield from loader  # the loader moves on to the next epoch by itself


def _time_pipeline(plan: Plan, dev: DeviceSetup) -> tuple[Paired, int]:
    """Loader epochs vs plain-indexing epochs, interleaved; (timings, batches per epoch).
    Everything big dies with this frame."""
    info = dataset_info("cifar10")
    n, batch = plan.pipeline_images, plan.batch_size
    generator = torch.Generator().manual_seed(0)
    size = plan.image_size  # CIFAR's 32 (quick CPU runs: 16)
    images = torch.randint(0, 256, (n, info.in_channels, size, size), dtype=torch.uint8,
                           generator=generator)
    labels = torch.randint(0, info.num_classes, (n,), generator=generator)
    loader = InMemoryLoader(images, labels, batch_size=batch, shuffle=True, augment=True,
                            crop_padding=info.crop_padding, mean=info.mean, std=info.std,
                            device=dev.device, seed=0, channels_last=dev.channels_last)
    batches = len(loader)
    stream = _endless(loader)

    def loader_epoch() -> None:
        for _ in range(batches):
            next(stream)

    flat = loader.normalize(images.to(dev.device), dev.channels_last)
    flat_labels = labels.to(dev.device)
    epoch = [0]

    def indexing_epoch() -> None:
        order = torch.randperm(n, generator=cpu_generator(1, epoch[0])).to(dev.device)
        epoch[0] += 1
        for b in range(batches):
            index = order[b * batch:(b + 1) * batch]
            _ = (flat[index], flat_labels[index])  # the gathers are the work

    reps = plan.pipeline_reps
    paired = interleave(Arm("plain indexing", indexing_epoch), Arm("loader", loader_epoch),
                        repeats=reps.repeats, inner=reps.inner, warmup=reps.warmup,
                        sync=dev.sync)
    return paired, batches


def pipeline_cases(plan: Plan, dev: DeviceSetup, step_s: float,
                   step_arch: str) -> list[CaseResult]:
    """The training loader on a CIFAR-sized uint8 set (random pixels: the loader's work does
    not depend on them), one epoch per timed unit, against

    - the model (``input_pipeline``): efficiency = t_step / (t_step + t_batch), the share of
      the dense training throughput that survives loading each batch in the same stream
      (``step_s``: the measured dense step of ``step_arch``). The loop loads synchronously,
      so this is the throughput the loop gets, relative to free input (on CUDA the two could
      overlap a little, so it is a lower bound);
    - plain indexing (``loader_vs_indexing``): one gather per batch from a pre-normalised
      float32 copy of the set, in an order drawn the same way: the least any loader can do.
    """
    n, batch = plan.pipeline_images, plan.batch_size
    paired, batches = _time_pipeline(plan, dev)
    _collect()
    loader_batch_s = [s / batches for s in paired.variant]
    efficiency = [step_s / (step_s + t) for t in loader_batch_s]
    raw = [b / v for b, v in zip(paired.baseline, paired.variant, strict=True)]
    common = {"images": n, "batch_size": batch, "batches_per_epoch": batches,
              "augment": "pad 4 + random crop 32 + flip, normalise",
              "loader_images_per_s": n / spread(paired.variant).median,
              "indexing_images_per_s": n / spread(paired.baseline).median,
              "loader_epoch_s": spread(paired.variant).as_dict(),
              "indexing_epoch_s": spread(paired.baseline).as_dict()}
    return [
        CaseResult(
            "input_pipeline/cifar10", "input_pipeline",
            f"Input pipeline vs the model's consumption, {step_arch}",
            f"training throughput with the InMemoryLoader feeding a dense {step_arch} step "
            "/ with free input: t_step / (t_step + t_batch)", "fraction",
            spread(efficiency).median, spread(efficiency), PIPELINE_TARGET,
            {**common, "step_arch": step_arch, "step_s": step_s,
             "model_images_per_s": batch / step_s,
             "loader_batch_s": spread(loader_batch_s).as_dict()},
            notes="the target is stated for GPUs; it is evaluated on every device",
        ),
        CaseResult(
            "loader_vs_indexing/cifar10", "loader_vs_indexing",
            "InMemoryLoader vs plain indexing",
            "images/s of the augmenting loader / images/s of one gather per batch from "
            "pre-normalised tensors", "x", spread(raw).median, spread(raw), None, common,
        ),
    ]
