"""Inference FLOPs and effective sparsity of a (sparse) network, per masked layer.

Both come from two instrumented forward passes over a float64 copy of the model on one
input of the network's shape (batch 1); the model itself is not changed.

FLOPs (the spec): a conv costs 2·nnz(W)·H_out·W_out, a linear layer 2·nnz(W); BatchNorm,
activations, pooling, biases and sharing scalars are not counted; DyReLU is counted at
beta = 0 (plain ReLU, zero). A weight-shared tensor is counted once per module that uses it
(shared blocks still compute). ``flops_dense`` uses numel(W) instead of nnz(W).

Effective weights, at channel granularity: a non-zero weight W[o, i, kh, kw] of a layer is
*effective* iff its input channel i is *reachable* (some path of non-zero weights leads to
it from the network input) and its output channel o is *useful* (some path of non-zero
weights leads from it to the logits). For a shared tensor, a weight is effective if it is
so in any of its users. Choices, where the definition could go either way:
- BatchNorm is treated as the identity on channels: its scale and running statistics do
  not cut a channel, and its shift does not make a channel reachable. A channel fed by no
  path from the input only carries a constant (a BN shift after ReLU), i.e. a bias, so the
  weights reading it are not on an input-output path.
- Biases are ignored for the same reason; other dense parameters (weight-sharing scalars)
  act through their magnitude (a scalar that is exactly 0 cuts its block's conv).
- Kernel positions are not distinguished: a kernel counts as a connection o <- i when any
  of its taps is non-zero.

How it is computed: every masked weight W is replaced by its channel connectivity
C[o, i] = any(W[o, i] != 0), broadcast over the kernel and divided by the fan-in (to keep
float64 magnitudes bounded through deep nets); BatchNorm becomes y = x (+ shift); biases
become 0; other parameters |p|; DyReLU is set to beta = 0. All values are then >= 0, so a
channel's activation on an all-ones input is > 0 exactly when it is reachable (pass 1, no
shift). In pass 2 every BatchNorm adds a shift of 1, which makes every pre-activation
positive, so the network is linear there and the gradient of sum(logits) with respect to
a layer's output channel is > 0 exactly when the channel is useful (ReLU's zero gradient
at 0 cannot cut a path). This assumes every activation reads a BatchNorm output (or a sum
of them), as in every ResNet here. ``tests/test_evaluate.py`` checks the result against a
brute-force reference: the SynFlow path trick (|w|, no ReLU, non-zero d(sum of logits)/dw).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class LayerStats:
    """One masked tensor (shared tensors once, under their owner's name)."""

    name: str
    shape: list[int]
    numel: int
    nnz: int
    effective_nnz: int
    shared_users: list[str]
    flops: int
    flops_dense: int

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "numel": self.numel,
            "nnz": self.nnz,
            "density": self.density,
            "effective_nnz": self.effective_nnz,
            "shared_users": list(self.shared_users),
            "flops": self.flops,
            "flops_dense": self.flops_dense,
        }


@dataclass
class Analysis:
    layers: list[LayerStats]
    n_params: int  # every parameter the beta = 0 forward pass uses (unique tensors)
    nnz_params: int
    n_masked_full: int  # masked weights of the unshared network (the sparsity denominator)
    effective_masks: dict[str, Tensor] = field(repr=False, default_factory=dict)

    @property
    def n_masked(self) -> int:
        """Unique masked weights (a shared tensor once)."""
        return sum(layer.numel for layer in self.layers)

    @property
    def nnz_masked(self) -> int:
        return sum(layer.nnz for layer in self.layers)

    @property
    def effective_nnz(self) -> int:
        return sum(layer.effective_nnz for layer in self.layers)

    @property
    def flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def flops_dense(self) -> int:
        return sum(layer.flops_dense for layer in self.layers)

    @property
    def collapsed_layers(self) -> list[str]:
        """Masked tensors none of whose weights lies on an input-output path."""
        return [layer.name for layer in self.layers if layer.effective_nnz == 0]


