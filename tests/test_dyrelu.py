"""DyReLU-B's fused autograd function (issue 17): equal to the spec's naive form and to the
implementation it replaced, in both memory formats and any chunking; what it keeps for
backward; the reuse of its output buffer, and when that reuse must not happen."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from dyrelu_before import _DyReLUBFunction as BeforeFunction
from torch import nn

from east.models import DyReLUB, build_model
from east.models import dyrelu as dyrelu_mod

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def naive(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, beta: float) -> torch.Tensor:
    """The spec written out: both pieces materialised, torch.max over them."""
    n, c = x.shape[:2]
    theta = (2 * torch.sigmoid(fc2(torch.relu(fc1(x.mean(dim=(2, 3)))))) - 1).view(n, c, 4)
    dyrelu = [1 + theta[..., 0], theta[..., 1], 0.5 * theta[..., 2], 0.5 * theta[..., 3]]
    a1, a2, b1, b2 = ((beta * d + (1 - beta) * r)[:, :, None, None]
                      for d, r in zip(dyrelu, [1.0, 0.0, 0.0, 0.0], strict=True))
    return torch.max(torch.stack([a1 * x + b1, a2 * x + b2]), dim=0).values


def make_act(channels: int, beta: float, dtype: torch.dtype = torch.float64,
             seed: int = 0) -> DyReLUB:
    torch.manual_seed(seed)
    act = DyReLUB(channels).to(dtype)
    with torch.no_grad():  # larger FC outputs, so that both pieces win somewhere
        act.fc2.weight.mul_(4.0)
        act.fc2.bias.uniform_(-2.0, 2.0)
    act.set_beta(beta)
    return act


def grads(act: DyReLUB, x: torch.Tensor, g: torch.Tensor, fn=None) -> list[torch.Tensor]:
    """Output, input gradient and the four FC gradients of one forward/backward."""
    x = x.detach().clone().requires_grad_()
    params = [act.fc1.weight, act.fc1.bias, act.fc2.weight, act.fc2.bias]
    y = act(x) if fn is None else fn(x, *params)
    return [y.detach(), *torch.autograd.grad(y, [x, *params], g)]


@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("chunk_samples", [1, 3, 100])  # one sample, ragged, whole batch
def test_equals_the_naive_form_in_float64(beta, fmt, chunk_samples, monkeypatch) -> None:
    monkeypatch.setattr(dyrelu_mod, "CPU_CHUNK_ELEMS", chunk_samples * 8 * 4 * 5)
    act = make_act(8, beta)
    ref1, ref2 = copy.deepcopy(act.fc1), copy.deepcopy(act.fc2)
    x = torch.randn(7, 8, 4, 5, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    g = torch.randn(7, 8, 4, 5, dtype=torch.float64)

    mine = grads(act, x, g)
    ref_x = x.clone().requires_grad_()
    y_ref = naive(ref_x, ref1, ref2, beta)
    theirs = [y_ref.detach(), *torch.autograd.grad(
        y_ref, [ref_x, ref1.weight, ref1.bias, ref2.weight, ref2.bias], g)]
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(mine[0], torch.relu(x))  # the check is not vacuous
    assert mine[0].is_contiguous(memory_format=FORMATS[fmt])
    assert mine[1].is_contiguous(memory_format=FORMATS[fmt])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fmt", FORMATS)
def test_equals_the_implementation_before_issue_17(dtype, fmt) -> None:
    act = make_act(16, 0.8, dtype, seed=3)
    x = torch.randn(6, 16, 7, 5, dtype=dtype).contiguous(memory_format=FORMATS[fmt])
    g = torch.randn(6, 16, 7, 5, dtype=dtype)

    def before(x, *p):
        return BeforeFunction.apply(x, *p, 0.8)

    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    for a, b in zip(grads(act, x, g), grads(act, x, g, before), strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gradcheck_across_chunks(fmt, monkeypatch) -> None:
    monkeypatch.setattr(dyrelu_mod, "CPU_CHUNK_ELEMS", 4 * 3 * 3)  # one sample per chunk
    act = make_act(4, 0.6, seed=2)
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    x.requires_grad_()
    params = (act.fc1.weight, act.fc1.bias, act.fc2.weight, act.fc2.bias)

    def fn(x, *p):
        return dyrelu_mod._DyReLUBFunction.apply(x, *p, 0.6)

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_strided_input_equals_the_naive_form() -> None:
    act = make_act(8, 1.0, seed=4)
    base = torch.randn(5, 8, 6, 10, dtype=torch.float64)
    x = base[:, :, :, ::2]  # neither contiguous nor channels_last
    g = torch.randn(5, 8, 6, 5, dtype=torch.float64)
    mine = grads(act, x, g)
    ref_x = x.clone().requires_grad_()
    y_ref = naive(ref_x, act.fc1, act.fc2, 1.0)
    torch.testing.assert_close(mine[0], y_ref.detach())
    torch.testing.assert_close(mine[1], torch.autograd.grad(y_ref, ref_x, g)[0])


def test_bfloat16_input_keeps_its_dtype_and_matches_float32() -> None:
    act = make_act(16, 1.0, torch.float32, seed=5)
    x = torch.randn(4, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = act(x.bfloat16())
        y_ref = naive(x.bfloat16().float(), act.fc1, act.fc2, 1.0)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=2e-2, atol=2e-2)


def test_keeps_only_x_at_full_size_for_backward() -> None:
    act = make_act(8, 1.0, torch.float32)
    x = torch.randn(6, 8, 5, 5, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        act(x)
    full = [t for t in saved if t.numel() >= x.numel()]
    assert len(full) == 1 and full[0].data_ptr() == x.data_ptr()  # x itself, not a copy
    # The rest is per-(sample, channel) or weights: at most 5 coefficients per (n, c).
    assert all(t.numel() <= 5 * 6 * 8 for t in saved if t is not full[0])


def training_step(act: DyReLUB, x: torch.Tensor, w: torch.Tensor) -> tuple[int, int]:
    """Forward, a loss that keeps the output only inside its graph, backward; returns the
    data pointers of the output and of the input gradient."""
    y = act(x)
    out_ptr = y.data_ptr()
    loss = (y * w).sum()
    del y
    loss.backward()
    return out_ptr, x.grad.data_ptr()


def test_output_buffer_is_reused_once_nothing_uses_it() -> None:
    act = make_act(8, 1.0, torch.float32)
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    w = torch.randn(4, 8, 6, 6)
    out1, grad1 = training_step(act, x, w)
    # The output was free by the time backward ran: the input gradient took its memory.
    assert grad1 == out1
    expected = x.grad.clone()
    x.grad = None
    out2, grad2 = training_step(act, x, w)
    assert out2 == out1 == grad2  # one block for every output and input gradient
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


def test_output_buffer_in_use_is_never_handed_out() -> None:
    act = make_act(8, 1.0, torch.float32)
    x = torch.randn(4, 8, 6, 6)
    y1 = act(x)
    kept = y1.clone()
    y2 = act(x + 1.0)  # y1 still alive: a new buffer
    assert y2.data_ptr() != y1.data_ptr()
    assert torch.equal(y1, kept)
    view = y2[:, :2]
    del y2
    y3 = act(x)  # a view still uses y2's memory, and y1 its own
    assert y3.data_ptr() not in (view.data_ptr(), y1.data_ptr())
    torch.testing.assert_close(y3, naive(x, act.fc1, act.fc2, 1.0))
    assert torch.equal(y1, kept)


def test_copies_start_without_a_buffer_and_phase_out_lets_it_go() -> None:
    act = make_act(8, 1.0, torch.float32)
    x = torch.randn(2, 8, 4, 4)
    act(x)
    assert act._buffer._storage is not None
    for twin in (copy.deepcopy(act), pickle.loads(pickle.dumps(act))):
        assert twin._buffer._storage is None
        torch.testing.assert_close(twin(x), act(x))
    act.set_beta(0.0)
    assert act._buffer._storage is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_beta_zero_is_relu_bit_for_bit_in_both_formats(fmt) -> None:
    act = DyReLUB(8)
    act.set_beta(0.0)
    x = torch.randn(3, 8, 5, 5).contiguous(memory_format=FORMATS[fmt]).requires_grad_()
    g = torch.randn(3, 8, 5, 5)
    y = act(x)
    assert torch.equal(y, torch.relu(x))
    assert torch.equal(torch.autograd.grad(y, x, g)[0],
                       torch.autograd.grad(torch.relu(x), x, g)[0])
    # No hyper-function work: its parameters are not even in the graph.
    act(x).sum().backward()
    assert act.fc1.weight.grad is None and act.fc2.weight.grad is None


def test_in_place_at_beta_zero_matches_relu_in_a_network():
    # In-place only after phase-out, and only where the ReLU baseline is in-place: the
    # gradients of a whole ResNet equal those of its ReLU twin.
    torch.manual_seed(0)
    relu_net = build_model("resnet20", num_classes=10, in_channels=1)
    dyrelu_net = build_model("resnet20", num_classes=10, in_channels=1, activation="dyrelu")
    dyrelu_net.load_state_dict(relu_net.state_dict(), strict=False)
    dyrelu_net.set_beta(0.0)
    assert all(m.inplace for m in dyrelu_net.modules() if isinstance(m, DyReLUB))
    x = torch.randn(4, 1, 8, 8)
    grads = []
    for net in (relu_net, dyrelu_net):
        net.zero_grad()
        net(x).logsumexp(1).sum().backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    x_ref = torch.randn(2, 3, 4, 4)
    act = DyReLUB(3, inplace=True)
    act.set_beta(0.0)
    x = x_ref.clone()
    assert act(x) is x and torch.equal(x, torch.relu(x_ref))


def test_set_beta_reaches_every_dyrelu_and_is_not_in_the_state_dict():
    model = build_model("resnet20", num_classes=10, in_channels=3, activation="dyrelu")
    acts = [m for m in model.modules() if isinstance(m, DyReLUB)]
    assert len(acts) == 1 + 2 * 9  # stem + two per basic block
    assert all(a.beta == 1.0 for a in acts)
    model.set_beta(0.25)
    assert all(a.beta == 0.25 for a in acts)
    # β has one source, the schedule (issue 15): no per-module copy in a state_dict.
    state = model.state_dict()
    assert not [k for k in state if k.endswith("beta")]
    # An older east stored one per module: such a state_dict still loads (strict), and its
    # β entries are ignored rather than overriding the reader's.
    legacy = {**state, **{f"{name}.beta": torch.tensor(0.75) for name, m in
                          model.named_modules() if isinstance(m, DyReLUB)}}
    fresh = build_model("resnet20", num_classes=10, in_channels=3, activation="dyrelu")
    fresh.load_state_dict(legacy)
    assert all(m.beta == 1.0 for m in fresh.modules() if isinstance(m, DyReLUB))
    assert torch.equal(fresh.fc.weight, model.fc.weight)
    with pytest.raises(ValueError):
        model.set_beta(1.5)
    build_model("resnet20", num_classes=10, in_channels=3).set_beta(0.5)  # ReLU: no-op


@pytest.mark.parametrize("arch", ["resnet20", "resnet50"])  # basic and bottleneck blocks
def test_recomputed_regions_equal_the_eager_network_bit_for_bit(arch, monkeypatch) -> None:
    """In training, BatchNorm → [+ residual] → DyReLU-B is recomputed in backward instead of
    keeping DyReLU-B's input (issue 17's memory): the same outputs, every gradient, the
    running statistics and the batch counters, bit for bit; the recomputation does not
    count the batch into the statistics twice."""
    from east.models import resnet

    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3, activation="dyrelu").train()
    model.set_beta(0.6)
    eager = copy.deepcopy(model)
    x = torch.randn(4, 3, 16, 16)
    regions = []
    recompute = resnet.checkpoint

    def counted(*args, **kwargs):
        regions.append(1)
        return recompute(*args, **kwargs)

    monkeypatch.setattr(resnet, "checkpoint", counted)
    model(x).square().sum().backward()
    monkeypatch.setattr(resnet, "_norm_act",
                        lambda norm, act, h, residual=None:
                        resnet._norm_act_eager(norm, act, h, residual))
    eager(x).square().sum().backward()
    activations = sum(isinstance(m, DyReLUB) for m in model.modules())
    assert len(regions) == activations  # every DyReLU-B's region was checkpointed
    for (name, a), b in zip(model.named_parameters(), eager.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(model.named_buffers(), eager.buffers(), strict=True):
        assert torch.equal(a, b), name
    assert int(model.bn1.num_batches_tracked) == 1
    with torch.no_grad():
        assert torch.equal(model.eval()(x), eager.eval()(x))
