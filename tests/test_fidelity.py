"""Training as the authors' code does where it changes results, checked against references
computed by hand: gradient clipping scope, the training-FLOPs account, the best model
chosen among final-architecture epochs, the named switches and what a run records."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from train_helpers import load_meta, load_weights, make_cell

from east.config import CellConfig, ModelConfig, TrainConfig, build_section
from east.data.positioned import shard_range
from east.models import build_model
from east.train import distributed as D
from east.train.optim import build_schedule
from east.train.run import train_cell
from east.train.state import BestTracker
from east.train.step import StepContext, train_step

# ----------------------------------------------------------------------------- clipping


class TinyMasked(nn.Module):
    """logits = W x with a fixed 0/1 mask on W: CE's gradient is (softmax − onehot) xᵀ."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.mask = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]],
                                 dtype=torch.float64)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


class FixedMask:
    """The sparsifier's part in a step, for a fixed mask: mask gradients, keep zeros."""

    def __init__(self, model: TinyMasked) -> None:
        self.model = model

    def after_backward(self, step: int) -> None:
        self.model.weight.grad.mul_(self.model.mask)

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            self.model.weight.mul_(self.model.mask)


DATA_G = torch.Generator().manual_seed(1)
X = torch.randn(6, 4, generator=DATA_G, dtype=torch.float64) * 3.0
Y = torch.tensor([0, 1, 2, 0, 1, 2])


def hand_gradient(w: torch.Tensor) -> torch.Tensor:
    """d mean CE / dW = (softmax(X Wᵀ) − onehot(Y))ᵀ X / B, written out."""
    logits = X @ w.t()
    p = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    p = p / p.sum(dim=1, keepdim=True)
    onehot = torch.zeros_like(p)
    onehot[torch.arange(len(Y)), Y] = 1.0
    return (p - onehot).t() @ X / len(Y)


def one_step(scope: str, clip: float, env: D.DistEnv | None = None) -> torch.Tensor:
    """One train_step at lr 1, no momentum or decay: returns W_before − W_after."""
    env = env or D.DistEnv()
    model = TinyMasked()
    before = model.weight.detach().clone()
    cfg = build_section(TrainConfig, {"epochs": 1, "lr": 1.0, "momentum": 0.0,
                                      "nesterov": False, "weight_decay": 0.0,
                                      "lr_schedule": "constant"}, "train")
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ctx = StepContext(model=model, optimizer=optimizer, sparsifier=FixedMask(model),
                      schedule=build_schedule(cfg, 1, 1), device=torch.device("cpu"),
                      amp_dtype=None, label_smoothing=0.0, grad_clip=clip,
                      grad_clip_scope=scope, env=env)
    first, stop = shard_range(0, len(Y), env.rank, env.world_size)  # what a loader yields
    train_step(ctx, X[first:stop], Y[first:stop], 0, len(Y))
    return before - model.weight.detach()


@pytest.mark.parametrize("scope", ["dense", "masked"])
def test_clip_factor_is_one_over_max_1_norm_over_c(scope: str) -> None:
    model = TinyMasked()
    g = hand_gradient(model.weight.detach())
    norm = float((g if scope == "dense" else g * model.mask).norm())
    clip = norm / 4.0  # so that clipping acts
    factor = 1.0 / max(1.0, norm / clip)
    delta = one_step(scope, clip)
    # torch's clip_grad_norm_ divides by (‖g‖ + 1e-6): equal to the factor within 1e-6/‖g‖.
    assert torch.allclose(delta, factor * g * model.mask, rtol=1e-5, atol=1e-12)
    # Pruned positions hold gradient, so the dense norm is the larger one here.
    assert float(g.norm()) > float((g * model.mask).norm())


def test_dense_scope_clips_harder_than_masked_and_no_clip_when_small() -> None:
    g = hand_gradient(TinyMasked().weight.detach())
    mask = TinyMasked().mask
    clip = float((g * mask).norm())  # exactly the masked norm: masked scope leaves it alone
    dense, masked = one_step("dense", clip), one_step("masked", clip)
    assert torch.allclose(masked, g * mask, rtol=1e-5)
    assert torch.allclose(dense, g * mask * (clip / float(g.norm())), rtol=1e-5)
    big = 10 * float(g.norm())
    # (train_step takes the loss in float32, hence the tolerance.)
    assert torch.allclose(one_step("dense", big), g * mask, rtol=1e-6)


