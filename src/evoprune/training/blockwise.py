"""Blockwise local distillation (Puzzle's BLD): each kept decoder layer of a pruned model, trained alone to
reproduce the dense layer.

Puzzle (Bercovich et al., 2024, §3.3) trains every block variant of its library on the dense model's
activations with the dense block's output as target before the search assembles them. Here it runs after the
choice: for each decoder layer i that the pruned model keeps, its kept weights are trained with AdamW so that

    minimize  ‖f'_i(x) − f_i(x)‖²  [ / ‖f_i(x) − x‖²  with loss nmse ]

over `tokens` tokens, where f_i is the dense layer (the whole residual layer: attention and MLP), f'_i the
pruned one and x the hidden states entering layer i:
- inputs `dense`: x is the dense model's stream, so every layer's problem is fixed before any training and the
  layers are independent (`layers=` trains a subset; workers that each train some layers and merge their
  `weights` give the same result as one process: every layer draws its batches from its own seed);
- inputs `pruned`: x is the pruned model's own stream through the layers already trained (sequential, as the
  re-fit's `self` target: the dense layer on the pruned model's inputs).

The normalized loss divides by the squared change the dense layer makes to its input (Puzzle's normalized MSE),
so that every layer's loss reads the same way (0 = exact, 1 = as bad as skipping the layer); Adam makes the scale
matter little. Weights trained: `all` (every parameter of the layer, norms included) or `outputs` (o_proj and
down_proj, the projections the database and the re-fit solve).

Memory: one trainable float32 copy of one layer with its optimizer state, and the hidden states of the training
blocks two or three times (input, target, the pruned stream), never a full forward pass with gradients.
The trained weights are written back as new tensors: `inference_slice` shares the stitched weights of `replace`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..arch.hf.modeling_evoprune import layer_type
from ..modes import eval_mode
from ..weights.compute_dtype import cast_floats
from ..weights.layerwise import LayerMasks, capture_first_layer_inputs
from .config import TrainConfig
from .optim import build_optimizer, build_scheduler

BLD_WEIGHTS = ("all", "outputs")
BLD_INPUTS = ("dense", "pruned")
BLD_LOSSES = ("nmse", "mse")
MIN_LR_RATIO = 0.1  # the cosine schedule ends at lr / 10


@dataclass
class BlockwiseSettings:
    """How each layer is trained (the `bld` config section)."""

    tokens: int  # tokens each layer trains on (steps = tokens / tokens of a batch, rounded up); 0 = nothing
    lr: float = 1e-4  # peak AdamW learning rate (cosine to lr / 10, no warm-up, no weight decay)
    weights: str = "all"  # all | outputs
    inputs: str = "dense"  # dense | pruned
    loss: str = "nmse"  # nmse | mse
    seed: int = 0  # each layer shuffles its batches with a generator seeded by (seed, dense layer index)

    def __post_init__(self) -> None:
        problems = [f"{name} must be one of {', '.join(options)}, got {value!r}" for name, value, options in
                    (("weights", self.weights, BLD_WEIGHTS), ("inputs", self.inputs, BLD_INPUTS),
                     ("loss", self.loss, BLD_LOSSES)) if value not in options]
        if self.tokens < 0 or not self.lr > 0:
            problems.append(f"tokens must be >= 0 and lr positive, got {self.tokens} and {self.lr}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class LayerDistilled:
    """One layer's training: relative squared error to the dense layer's output on its first batch, before and
    after (the nmse whatever the loss), and what it cost."""

    layer: int  # dense (source) index
    steps: int
    tokens: int
    parameters: int  # trained
    error_before: float
    error_after: float
    seconds: float

    def to_dict(self) -> dict:
        return {"layer": self.layer, "steps": self.steps, "tokens": self.tokens, "parameters": self.parameters,
                "error_before": round(self.error_before, 6), "error_after": round(self.error_after, 6),
                "seconds": round(self.seconds, 2)}


@dataclass
class BlockwiseResult:
    """The trained tensors keyed by the dense model's parameter names (a `replace` dict: sliced shapes), and
    what happened per layer."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: list[LayerDistilled] = field(default_factory=list)


def blockwise_distill(dense: PreTrainedModel, pruned: PreTrainedModel, adapter: ModelAdapter,
                      kept_layers: list[int], blocks: torch.Tensor, batch_size: int, settings: BlockwiseSettings,
                      layers: Iterable[int] | None = None, progress: bool = True) -> BlockwiseResult:
    """Train the kept layers of `pruned` (sliced from `dense`, hidden size kept) in place, one at a time.

    Args:
        dense: the dense model; never changed.
        pruned: `inference_slice` of `dense`; its trained parameters get new tensors.
        kept_layers: the dense index of each layer of `pruned` (`SubnetSpec.kept_layers()`).
        blocks: (n, seq_len) token ids of the training text; batches of `batch_size` blocks are the steps.
        layers: dense indices to train (default: every kept layer); only with inputs `dense`.

    Returns:
        The trained tensors (dense parameter names -> sliced shape) and a record per trained layer.
    """
    if dense.config.hidden_size != pruned.config.hidden_size:
        raise ValueError("blockwise distillation needs the dense hidden size (the pruned model's hidden channels "
                         "are sliced)")
    p_layers = adapter.layers(pruned)
    if len(kept_layers) != len(p_layers):
        raise ValueError(f"kept_layers names {len(kept_layers)} layers, the pruned model has {len(p_layers)}")
    wanted = set(kept_layers if layers is None else layers)
    if layers is not None and settings.inputs == "pruned":
        raise ValueError("a subset of layers needs inputs `dense`: with `pruned` each layer depends on the ones "
                         "before it")
    result = BlockwiseResult()
    if settings.tokens == 0 or not wanted:
        return result
    prefixes = _dense_prefixes(dense, adapter)
    position = {old: new for new, old in enumerate(kept_layers)}
    last = max(wanted)
    with eval_mode(dense), eval_mode(pruned), torch.no_grad():
        stream, d_masks = _first_inputs(dense, adapter, blocks, batch_size)
        _, p_masks = _first_inputs(pruned, adapter, blocks, batch_size)
        d_layers = adapter.layers(dense)
        for i in tqdm(range(last + 1), desc="blockwise distillation", disable=not progress):
            d_type = layer_type(dense.config, i)
            target = [_output(d_layers[i](h, **d_masks.kwargs(j, d_type))) for j, h in enumerate(stream)]
            k = position.get(i)
            if k is not None and i in wanted:
                p_type = layer_type(pruned.config, k)
                kwargs = [{key: cast_floats(v, torch.float32) for key, v in p_masks.kwargs(j, p_type).items()}
                          for j in range(len(stream))]
                record, trained = _train_layer(adapter, p_layers[k], kwargs, stream, target, settings, i)
                result.layers.append(record)
                result.weights.update({prefixes[i] + name: t.clone() for name, t in trained.items()})
            if settings.inputs == "dense":
                stream = target
            elif k is not None:
                p_type = layer_type(pruned.config, k)
                stream = [_output(p_layers[k](h, **p_masks.kwargs(j, p_type))) for j, h in enumerate(stream)]
    return result


