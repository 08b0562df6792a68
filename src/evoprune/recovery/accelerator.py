"""The Accelerate setup of a training run: DDP (CPU gloo or GPUs) or FSDP (GPUs), fp32 or bf16."""

from __future__ import annotations

import logging

from ..device import choose_device
from ..errors import UserError
from .config import RecoveryConfig


def make_accelerator(cfg: RecoveryConfig, device: str = "cpu"):
    """An `accelerate.Accelerator` for `cfg`, over torch.distributed when launched with torchrun /
    accelerate launch (one process otherwise)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate keeps one global state per process; allow another precision in a later run of this process.
    AcceleratorState._reset_state()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per saved file otherwise
    cpu = choose_device(device).type != "cuda"  # Accelerate itself puts each torchrun process on its local rank's GPU
    plugin = None
    if cfg.distributed == "fsdp":
        if cpu:
            raise UserError("train.distributed=fsdp needs GPUs (Accelerate shards with FSDP only on accelerators); "
                            "use train.distributed=ddp on CPU")
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="FULL_STATE_DICT",
                                                cpu_ram_efficient_loading=False)
    return Accelerator(cpu=cpu, mixed_precision="bf16" if cfg.precision == "bf16" else "no", fsdp_plugin=plugin)
