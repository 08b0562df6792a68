"""Sequential re-fit: the output projections of a pruned model, solved again on its own inputs.

The database's weights are one-shot: each level's output projection (o_proj / down_proj, kept input
columns) is the least-squares fit of the dense projection on the *dense* model's activations. Once
half the blocks' parameters are gone, every layer of the pruned model sees other inputs. The re-fit
walks the pruned model and the dense one side by side, one decoder layer at a time, on calibration
blocks, and re-solves every kept output projection W' (d_out, k) of the pruned layer from its own
inputs A' (the kept heads' or neurons' activations, computed from the pruned model's hidden states,
with the projections of earlier layers already re-fitted):

    W' = argmin  ‖Y − W'A'‖² + λ‖W' − W₀‖²  =  (C + λW₀)(H + λI)⁻¹,   H = A'A'ᵀ, C = YA'ᵀ

(per token averages; λ = percdamp · mean(diag H); W₀ the database's weights, which a re-fit shrinks
to where the data says little). The target Y is one of
- `self`: the dense module on the pruned model's inputs, W·A_full' — the level's OBS problem with
  the layer's new Hessian (SparseGPT's sequential mode);
- `dense`: the dense module's output on the dense model's inputs, so that the module also makes up
  for what the layers before it lost;
- `residual`: the dense model's residual stream after the module minus the pruned model's before it,
  so that the module pulls the residual stream itself back towards the dense one.

Memory: the hidden states of the calibration blocks in both models and the dense module outputs of
one layer (a few times the activations of one layer), one layer's Hessians; never the full logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..arch.hf.modeling_evoprune import layer_type
from ..errors import UserError
from ..modes import eval_mode
from ..weights.layerwise import LayerMasks, capture_first_layer_inputs
from .solver import HessianAccumulator

REFIT_TARGETS = ("self", "dense", "residual")
KINDS = ("attention", "mlp")


class _Stop(Exception):
    """Raised by a hook once the part of a layer that is needed has run."""


@dataclass
class ModuleRefit:
    """What the re-fit changed in one module: mean squared error to the target, per token, before and after
    (relative to the target's mean square)."""

    layer: int
    kind: str
    columns: int
    error_before: float
    error_after: float

    def to_dict(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "columns": self.columns,
                "error_before": round(self.error_before, 6), "error_after": round(self.error_after, 6)}


class _LeastSquares:
    """Running per-token means of A'A'ᵀ, YA'ᵀ and YᵀY for the fit of one projection."""

    def __init__(self, d_out: int, d_in: int):
        self.inputs = HessianAccumulator(d_in)
        dtype = self.inputs.H.dtype
        self.cross = torch.zeros(d_out, d_in, dtype=dtype)
        self.target_square = 0.0

    def add(self, a: torch.Tensor, y: torch.Tensor) -> None:
        a = a.detach().reshape(-1, a.shape[-1])
        y = y.detach().reshape(-1, y.shape[-1])
        n_before = self.inputs.n
        self.inputs.add_batch(a)
        n = self.inputs.n
        if self.cross.device != a.device:
            self.cross = self.cross.to(a.device)
        dtype = self.cross.dtype
        self.cross *= n_before / n
        self.cross.addmm_(y.to(dtype).T, a.to(dtype), alpha=2.0 / n)
        self.target_square = self.target_square * n_before / n + 2.0 * float(y.to(dtype).pow(2).sum()) / n

    def error(self, w: torch.Tensor) -> float:
        """Mean squared error of `w` per token, relative to the target's: tr(WHWᵀ) − 2tr(WCᵀ) + tr(YᵀY), / tr(YᵀY)."""
        w = w.to(self.cross)
        err = float((w @ self.inputs.H * w).sum() - 2 * (w * self.cross).sum()) + self.target_square
        return max(err, 0.0) / max(self.target_square, 1e-30)

    def solve(self, w0: torch.Tensor, percdamp: float) -> torch.Tensor:
        h = self.inputs.H.clone()
        diag = torch.diagonal(h)
        dead = diag == 0
        diag[dead] = 1.0
        damp = percdamp * float(diag.mean())
        diag += damp
        rhs = self.cross + damp * w0.to(self.cross)
        rhs[:, dead] = 0.0
        chol = torch.linalg.cholesky(h)
        return torch.cholesky_solve(rhs.T, chol).T.to(w0.dtype)


def refit(dense: PreTrainedModel, pruned: PreTrainedModel, adapter: ModelAdapter, kept_layers: list[int],
          blocks: torch.Tensor, batch_size: int = 4, target: str = "self", percdamp: float = 0.01,
          progress: bool = True) -> list[ModuleRefit]:
    """Re-solve the output projections of `pruned` (sliced from `dense`, same hidden size; its layer j is dense
    layer `kept_layers[j]`) in place, layer by layer on `blocks`; returns what changed per module."""
    if target not in REFIT_TARGETS:
        raise ValueError(f"unknown re-fit target {target!r}; choose one of {', '.join(REFIT_TARGETS)}")
    check_target(target, adapter)
    if dense.config.hidden_size != pruned.config.hidden_size:
        raise ValueError("the re-fit needs the dense hidden size (the pruned model's hidden channels are sliced)")
    report: list[ModuleRefit] = []
    with eval_mode(dense), eval_mode(pruned), torch.inference_mode():
        d_hidden, d_masks = _first_inputs(dense, adapter, blocks, batch_size)
        p_hidden, p_masks = _first_inputs(pruned, adapter, blocks, batch_size)
        pruned_of = {i: j for j, i in enumerate(kept_layers)}
        for i, d_layer in enumerate(tqdm(adapter.layers(dense), desc="re-fit", disable=not progress)):
            d_call = _caller(d_layer, d_masks, layer_type(dense.config, i))
            d_out, d_attn, d_mlp = _dense_pass(adapter, d_layer, d_call, d_hidden)
            if i not in pruned_of:  # a layer the pruned model dropped: only the dense stream moves on
                d_hidden = d_out
                continue
            p_layer = adapter.layers(pruned)[pruned_of[i]]
            p_call = _caller(p_layer, p_masks, layer_type(pruned.config, pruned_of[i]))
            if adapter.attention(p_layer) is not None:
                y = (_dense_attention_on(adapter, d_layer, d_call, p_hidden) if target == "self" else
                     [a + (h - p) for a, h, p in zip(d_attn, d_hidden, p_hidden)] if target == "residual" else d_attn)
                report.append(_fit_attention(adapter, p_layer, p_call, p_hidden, y, i, percdamp))
            if adapter.mlp(p_layer) is not None:
                report.append(_fit_mlp(adapter, d_layer, p_layer, p_call, p_hidden, d_mlp, d_out, target, i,
                                       percdamp))
            p_hidden = [_output(p_call(j, h)) for j, h in enumerate(p_hidden)]
            d_hidden = d_out
    return report


def _first_inputs(model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor, batch_size: int):
    inputs = capture_first_layer_inputs(model, adapter, blocks, batch_size)
    masks = LayerMasks(model, list(inputs.hidden), inputs.kwargs, layer_type(model.config, 0),
                       inputs.hidden[0].dtype if inputs.hidden else torch.float32)
    return list(inputs.hidden), masks


def _caller(layer: nn.Module, masks: LayerMasks, attention_type: str) -> Callable[[int, torch.Tensor], object]:
    return lambda j, h: layer(h, **masks.kwargs(j, attention_type))


def _output(out) -> torch.Tensor:
    return (out[0] if isinstance(out, tuple) else out).detach()


def _capture(module: nn.Module, into: list, what: str = "output", stop: bool = False):
    """A forward hook keeping the module's first input or its output (and ending the layer's call if `stop`)."""
    def hook(mod, args, output):
        into.append((args[0] if what == "input" else output).detach())
        if stop:
            raise _Stop
    return module.register_forward_hook(hook)


def _run(call, j: int, h: torch.Tensor) -> None:
    try:
        call(j, h)
    except _Stop:
        pass


def _dense_pass(adapter: ModelAdapter, layer: nn.Module, call, hidden: list[torch.Tensor]):
    """The dense layer on its own inputs: its outputs, and its attention and MLP blocks' outputs, per batch."""
    outs, attn, mlp = [], [], []
    handles = []
    if adapter.attention(layer) is not None:
        handles.append(_capture(adapter.attention_output(layer), attn))
    if adapter.mlp(layer) is not None:
        handles.append(_capture(adapter.mlp_output(layer), mlp))
    try:
        for j, h in enumerate(hidden):
            outs.append(_output(call(j, h)))
    finally:
        for handle in handles:
            handle.remove()
    return outs, attn, mlp


def _dense_attention_on(adapter: ModelAdapter, layer: nn.Module, call, hidden: list[torch.Tensor]):
    """The dense layer's attention output on other hidden states (the MLP is not run)."""
    out: list[torch.Tensor] = []
    handle = _capture(adapter.attention_output(layer), out, stop=True)
    try:
        for j, h in enumerate(hidden):
            _run(call, j, h)
    finally:
        handle.remove()
    return out


def _fit_attention(adapter: ModelAdapter, layer: nn.Module, call, hidden: list[torch.Tensor],
                   targets: list[torch.Tensor], i: int, percdamp: float) -> ModuleRefit:
    proj = adapter.attention_output(layer)
    fit = _LeastSquares(proj.out_features, proj.in_features)
    for j, h in enumerate(hidden):
        inputs: list[torch.Tensor] = []
        handle = _capture(proj, inputs, what="input", stop=True)
        try:
            _run(call, j, h)
        finally:
            handle.remove()
        fit.add(inputs[0], _without_bias(targets[j], proj))
    return _apply(fit, proj, i, "attention", percdamp)


def check_target(target: str, adapter: ModelAdapter) -> None:
    """Refuse, in one line, the residual target where a norm sits between the output projections and the residual."""
    if target == "residual" and adapter.block_outputs_normalized:
        raise UserError(f"refit.target=residual fits o_proj / down_proj to the residual stream, but {adapter.name} "
                        "normalizes each block's output before adding it; use refit.target=self or dense")


def _fit_mlp(adapter: ModelAdapter, d_layer: nn.Module, p_layer: nn.Module, call, hidden: list[torch.Tensor],
             d_mlp: list[torch.Tensor], d_out: list[torch.Tensor], target: str, i: int,
             percdamp: float) -> ModuleRefit:
    proj = adapter.mlp_output(p_layer)
    fit = _LeastSquares(proj.out_features, proj.in_features)
    dense_mlp = adapter.mlp(d_layer)
    for j, h in enumerate(hidden):
        attn_out: list[torch.Tensor] = []
        mlp_in: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        handles = [_capture(proj, inputs, what="input", stop=True),
                   adapter.mlp(p_layer).register_forward_pre_hook(lambda mod, args: mlp_in.append(args[0].detach()))]
        if adapter.attention(p_layer) is not None:
            handles.append(_capture(adapter.attention_output(p_layer), attn_out))
        try:
            _run(call, j, h)
        finally:
            for handle in handles:
                handle.remove()
        if target == "self":
            y = dense_mlp(mlp_in[0])
        elif target == "residual":
            y = d_out[j] - (h + attn_out[0] if attn_out else h)
        else:
            y = d_mlp[j]
        fit.add(inputs[0], _without_bias(y, proj))
    return _apply(fit, proj, i, "mlp", percdamp)


def _without_bias(y: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
    """What the weights must produce: the target less the projection's bias, which is kept as it is."""
    return y if proj.bias is None else y - proj.bias.detach()


def _apply(fit: _LeastSquares, proj: nn.Linear, i: int, kind: str, percdamp: float) -> ModuleRefit:
    w0 = proj.weight.detach()
    before = fit.error(w0)
    w = fit.solve(w0, percdamp)
    proj.weight.data = w.to(proj.weight.dtype)  # new storage: the slice may share the stitched tensors
    return ModuleRefit(i, kind, proj.in_features, before, fit.error(w))


def refitted_weights(pruned: PreTrainedModel, adapter: ModelAdapter, kept_layers: list[int],
                     dense_names: Callable[[int, str], str]) -> dict[str, torch.Tensor]:
    """The output projections of `pruned` keyed by the dense model's parameter names (`replace` of a stitch)."""
    out = {}
    for i, layer in zip(kept_layers, adapter.layers(pruned)):
        for kind, part in (("attention", "attention_output"), ("mlp", "mlp_output")):
            block = adapter.attention(layer) if kind == "attention" else adapter.mlp(layer)
            if block is not None:
                proj = adapter.attention_output(layer) if kind == "attention" else adapter.mlp_output(layer)
                out[dense_names(i, part)] = proj.weight.detach().clone()
    return out