def _first_inputs(model: PreTrainedModel, adapter: ModelAdapter, blocks: torch.Tensor, batch_size: int):
    """Layer 0's inputs and masks as ordinary tensors (captured under inference mode, which autograd refuses)."""
    inputs = capture_first_layer_inputs(model, adapter, blocks, batch_size)
    hidden = [h.clone() for h in inputs.hidden]
    kwargs = [{k: _ordinary(v) for k, v in kw.items()} for kw in inputs.kwargs]
    masks = LayerMasks(model, hidden, kwargs, layer_type(model.config, 0),
                       hidden[0].dtype if hidden else torch.float32)
    return hidden, masks


def _ordinary(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_ordinary(v) for v in value)
    return value


def _output(out) -> torch.Tensor:
    return (out[0] if isinstance(out, tuple) else out).detach()


def _dense_prefixes(dense: PreTrainedModel, adapter: ModelAdapter) -> list[str]:
    """Each dense decoder layer's parameter-name prefix, e.g. `model.layers.3.`."""
    names = {id(module): name for name, module in dense.named_modules()}
    return [names[id(layer)] + "." for layer in adapter.layers(dense)]


def _trainable_copy(adapter: ModelAdapter, layer: nn.Module, weights: str) -> nn.Module:
    """A float32 copy of `layer` without hooks (a model computing in another dtype hooks its layers), with
    `requires_grad` on the parameters to train only."""
    work = copy.deepcopy(layer)
    for module in work.modules():
        for hooks in ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs",
                      "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
            getattr(module, hooks, {}).clear()
    work = work.float()
    trained = set()
    if weights == "outputs":
        if adapter.attention(work) is not None:
            trained.add(id(adapter.attention_output(work).weight))
        if adapter.mlp(work) is not None:
            trained.add(id(adapter.mlp_output(work).weight))
    for p in work.parameters():
        p.requires_grad_(weights == "all" or id(p) in trained)
    return work


def _squared_error(out: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor, loss: str) -> torch.Tensor:
    err = (out - target).pow(2)
    if loss == "mse":
        return err.mean()
    return err.sum() / (target - inputs).pow(2).sum().clamp_min(1e-12)


def _train_layer(adapter: ModelAdapter, layer: nn.Module, kwargs: list[dict], inputs: list[torch.Tensor],
                 targets: list[torch.Tensor], settings: BlockwiseSettings, index: int
                 ) -> tuple[LayerDistilled, dict[str, torch.Tensor]]:
    """Train a copy of `layer` on (inputs -> targets), write its trained parameters back into `layer` as new
    tensors and return them by name (relative to the layer)."""
    started = time.time()
    work = _trainable_copy(adapter, layer, settings.weights)
    names = [name for name, p in work.named_parameters() if p.requires_grad]
    per_batch = inputs[0].shape[0] * inputs[0].shape[1]
    steps = math.ceil(settings.tokens / per_batch)
    cfg = TrainConfig(lr=settings.lr, schedule="cosine", min_lr_ratio=MIN_LR_RATIO, grad_clip=None,
                      seed=settings.seed)
    optimizer = build_optimizer(work, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + index)
    order: list[int] = []
    tokens, first, before = 0, None, float("nan")
    with torch.enable_grad():
        for step in range(steps):
            if not order:
                order = torch.randperm(len(inputs), generator=generator).tolist()
            j = order.pop(0)
            first = j if first is None else first
            x, y = inputs[j].float(), targets[j].float()
            out = _output_with_grad(work(x, **kwargs[j]))
            loss = _squared_error(out, y, x, settings.loss)
            if step == 0:
                before = float(_squared_error(out.detach(), y, x, "nmse"))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            tokens += x.shape[0] * x.shape[1]
    x, y = inputs[first].float(), targets[first].float()
    after = float(_squared_error(_output(work(x, **kwargs[first])), y, x, "nmse"))
    trained = dict(work.named_parameters())
    params = dict(layer.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name in names:
        params[name].data = trained[name].detach().to(params[name].dtype).clone()  # new storage
        out[name] = params[name].detach()
    record = LayerDistilled(index, steps, tokens, sum(t.numel() for t in out.values()), before, after,
                            time.time() - started)
    return record, out


def _output_with_grad(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out
