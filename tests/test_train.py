"""`east train`: schedules, optimizer groups, precision, exact resume (SIGKILL and SIGTERM in
subprocesses), corrupt checkpoints, failures that must lose nothing, exit codes."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from train_helpers import (
    assert_same_run,
    load_weights,
    make_cell,
    snapshot,
    start_east,
    write_cell,
)

from east import cli
from east.config import TrainConfig, build_section
from east.errors import EastError
from east.train import checkpoint as ckpt
from east.train.history import read_history
from east.train.optim import build_optimizer, build_schedule, parameter_groups
from east.train.run import train_cell
from east.train.step import StepContext, train_step

STEPS_PER_EPOCH = 21  # digits: 1,294 training images in batches of 64


def _train_cfg(**kw) -> TrainConfig:
    return build_section(TrainConfig, {"epochs": 10, **kw}, "train")


# ----------------------------------------------------------------------------- schedules


def _torch_lrs(scheduler_factory, steps: int) -> list[float]:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = scheduler_factory(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_multistep_milestones_are_durations_and_match_torch() -> None:
    cfg = _train_cfg(lr_schedule="multistep", lr_milestones=["50%", "2ep+3it"], lr_gamma=0.2)
    schedule = build_schedule(cfg, steps_per_epoch=10, total_steps=100)
    assert schedule.milestones == (23, 50)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [23, 50], 0.2), 100)
    assert [schedule.lr(s) for s in range(100)] == pytest.approx(ref, rel=1e-12)


def test_cosine_and_onecycle_match_torch() -> None:
    cosine = build_schedule(_train_cfg(lr_schedule="cosine"), 10, 100)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 100), 100)
    assert [cosine.lr(s) for s in range(100)] == pytest.approx(ref, rel=1e-9, abs=1e-15)
    onecycle = build_schedule(_train_cfg(lr_schedule="onecycle"), 10, 100)
    ref = _torch_lrs(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=100,
                                                      cycle_momentum=False), 100)
    assert [onecycle.lr(s) for s in range(100)] == pytest.approx(ref, rel=1e-9)


def test_linear_warmup_then_schedule() -> None:
    schedule = build_schedule(_train_cfg(lr_schedule="cosine", warmup="1ep"), 4, 40)
    assert [schedule.lr(s) for s in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert schedule.lr(4) == pytest.approx(0.1)
    assert schedule.lr(22) == pytest.approx(0.05)  # half-way through the 36 cosine steps
    constant = build_schedule(_train_cfg(lr_schedule="constant", warmup=2), 4, 40)
    assert [constant.lr(s) for s in range(4)] == pytest.approx([0.05, 0.1, 0.1, 0.1])


def test_bad_schedule_values_are_user_errors() -> None:
    with pytest.raises(EastError, match=r"train\.lr_schedule"):
        build_schedule(_train_cfg(lr_schedule="step"), 10, 100)
    with pytest.raises(EastError, match=r"train\.warmup"):
        build_schedule(_train_cfg(lr_schedule="cosine", warmup="100%"), 10, 100)


def test_no_weight_decay_on_bn_and_bias_when_disabled() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 36, 3))
    groups = parameter_groups(model, _train_cfg(bn_weight_decay=False, weight_decay=5e-4))
    decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in groups[1]["params"]} == {
        id(model[1].weight), id(model[1].bias), id(model[3].bias)}
    one = parameter_groups(model, _train_cfg(bn_weight_decay=True))
    assert len(one) == 1 and len(one[0]["params"]) == 5
    opt = build_optimizer(model, _train_cfg(bn_weight_decay=False))
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


# ----------------------------------------------------------------------------- one step


def test_bf16_autocast_step_runs_on_cpu_close_to_fp32() -> None:
    from east.models import build_model
    from east.sparsity.methods import build_sparsifier

    cell = make_cell(method="rigl", sparsity=0.9)
    torch.manual_seed(0)
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    results = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(1)
        model = build_model("resnet20", num_classes=10, in_channels=1)
        sparsifier = build_sparsifier(model, cell.sparsity, steps_per_epoch=10,
                                      total_steps=100, seed=0)
        sparsifier.initialize(model)
        seen: list[torch.dtype] = []
        model.fc.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.dtype))
        ctx = StepContext(model=model, optimizer=build_optimizer(model, cell.train),
                          sparsifier=sparsifier, schedule=build_schedule(cell.train, 10, 100),
                          device=torch.device("cpu"), amp_dtype=dtype, label_smoothing=0.1,
                          grad_clip=1.0)
        loss, _correct, count = train_step(ctx, x, y, 0)
        results[dtype] = (float(loss) / count, model.fc.weight.detach().clone(), seen[0])
    fp32, bf16 = results[None], results[torch.bfloat16]
    assert fp32[2] == torch.float32 and bf16[2] == torch.bfloat16  # autocast really ran
    assert math.isfinite(bf16[0]) and bf16[0] == pytest.approx(fp32[0], rel=2e-2)
    assert not torch.equal(fp32[1], bf16[1])
    assert torch.allclose(fp32[1], bf16[1], atol=2e-3)
    # Masked weights stay exactly zero in both.
    assert torch.equal(fp32[1] == 0, bf16[1] == 0)


# ----------------------------------------------------------------------------- whole runs

RESUME_CELL = {"method": "rigl", "sparsity": 0.9, "epochs": 2,
               "sparse": {"update_interval": 4}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the resume tests' cell, in this process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    outcome = train_cell(make_cell(**RESUME_CELL), out, progress=False)
    torch.set_num_threads(before)
    assert outcome.exit_code == 0
    return out


def _wait_for(predicate, process, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sigkill_at_a_random_step_then_resume_is_exact(reference, tmp_path) -> None:
    seed = random.randrange(10**6)
    # A checkpoint after every step (checkpoint_minutes is not semantic: same cell).
    cell = make_cell(**RESUME_CELL, train={"checkpoint_minutes": 0.0})
    total = 2 * STEPS_PER_EPOCH
    kill_after = random.Random(seed).randrange(2, total - 2)
    path = write_cell(tmp_path, cell)
    out = tmp_path / "run"
    process = start_east("train", str(path), "--out", str(out))

    def reached() -> bool:
        return any(step >= kill_after for step, _ in ckpt.list_checkpoints(out))

    _wait_for(reached, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists(), f"seed {seed}: finished before the kill"
    first = train_cell(cell, out, progress=False)
    assert first.exit_code == 0, first.message
    assert_same_run(reference, out)


def test_sigterm_exits_75_then_resume_is_exact(reference, tmp_path) -> None:
    cell = make_cell(**RESUME_CELL)
    path = write_cell(tmp_path, cell)
    out = tmp_path / "run"
    process = start_east("train", str(path), "--out", str(out))
    # Mid-run: after the first epoch's line (the second epoch takes seconds).
    _wait_for(lambda: len(read_history(out / "history.jsonl")) >= 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 75, stderr
    assert "pre-empted (SIGTERM)" in stderr and "Traceback" not in stderr
    steps = [s for s, _ in ckpt.list_checkpoints(out)]
    assert steps and STEPS_PER_EPOCH < steps[-1] < 2 * STEPS_PER_EPOCH
    assert not (out / "summary.json").exists()
    outcome = train_cell(cell, out, progress=False)
    assert outcome.exit_code == 0
    assert_same_run(reference, out)


def test_truncated_checkpoint_resumes_from_previous_with_warning(reference, tmp_path,
                                                                 capsys) -> None:
    cell = make_cell(**RESUME_CELL)
    out = tmp_path / "run"
    assert train_cell(cell, out, max_steps=5, progress=False).exit_code == 0
    assert train_cell(cell, out, max_steps=30, progress=False).exit_code == 0
    # Epoch-end checkpoint at 21 dropped ckpt-5; the last two are 21 and 30.
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [21, 30]
    latest = ckpt.checkpoint_path(out, 30)
    latest.write_bytes(latest.read_bytes()[:1000])
    capsys.readouterr()
    outcome = train_cell(cell, out, progress=False)
    assert outcome.exit_code == 0
    err = capsys.readouterr().err
    assert "ckpt-30.pt is unreadable" in err and "resuming from ckpt-21.pt" in err
    assert (out / "checkpoints" / "ckpt-30.pt.corrupt").exists()
    assert_same_run(reference, out)


def test_sigusr1_in_process_and_max_steps_and_done_marker(reference, tmp_path,
                                                          capsys) -> None:
    cell = make_cell(**RESUME_CELL)
    out = tmp_path / "run"

    class SignalAt:
        def on_step_end(self, trainer, step: int) -> None:
            if step == 25:
                os.kill(os.getpid(), signal.SIGUSR1)

    outcome = train_cell(cell, out, callbacks=[SignalAt()], progress=False)
    assert outcome.exit_code == 75 and "SIGUSR1" in outcome.message
    assert [s for s, _ in ckpt.list_checkpoints(out)][-1] == 26
    # A run already at --max-steps stops at once, writing nothing new.
    before = snapshot(out)
    assert train_cell(cell, out, max_steps=26, progress=False).exit_code == 0
    assert snapshot(out) == before
    assert train_cell(cell, out, progress=False).exit_code == 0
    assert_same_run(reference, out)
    # Done: the CLI prints one line and exits 0 without touching anything.
    path = write_cell(tmp_path, cell, "other.json")
    before = snapshot(out)
    capsys.readouterr()
    assert cli.main(["train", str(path), "--out", str(out)]) == 0
    assert "already trained" in capsys.readouterr().out
    assert snapshot(out) == before


def test_missing_dataset_is_one_line_and_loses_nothing(reference, tmp_path, capsys) -> None:
    cell = make_cell(dataset="cifar10", data={"root": str(tmp_path / "nodata")})
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.jsonl").write_text('{"epoch": 1}\n')
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "ckpt-3.pt").write_bytes(b"keep me")
    before = snapshot(out)
    path = write_cell(tmp_path, cell)
    capsys.readouterr()
    assert cli.main(["train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("east: error: ") and "cifar10" in err
    assert snapshot(out) == before


def test_another_cells_directory_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    write_cell(out, make_cell(**RESUME_CELL))  # the pipeline's cell.json of another cell
    path = write_cell(tmp_path, make_cell(method="dense", epochs=1))
    before = snapshot(out)
    capsys.readouterr()
    assert cli.main(["train", str(path), "--out", str(out)]) == 2
    assert "holds another cell" in capsys.readouterr().err
    assert snapshot(out) == before


def test_divergence_is_a_result_and_keeps_the_good_checkpoints(tmp_path, capsys) -> None:
    # lr jumps by 1e30 at step 6: the weights blow up right after.
    cell = make_cell(epochs=1, train={"lr_schedule": "multistep", "lr_milestones": [6],
                                      "lr_gamma": 1e30, "grad_clip": None,
                                      "checkpoint_minutes": 0.0})
    path = write_cell(tmp_path, cell)
    out = tmp_path / "run"
    capsys.readouterr()
    assert cli.main(["train", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out.count("\n") == 1 and "diverged" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged"
    where = summary["diverged"]
    kept = ckpt.list_checkpoints(out)
    assert kept and kept[-1][0] <= where["step"] <= 8
    # The last finite loss was seen at or before the step where divergence was found.
    assert 1 <= where["last_finite_step"] <= where["step"]
    assert where["last_finite_loss"] is not None and math.isfinite(where["last_finite_loss"])
    state = ckpt.load_latest(out).state
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "model.pt").exists() and not (out / "best.pt").exists()
    # A result: running again trains nothing and changes nothing.
    before = snapshot(out)
    assert cli.main(["train", str(path), "--out", str(out)]) == 0
    assert "already trained" in capsys.readouterr().out
    assert snapshot(out) == before


def test_progress_lines_without_a_tty(tmp_path, capsys) -> None:
    cell = make_cell(epochs=1, train={"log_every": 5})
    capsys.readouterr()
    assert train_cell(cell, tmp_path / "run", max_steps=12).exit_code == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if " step " in line]
    assert [line.split(" step ")[1].split()[0] for line in lines] == ["5/21", "10/21"]
    assert all("loss" in line and "img/s" in line for line in lines)


def test_summary_and_history_contents(reference) -> None:
    summary = json.loads((reference / "summary.json").read_text())
    history = read_history(reference / "history.jsonl")
    assert summary["steps"] == 2 * STEPS_PER_EPOCH and summary["epochs"] == 2
    assert [r["epoch"] for r in history] == [1, 2]
    assert [r["step"] for r in history] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert all(r["examples"] == 1294 for r in history)
    assert summary["final_val_acc"] == history[-1]["val_acc"]
    best = max(history, key=lambda r: r["val_acc"])
    assert summary["best_val_acc"] == best["val_acc"] and summary["best_epoch"] == best["epoch"]
    # nnz is exactly the budget: round((1 - s) * N_full).
    assert summary["nnz"] == round(0.1 * 270608)
    assert summary["density_full"] == summary["nnz"] / 270608
    model = load_weights(reference / "model.pt")
    masks = [v for k, v in model.items() if k.endswith("weight_mask")]
    assert sum(int(m.sum()) for m in masks) == summary["nnz"]
    for key, mask in model.items():
        if key.endswith("weight_mask"):
            weight = model[key.replace("weight_mask", "weight")]
            assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask]))


def test_digits_resnet20_dense_10_epochs_reaches_95_percent(tmp_path) -> None:
    """The CPU-scale sanity bar. Augmentation off: horizontal flips change digits' identity
    (with pad-1 crop + flip, 10 epochs reach only ~92 %)."""
    from east.evaluate import evaluate_run

    cell = make_cell(epochs=10, data={"augment": False})
    began = time.perf_counter()
    outcome = train_cell(cell, tmp_path / "run", progress=False)
    seconds = time.perf_counter() - began
    assert outcome.exit_code == 0
    metrics = evaluate_run(tmp_path / "run")
    print(f"digits resnet20 dense 10 epochs: {seconds:.1f} s, test acc {metrics['test_acc']:.4f}")
    assert metrics["test_acc"] >= 0.95
    assert metrics["density_masked"] == 1.0 and metrics["effective_sparsity"] == 0.0


def test_bf16_channels_last_run_on_cpu_resumes(tmp_path) -> None:
    """The CUDA defaults (bf16 autocast, channels_last), forced on the CPU, through the
    loop and a checkpoint round trip."""
    cell = make_cell(method="rigl", sparsity=0.9, epochs=1,
                     train={"precision": "bf16", "channels_last": "on"})
    out = tmp_path / "run"
    assert train_cell(cell, out, max_steps=3, progress=False).exit_code == 0
    state = ckpt.load_latest(out).state
    assert state["step"] == 3
    conv = next(v for k, v in state["model"].items() if k.endswith("conv1.weight"))
    assert conv.is_contiguous(memory_format=torch.channels_last)
    outcome = train_cell(cell, out, progress=False)
    assert outcome.exit_code == 0 and math.isfinite(read_history(out / "history.jsonl")[0]
                                                    ["train_loss"])


def test_progress_bar_on_a_tty() -> None:
    import io

    from east.train.progress import Progress

    stream = io.StringIO()
    bar = Progress(label="[x]", total=4, start=1, log_every=1, enabled=True, tty=True,
                   stream=stream)
    for step in (2, 3, 4):
        bar.step(step, 0, 1, torch.tensor(6.0), 3, 0.1)
    bar.write("epoch line")
    bar.close()
    text = stream.getvalue()
    assert "[x]" in text and "4/4" in text and "epoch line" in text and "loss=2.0000" in text


def test_restore_takes_dyrelu_beta_from_the_schedule(tmp_path) -> None:
    """β is not in a checkpoint's model state (issue 15): a restored run, even one stopped
    after its last step, evaluates with the schedule's β, not the module's default of 1."""
    from east.models import DyReLUB
    from east.train import distributed as D
    from east.train import setup

    cell = make_cell(method="east", sparsity=0.9, epochs=4)
    total = 4 * STEPS_PER_EPOCH
    for stop, out in ((total // 2 + 3, tmp_path / "mid"), (total, tmp_path / "end")):
        assert train_cell(cell, out, progress=False, max_steps=stop).exit_code == 0
        built = setup.build(cell, out, torch.device("cpu"), D.env_from_environ(), None)
        setup.resume_or_start(built, out)
        state = built.state
        assert built.resumed_from is not None and state.step == stop
        expected = state.sparsifier.beta(stop - 1)
        betas = {m.beta for m in state.model.modules() if isinstance(m, DyReLUB)}
        assert betas == {expected}
        assert expected < 1.0  # the check would fail with the module default