def masked_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's masked tensors: ``model.masked_parameters()`` when it has one, else the
    weight of every conv and linear layer (plain torch models in tests)."""
    if hasattr(model, "masked_parameters"):
        return dict(model.masked_parameters())
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    }


def shared_users(model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """Masked-tensor name -> names of the modules that apply it."""
    if hasattr(model, "shared_users"):
        users = dict(model.shared_users())
        return {name: list(users.get(name, [name.rsplit(".", 1)[0]])) for name in names}
    return {name: [name.rsplit(".", 1)[0]] for name in names}


def _channel_sums(t: Tensor, channel_dim: int) -> Tensor:
    """Sum of |t| over every dim but the channel dim (-> 1-D, one entry per channel)."""
    t = t.detach().abs()
    dims = [d for d in range(t.ndim) if d != channel_dim % t.ndim]
    return t.sum(dim=dims) if dims else t


def _channel_dim(weight: Tensor) -> int:
    # conv activations are (B, C, ...); linear ones (..., F)
    return 1 if weight.ndim > 2 else -1


def _connectivity_copy(model: nn.Module, masked: list[str]) -> nn.Module:
    """A float64 copy with weights replaced by normalised channel connectivity (see module
    docstring); hooks of the original (e.g. mask enforcement) are dropped."""
    clone = copy.deepcopy(model).to(torch.float64).eval()
    for module in clone.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
        module._backward_hooks.clear()
    if hasattr(clone, "set_beta"):
        clone.set_beta(0.0)
    bn_params = set()
    for module in clone.modules():
        if isinstance(module, _BatchNorm):
            bn_params.update(id(p) for p in module.parameters(recurse=False))
    wanted = set(masked)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            if name in wanted:
                connected = (p != 0).reshape(p.shape[0], p.shape[1], -1).any(-1)
                fan_in = p[0].numel()
                value = connected.to(p.dtype) / fan_in
                p.copy_(value.reshape(*value.shape, *([1] * (p.ndim - 2))).expand_as(p))
            elif id(p) in bn_params:
                continue
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.abs_()
    return clone


def _set_batchnorm(model: nn.Module, shift: float) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                if module.running_mean is not None:
                    module.running_mean.zero_()
                    module.running_var.fill_(1.0 - module.eps)  # so the scale is exactly 1
                if module.affine:
                    module.weight.fill_(1.0)
                    module.bias.fill_(shift)


def _effective_for_user(weight: Tensor, reach_in: Tensor, useful_out: Tensor) -> Tensor:
    """Bool mask of W's shape: non-zero, input channel reachable, output channel useful."""
    out_ch, in_per_group = weight.shape[0], weight.shape[1]
    groups = max(1, reach_in.numel() // in_per_group)
    # Input channel of W[o, i] is (group of o) * in_per_group + i.
    group_of_out = torch.arange(out_ch) // max(1, out_ch // groups)
    reach = reach_in.reshape(groups, in_per_group)[group_of_out]  # (O, I_g)
    keep = reach & useful_out.reshape(-1, 1)
    keep = keep.reshape(*keep.shape, *([1] * (weight.ndim - 2)))
    return (weight != 0) & keep.to(weight.device)


def _run(
    model: nn.Module,
    users: dict[str, list[str]],
    input_shape: tuple[int, ...],
    on_input: Callable[[str, Tensor], None] | None,
    on_output: Callable[[str, Tensor], None],
) -> Tensor:
    handles = []
    all_users = {u for names in users.values() for u in names}

    def hook(name: str) -> Callable[..., None]:
        def fn(_module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if on_input is not None:
                on_input(name, inputs[0])
            on_output(name, output)

        return fn

    for name in sorted(all_users):
        handles.append(model.get_submodule(name).register_forward_hook(hook(name)))
    try:
        first = next(model.parameters())
        x = torch.ones((1, *input_shape), dtype=first.dtype, device=first.device)
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return out


def analyze(model: nn.Module, input_shape: tuple[int, ...]) -> Analysis:
    """FLOPs, nnz and effective weights of every masked tensor; ``input_shape`` is one
    example's shape, e.g. (3, 32, 32)."""
    masked = masked_parameters(model)
    names = list(masked)
    users = shared_users(model, names)
    clone = _connectivity_copy(model, names)
    owner_of_user = {u: name for name, us in users.items() for u in us}
    weights_by_name = dict(clone.named_parameters())

    # Pass 1: reachability (no BN shift) and output shapes.
    _set_batchnorm(clone, 0.0)
    reach: dict[str, Tensor] = {}
    positions: dict[str, int] = {}

    def record_input(user: str, x: Tensor) -> None:
        w = weights_by_name[owner_of_user[user]]
        reach[user] = _channel_sums(x, _channel_dim(w)) > 0

    def record_output(user: str, y: Tensor) -> None:
        w = weights_by_name[owner_of_user[user]]
        positions[user] = y[0].numel() // w.shape[0]

    with torch.no_grad():
        _run(clone, users, input_shape, record_input, record_output)

    # Pass 2: usefulness (BN shift 1: everything positive, so the net is linear).
    _set_batchnorm(clone, 1.0)
    outputs: dict[str, Tensor] = {}

    def keep_output(user: str, y: Tensor) -> None:
        y.retain_grad()
        outputs[user] = y

    clone.zero_grad(set_to_none=True)
    logits = _run(clone, users, input_shape, None, keep_output)
    logits.sum().backward()

    layers = []
    effective_masks: dict[str, Tensor] = {}
    for name, original in masked.items():
        weight = original.detach().cpu()
        eff = torch.zeros(weight.shape, dtype=torch.bool)
        flops = flops_dense = 0
        for user in users[name]:
            w = weights_by_name[name]
            grad = outputs[user].grad
            useful = (
                _channel_sums(grad, _channel_dim(w)) > 0
                if grad is not None
                else torch.zeros(weight.shape[0], dtype=torch.bool)
            )
            eff |= _effective_for_user(weight, reach[user], useful)
            flops += 2 * int(torch.count_nonzero(weight)) * positions[user]
            flops_dense += 2 * weight.numel() * positions[user]
        effective_masks[name] = eff
        layers.append(
            LayerStats(
                name=name,
                shape=list(weight.shape),
                numel=weight.numel(),
                nnz=int(torch.count_nonzero(weight)),
                effective_nnz=int(eff.sum()),
                shared_users=list(users[name]),
                flops=flops,
                flops_dense=flops_dense,
            )
        )

    # Parameters the beta = 0 forward pass touches (DyReLU hyper-functions do not count).
    used = {n for n, p in clone.named_parameters() if p.grad is not None}
    originals = dict(model.named_parameters())
    n_params = sum(originals[n].numel() for n in used)
    nnz_params = sum(int(torch.count_nonzero(originals[n].detach())) for n in used)
    n_full = sum(layer.numel for layer in layers)
    if hasattr(model, "weight_counts"):
        n_full = int(model.weight_counts().n_full)
    return Analysis(layers, n_params, nnz_params, n_full, effective_masks)


def flops_per_weight(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Forward FLOPs per example that one non-zero weight of each masked tensor costs: the
    sum over the modules using it of 2·H_out·W_out (conv) or 2 (linear). So a forward pass
    with ``nnz[name]`` active weights costs Σ coefficient·nnz (the spec's accounting), and
    the dense one Σ coefficient·numel. ``input_shape`` is one example's shape."""
    masked = masked_parameters(model)
    names = list(masked)
    users = shared_users(model, names)
    # Only shapes are read: a model on the meta device (no memory, no RNG) will do.
    clone = copy.deepcopy(model).eval()
    for module in clone.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    if hasattr(clone, "set_beta"):
        clone.set_beta(0.0)
    weights = dict(clone.named_parameters())
    owner_of_user = {u: name for name, us in users.items() for u in us}
    positions: dict[str, int] = {}

    def record_output(user: str, y: Tensor) -> None:
        positions[user] = y[0].numel() // weights[owner_of_user[user]].shape[0]

    with torch.no_grad():
        _run(clone, users, input_shape, None, record_output)
    return {name: sum(2 * positions[u] for u in users[name]) for name in names}


def dyrelu_flops(model: nn.Module) -> int:
    """Forward FLOPs per example of every DyReLU-B coefficient branch (its two dense FC
    layers, 2·in·out each; pooling, biases and the piecewise max are not counted, as for
    every other activation). Zero for a ReLU network; spent only while β > 0."""
    from east.models.dyrelu import DyReLUB

    total = 0
    for module in model.modules():
        if isinstance(module, DyReLUB):
            total += 2 * (module.fc1.weight.numel() + module.fc2.weight.numel())
    return total