def _clip_rank(rank: int, world: int, port: int, scope: str, clip: float, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    env = D.DistEnv(rank=rank, world_size=world, local_rank=rank)
    D.init_distributed(env, torch.device("cpu"))
    try:
        torch.save(one_step(scope, clip, env), f"{out}/rank{rank}.pt")
    finally:
        D.shutdown(True)


@pytest.mark.parametrize("scope", ["dense", "masked"])
def test_two_gloo_ranks_clip_by_the_same_factor_as_one_process(tmp_path, scope: str) -> None:
    clip = 0.05
    single = one_step(scope, clip)
    mp.spawn(_clip_rank, args=(2, D.free_port(), scope, clip, str(tmp_path)), nprocs=2,
             join=True)
    for rank in (0, 1):
        delta = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(delta, single, rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------- FLOPs

# resnet20 on 8x8 digits, counted by hand: 2·H_out·W_out per weight of each conv (stem and
# stage 1 at 8x8, stage 2 at 4x4, stage 3 at 2x2; shortcuts at their stage's output), 2 per
# classifier weight.
def hand_per_weight(name: str) -> int:
    if name == "fc.weight":
        return 2
    if name.startswith("layer3"):
        return 2 * 4
    if name.startswith("layer2"):
        return 2 * 16
    return 2 * 64


def hand_dyrelu_forward() -> int:
    """resnet20's DyReLU branches: FC C→C/4 and C/4→4C per activation = 2·(C²/4 + C²)."""
    widths = [16] + [16] * 6 + [32] * 6 + [64] * 6  # the stem's, then two per block
    return sum(2 * (c * (c // 4) + (c // 4) * 4 * c) for c in widths)


def _mask_counts(run: Any) -> dict[str, int]:
    """Active weights per masked tensor, from model.pt's mask buffers (a weight in the mask
    counts even if its value happens to be exactly 0: training computes with it)."""
    state = load_weights(run / "model.pt")
    return {key.replace("weight_mask", "weight"): int(mask.sum())
            for key, mask in state.items() if key.endswith("weight_mask")}


def test_training_flops_equal_the_hand_sum_for_rigl_with_dyrelu(tmp_path) -> None:
    from east.evaluate import evaluate_run

    # One epoch of 21 steps (1294 images, batch 64: 20 x 64 + 14); RigL updates after
    # every 2nd step (it = 2, 4, ..., 20) grow by gradient; β > 0 for steps 0..9.
    cell = make_cell(method="rigl", sparsity=0.99, epochs=1,
                     sparse={"update_interval": 2, "dyrelu": True, "dyrelu_start": 5,
                             "dyrelu_end": 10})
    run = tmp_path / "run"
    assert train_cell(cell, run, progress=False).exit_code == 0
    metrics = evaluate_run(run)
    nnz = _mask_counts(run)  # RigL keeps every layer's count through its updates
    numel = {layer["name"]: layer["numel"] for layer in metrics["layers"]}
    assert nnz.keys() == numel.keys()
    f_s = sum(hand_per_weight(n) * k for n, k in nnz.items())
    f_d = sum(hand_per_weight(n) * k for n, k in numel.items())
    assert f_d == metrics["flops_inference_dense"] and f_s >= metrics["flops_inference"]
    batches = [64] * 20 + [14]
    dense_steps = {s for s in range(21) if (s + 1) % 2 == 0}
    sparse = sum(3 * f_s * b for s, b in enumerate(batches) if s not in dense_steps)
    dense = sum((2 * f_s + f_d) * b for s, b in enumerate(batches) if s in dense_steps)
    dyrelu = sum(3 * hand_dyrelu_forward() * b for s, b in enumerate(batches) if s < 10)
    assert metrics["flops_train_parts"] == {"sparse_steps": sparse,
                                            "dense_gradient_steps": dense, "scoring": 0,
                                            "dyrelu": dyrelu}
    assert metrics["flops_train"] == sparse + dense + dyrelu
    assert metrics["flops_train_vs_dense"] == pytest.approx(
        (sparse + dense + dyrelu) / (3 * f_d * 1294))


def test_training_flops_count_snip_scoring_and_gradual_densities(tmp_path) -> None:
    from east.evaluate import evaluate_run

    snip = make_cell(method="snip", sparsity=0.99, epochs=1)
    run = tmp_path / "snip"
    assert train_cell(snip, run, progress=False).exit_code == 0
    metrics = evaluate_run(run)
    f_d, f_s = metrics["flops_inference_dense"], metrics["flops_inference"]
    # SNIP scores one batch (64 images) on the dense net: forward + backward.
    assert metrics["flops_train_parts"] == {"sparse_steps": 3 * f_s * 1294,
                                            "dense_gradient_steps": 0,
                                            "scoring": 3 * f_d * 64, "dyrelu": 0}
    # GMP from dense: the first steps cost the dense network, each step its own density.
    gmp = make_cell(method="gmp", sparsity=0.9, epochs=1,
                    sparse={"prune_start": 0, "prune_end": 10, "prune_interval": 5})
    run = tmp_path / "gmp"
    assert train_cell(gmp, run, progress=False).exit_code == 0
    metrics = evaluate_run(run)
    parts = metrics["flops_train_parts"]
    assert parts["dense_gradient_steps"] == 0 and parts["scoring"] == 0
    # Steps 0-4 train the dense net (pruning starts after step 4, at it = 5), steps 5-9 the
    # cubic schedule's density of it = 5 (between dense and the target), steps 10-20 the
    # target: so the total lies strictly between these two hand sums.
    f_d, f_s = metrics["flops_inference_dense"], metrics["flops_inference"]
    lower = 3 * (f_d * 5 * 64 + f_s * 5 * 64 + f_s * (10 * 64 + 14))
    upper = 3 * (f_d * 10 * 64 + f_s * (10 * 64 + 14))
    assert lower < parts["sparse_steps"] < upper
    assert metrics["flops_train"] == parts["sparse_steps"]


# ----------------------------------------------------------------------------- best model


def test_best_tracker_skips_mid_cycle_and_dyrelu_epochs() -> None:
    history = [
        {"epoch": 1, "val_acc": 0.90, "final_architecture": False},  # mid-cycle, 3x denser
        {"epoch": 2, "val_acc": 0.95, "final_architecture": False},  # the highest of all
        {"epoch": 3, "val_acc": 0.60, "final_architecture": True},
        {"epoch": 4, "val_acc": 0.70, "final_architecture": True},
        {"epoch": 5, "val_acc": 0.70, "final_architecture": True},  # a tie: the earliest
        {"epoch": 6, "val_acc": None, "final_architecture": True},
    ]
    best = BestTracker()
    chosen = [r["epoch"] for r in history if best.consider(r)]
    assert chosen == [3, 4]
    assert (best.epoch, best.val_acc) == (4, 0.70)


def test_east_best_model_has_the_final_architecture(tmp_path) -> None:
    from east.evaluate import evaluate_run

    cell = make_cell(method="east", sparsity=0.99, epochs=6,
                     sparse={"update_interval": 3, "cycle_interval": 2})
    run = tmp_path / "run"
    assert train_cell(cell, run, progress=False).exit_code == 0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    target = summary["nnz"]
    eligible = [r for r in history if r["final_architecture"]]
    assert eligible and all(r["beta"] == 0 and r["nnz"] == target for r in eligible)
    assert any(r["nnz"] > target for r in history)  # the cycles made some epochs denser
    best = max(eligible, key=lambda r: r["val_acc"])
    meta = load_meta(run / "best.pt")
    assert meta["epoch"] == best["epoch"] == summary["best_epoch"]
    assert (meta["beta"], meta["nnz"]) == (0.0, target)
    # evaluate reads β from the file: a DyReLU buffer set in the file is what it uses.
    metrics = evaluate_run(run)
    assert metrics["best"] == {k: meta[k] for k in metrics["best"]}


def test_no_eligible_epoch_says_best_is_final(tmp_path) -> None:
    # β never reaches 0 within the run: no epoch has the final (ReLU) architecture.
    cell = make_cell(method="rigl", sparsity=0.9, epochs=2,
                     sparse={"dyrelu": True, "dyrelu_start": 0, "dyrelu_end": "200%"})
    run = tmp_path / "run"
    assert train_cell(cell, run, progress=False).exit_code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] is None and summary["best_val_acc"] is None
    assert summary["best"]["selection"] == (
        "final model (no epoch ended with the final architecture)")
    assert load_meta(run / "best.pt") == summary["best"]
    assert 0 < summary["best"]["beta"] < 1


# ----------------------------------------------------------------------------- switches


def test_conv_init_switch_draws_pytorch_default_or_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    default = build_model("resnet20", num_classes=10, in_channels=3)
    torch.manual_seed(0)
    he = build_model("resnet20", num_classes=10, in_channels=3, conv_init="kaiming_fan_out")
    conv = default.layer2[0].conv1.weight  # 32 x 16 x 3 x 3
    # PyTorch's default: kaiming-uniform with a = √5, i.e. U(±1/√fan_in); He fan_out:
    # N(0, 2/fan_out) with fan_out = 32·9.
    bound = 1.0 / math.sqrt(16 * 9)
    conv = conv.detach()
    assert float(conv.abs().max()) <= bound
    assert float(conv.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert float(he.layer2[0].conv1.weight.detach().std()) == pytest.approx(math.sqrt(2 / (32 * 9)),
                                                                  rel=0.1)
    # Only convs differ: the classifier and BN keep their constructors' init.
    assert torch.equal(default.bn1.weight, he.bn1.weight)


def test_version_1_cells_read_with_the_behaviour_they_were_trained_with() -> None:
    cell = make_cell(method="rigl", sparsity=0.9)
    old = cell.to_dict()
    old["schema_version"] = 1
    del old["train"]["grad_clip_scope"], old["train"]["threads"]
    del old["model"]["conv_init"], old["sparsity"]["regrow_dropped"]
    upgraded = CellConfig.from_dict(old)
    assert upgraded.train.grad_clip_scope == "masked"
    assert upgraded.model.conv_init == "kaiming_fan_out"
    assert upgraded.sparsity.regrow_dropped is False
    assert upgraded.schema_version == 2 and upgraded != cell
    # Today's defaults are the authors' values.
    assert (cell.train.grad_clip_scope, cell.model.conv_init, cell.sparsity.regrow_dropped,
            cell.sparsity.update_end) == ("dense", "pytorch", True, "100%")
    assert ModelConfig.CONV_INITS == ("pytorch", "kaiming_fan_out")


def test_the_cell_sets_the_thread_count_and_summary_records_the_environment(tmp_path) -> None:
    cell = make_cell(epochs=1, train={"threads": 2})
    before = torch.get_num_threads()
    seen: list[int] = []

    class Spy:
        def on_step_end(self, trainer: Any, step: int) -> None:
            seen.append(torch.get_num_threads())

    assert train_cell(cell, tmp_path / "run", progress=False, max_steps=3,
                      callbacks=[Spy()]).exit_code == 0
    assert seen == [2, 2, 2] and torch.get_num_threads() == before
    assert train_cell(cell, tmp_path / "run", progress=False).exit_code == 0
    env = json.loads((tmp_path / "run" / "summary.json").read_text())["environment"]
    assert env["threads"] == 2 and env["torch"] == torch.__version__
    assert env["deterministic"] is True and env["world_size"] == 1
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_grad_clip_scope_and_threads_are_validated_in_grids(tmp_path) -> None:
    from east.grid import check_grids

    grid = tmp_path / "g.yaml"
    grid.write_text("rows:\n  - name: r\n    method: rigl\n    arch: resnet20\n"
                    "    dataset: digits\n    sparsity: [0.9]\n"
                    "    train: {grad_clip_scope: sparse, threads: 0}\n"
                    "    model: {conv_init: xavier}\n", encoding="utf-8")
    _, errors = check_grids([grid])
    text = "\n".join(errors)
    assert "train.grad_clip_scope: must be one of dense, masked, got 'sparse'" in text
    assert "train.threads: must be >= 1 or null" in text
    assert "model.conv_init: must be one of pytorch, kaiming_fan_out, got 'xavier'" in text


def test_hand_gradient_formula_equals_autograd() -> None:
    """The clipping tests' reference gradient is right."""
    model = TinyMasked()
    w = model.weight.detach().clone().requires_grad_(True)
    F.cross_entropy(X @ w.t(), Y).backward()
    assert torch.allclose(w.grad, hand_gradient(model.weight.detach()), atol=1e-12)
