"""Masks as buffers and their enforcement: weights, gradients, every optimizer state tensor."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from east.models import build_model
from east.sparsity.methods import Sparsifier, build_sparsifier
from east.sparsity.presets import resolve_sparsity

SPE, TOTAL = 4, 40



def make(method: str, sparsity: float = 0.9, seed: int = 0, opt: str = "sgd",
         **knobs: Any) -> tuple[torch.nn.Module, Sparsifier, torch.optim.Optimizer]:
    cfg = resolve_sparsity({"method": method, "sparsity": sparsity, **knobs}, "test")
    torch.manual_seed(seed)
    model = build_model("resnet20", num_classes=10, in_channels=3,
                        activation="dyrelu" if cfg.dyrelu else "relu",
                        sharing_ratio=cfg.sharing_ratio if cfg.sharing else None)
    sp = build_sparsifier(model, cfg, steps_per_epoch=SPE, total_steps=TOTAL, seed=seed,
                          debug=False)
    if opt == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=5e-4)
    return model, sp, optimizer


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def step_once(model: torch.nn.Module, sp: Sparsifier, opt: torch.optim.Optimizer,
              step: int) -> None:
    model.set_beta(sp.beta(step))
    x, y = batch(step)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    sp.after_backward(step)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sp.after_step(step, opt)


def assert_invariants(sp: Sparsifier, opt: torch.optim.Optimizer) -> None:
    for (name, mask), p in zip(sp.masks.items(), sp.params, strict=True):
        assert mask.dtype == torch.bool and mask.shape == p.shape
        assert int(mask.sum()) == sp.budgets[name], name
        assert torch.all(p.detach()[~mask] == 0), name
        for key, state in opt.state[p].items():
            if torch.is_tensor(state) and state.shape == p.shape:
                assert torch.all(state[~mask] == 0), (name, key)


def test_mask_buffers_travel_in_state_dict() -> None:
    model, sp, _ = make("east", sparsity=0.99)
    sp.initialize(model, [batch(0)], F.cross_entropy)
    state = model.state_dict()
    for name in sp.names:
        module_name = name.rsplit(".", 1)[0]
        buf = model.get_submodule(module_name).weight_mask
        assert buf.dtype == torch.bool and buf is sp.masks[name]
        assert torch.equal(state[f"{module_name}.weight_mask"], buf)
    # Shared blocks own no weight and no mask: one tensor, one mask.
    users = model.shared_users()
    shared = [u for n in sp.names for u in users[n][1:]]
    assert shared and all(f"{u}.weight_mask" not in state for u in shared)
    # A fresh model gets the masks back from the state_dict once its sparsifier is built.
    fresh, sp2, _ = make("east", sparsity=0.99, seed=5)
    fresh.load_state_dict(state)
    assert all(torch.equal(sp2.masks[n], sp.masks[n]) for n in sp.names)


@pytest.mark.parametrize(
    ("method", "knobs", "updates"),
    [
        ("static", {}, 0),
        ("rigl", {"update_interval": 3, "update_end": "100%"}, 4),  # after steps 3, 6, 9, 12
        ("set", {"update_interval": 3, "update_end": "100%"}, 4),
        # cyclic updates after steps 1..6 (two cycles of 3), then drop/grow after 9 and 12
        ("east", {"update_interval": 3, "update_end": "100%", "cycle_length": 3,
                  "cycle_interval": 1}, 8),
    ],
)
def test_sgd_nesterov_wd_clip_invariants(method: str, knobs: dict[str, Any],
                                         updates: int) -> None:
    model, sp, opt = make(method, **knobs)
    sp.initialize(model, [batch(0)], F.cross_entropy)
    assert sum(sp.budgets.values()) == sp.base_total
    for step in range(12):
        step_once(model, sp, opt, step)
        assert_invariants(sp, opt)
        assert any(
            torch.count_nonzero(opt.state[p]["momentum_buffer"]) > 0 for p in sp.params
        )
    assert sum(int(m.sum()) for m in sp.masks.values()) == sp.base_total
    assert sp.updates == updates


def test_adam_state_zero() -> None:
    model, sp, opt = make("rigl", opt="adam", update_interval=2, update_end="100%")
    sp.initialize(model, [], None)
    for step in range(8):
        step_once(model, sp, opt, step)
        assert_invariants(sp, opt)
    assert sp.updates == 4
    p = sp.params[3]
    assert {"exp_avg", "exp_avg_sq"} <= set(opt.state[p])


def test_gradients_masked_and_dense_grad_kept_for_growth() -> None:
    model, sp, opt = make("rigl", update_interval=2, update_end="100%")
    sp.initialize(model, [], None)
    for step in range(2):
        x, y = batch(step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        dense = [p.grad.clone() for p in sp.params]
        sp.after_backward(step)
        for p, mask in zip(sp.params, sp.masks.values(), strict=True):
            assert torch.all(p.grad[~mask] == 0)
        if step == 1:  # an update follows this step: the dense gradient was kept
            assert sp._grads is not None
            assert all(torch.equal(g, d) for g, d in zip(sp._grads.by_layer, dense, strict=True))
            assert any(torch.count_nonzero(d[~m]) > 0
                       for d, m in zip(dense, sp.masks.values(), strict=True))
        else:
            assert sp._grads is None
        opt.step()
        sp.after_step(step, opt)
    assert sp.updates == 1 and sp._grads is None


def test_debug_flag_asserts_invariants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EAST_DEBUG", "1")
    cfg = resolve_sparsity({"method": "static", "sparsity": 0.9}, "test")
    model = build_model("resnet20", num_classes=10, in_channels=3)
    sp = build_sparsifier(model, cfg, steps_per_epoch=SPE, total_steps=TOTAL, seed=0)
    assert sp.debug
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sp.initialize(model, [], None)
    step_once(model, sp, opt, 0)
    # Corrupt the momentum at a masked position: the next step must fail loudly.
    p, mask = sp.params[5], sp.masks[sp.names[5]]
    opt.state[p]["momentum_buffer"][~mask] = 1.0
    with pytest.raises(AssertionError, match="optimizer state"):
        step_once(model, sp, opt, 1)


def test_grad_scaler_non_finite_skips_update() -> None:
    model, sp, opt = make("rigl", update_interval=2, update_end="100%")
    sp.initialize(model, [], None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = {n: m.clone() for n, m in sp.masks.items()}
    for step in range(4):
        x, y = batch(step)
        opt.zero_grad()
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        if step == 1:  # overflow exactly at the update step: the scaler skips the step too
            sp.params[0].grad.view(-1)[0] = float("inf")
        scaler.unscale_(opt)
        sp.after_backward(step)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sp.after_step(step, opt)
        if step == 1:
            assert sp.skipped_updates == 1 and sp.updates == 0
            assert all(torch.equal(before[n], m) for n, m in sp.masks.items())
        assert_invariants(sp, opt)
    assert sp.updates == 1  # the next update (after step 3) ran


def test_channels_last_after_build() -> None:
    model, sp, opt = make("rigl", update_interval=2, update_end="100%")
    sp.initialize(model, [], None)
    model.to(memory_format=torch.channels_last)
    for step in range(4):
        step_once(model, sp, opt, step)
        assert_invariants(sp, opt)
    assert sp.updates == 2


def test_dense_method_is_free() -> None:
    model, sp, opt = make("dense", sparsity=0.0)
    sp.initialize(model, [], None)
    assert sp._noop and all(bool(m.all()) for m in sp.masks.values())
    assert sp.density_log()["density"] == 1.0
    step_once(model, sp, opt, 0)
    assert all(torch.count_nonzero(p) == p.numel() for p in sp.params)


def test_state_dict_is_torch_saveable() -> None:
    model, sp, _ = make("east", sparsity=0.99)
    sp.initialize(model, [], None)
    buffer = io.BytesIO()
    torch.save(sp.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["budgets"] == sp.budgets
