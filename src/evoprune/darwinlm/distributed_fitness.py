"""Training-aware selection spread over processes (torch.distributed), with the single-process result.

Every process runs the same search (same seeds, same offspring); in each selection a candidate
belongs to process `index % world_size` (its index in the selection's pool) for the whole
selection, so its model is trained across stages where it lives. Each process trains and scores
its own candidates and the scores are gathered to every process with `all_gather_object`. A
candidate's training and score depend only on its weights, the stage seed and the train blocks —
never on which other candidates a process holds — so the gathered scores, and hence the ranking
and every selection, equal those of one process.

Launch with `torchrun --nproc_per_node N ...` (gloo on CPU, NCCL on GPUs with each process on its
`cuda:LOCAL_RANK`, see `device.distributed_backend`); without a launcher it is one process and
behaves exactly like `CandidateEvaluator`. `evoprune darwin` under torchrun
uses it by itself (see `darwin.make_evaluator`); there only rank 0 writes the run directory.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from transformers import PreTrainedModel

from .fitness import CandidateEvaluator, Stage
from ..device import distributed_backend, torchrun_launch
from ..levels.genotype import Genotype


# How long a process waits in a collective: the other ranks wait while rank 0 alone builds the
# second-order database, the latency table and the teacher caches (torch's default is 30 minutes).
WAIT_TIMEOUT = timedelta(hours=6)


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group if launched by one (idempotent); return (rank, world_size)."""
    if dist.is_available() and not dist.is_initialized() and torchrun_launch().world_size > 1:
        backend, gpu = distributed_backend()
        if gpu is not None:  # NCCL binds each process to the current GPU: its own, not every rank on cuda:0
            torch.cuda.set_device(gpu)
        dist.init_process_group(backend, timeout=WAIT_TIMEOUT)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every process of the job (nothing to wait for in one process)."""
    if init_distributed()[1] > 1:
        dist.barrier()


def agreed(flag: bool) -> bool:
    """Rank 0's `flag` on every process (a decision that must not differ between them, e.g. a time limit)."""
    if init_distributed()[1] > 1:
        box = [flag]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])
    return flag


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first and on the other ranks after it, so they read what rank 0 wrote.

    If rank 0 fails inside the block the others stay waiting until torchrun stops them.
    """
    rank, world = init_distributed()
    if world > 1 and rank != 0:
        dist.barrier()
    yield
    if world > 1 and rank == 0:
        dist.barrier()


class DistributedCandidateEvaluator(CandidateEvaluator):
    """A CandidateEvaluator whose `select` stages are shared out over the processes of a torch.distributed job."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank, self.world_size = init_distributed()
        self.owner: dict[Genotype, int] = {}

    @classmethod
    def from_evaluator(cls, evaluator: CandidateEvaluator) -> "DistributedCandidateEvaluator":
        """The distributed twin of an already prepared evaluator (shares its model, database and teachers)."""
        twin = cls.__new__(cls)
        twin.__dict__.update(evaluator.__dict__)
        twin.rank, twin.world_size = init_distributed()
        twin.owner = {}
        return twin

    def assign(self, pool: list[Genotype]) -> None:
        self.owner = {g: i % self.world_size for i, g in enumerate(pool)}

    def owns(self, g: Genotype) -> bool:
        return self.owner[g] == self.rank

    def score_stage(self, pool: list[Genotype], models: dict[Genotype, PreTrainedModel], s: int, stage: Stage,
                    seed: int, seen_tokens: int, keep: int) -> dict[Genotype, float]:
        # a process keeps its own `keep` best: the global survivors are among the union of these
        mine = [g for g in pool if self.owns(g)]
        local = super().score_stage(pool, models, s, stage, seed, seen_tokens, keep)
        if self.world_size == 1:
            return local
        shares: list[dict | None] = [None] * self.world_size
        dist.all_gather_object(shares, {pool.index(g): score for g, score in local.items()})
        by_index = {i: score for share in shares for i, score in share.items()}
        self.evaluations += len(pool) - len(mine)  # count every evaluation, as one process would
        return {g: by_index[i] for i, g in enumerate(pool)}
