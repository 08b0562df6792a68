"""Distillation from a cached teacher: the teacher's top-k log-probs on the training blocks, read from disk.

A `CachedTeacher` stands in for the teacher model wherever the trainer core takes one
(`compute_loss`, `train_step`, `train_on_blocks`; `evoprune train` with train.teacher_source=cached):
the teacher runs once over the training blocks, streamed batch by batch into an
`evaluation.teacher.TeacherCache` in the user cache, and never during training. A micro-batch finds
its blocks in the cache by their tokens, so any order, share or process works, and a block the
cache was not built for is an error, never a silent mismatch.

Temperature. The cache holds the teacher at the training temperature T, p_T = softmax(z_t / T):
its top-k tokens (the same tokens at every T, since dividing by T keeps the order), their
log-probabilities under p_T, and the exact p_T mass of all other tokens (the rest bucket). The loss
is the KL between the (k + 1)-bucket distributions "each of the teacher's top-k tokens, plus the
rest" of p_T and of the student's q_T = softmax(z_s / T), whose rest bucket is its q_T mass outside
the teacher's top-k, times T² as in `losses.kd_loss`. A cache made at T = 1 cannot be re-tempered
(p_T's rest mass depends on how the T = 1 rest is spread over the tail, which is not stored), so
the temperature is part of a cache's identity: a cache made at another temperature, for another
teacher or for other blocks is rebuilt (`evaluation.suite.teacher_for`) or refused, never used.

As for the KL of `evaluation.teacher`, merging the tail into one bucket can only lose information:
the cached loss is at most the full-vocabulary one and equals it, with its gradient, when
k = vocab (or when the cache holds full log-probs). Its gradient pulls the student's top-k
probabilities towards the teacher's and its tail mass, as a whole, towards the teacher's.
"""

from __future__ import annotations

import hashlib
import math

import torch

from ..errors import UserError
from ..evaluation.blocks import check_blocks
from ..evaluation.teacher import TeacherCache, TeacherSlice
from ..fingerprint import weights_fingerprint


def _block_key(block: torch.Tensor) -> bytes:
    return hashlib.blake2b(block.numpy().tobytes(), digest_size=16).digest()


def teacher_identity(teacher) -> str:
    """What a cache records as its teacher: the `weights_fingerprint` of its model (weights, config, dtype).

    Args:
        teacher: an `evoprune.models.LoadedModel`.
    """
    return weights_fingerprint(teacher.model)


class CachedTeacher:
    """The teacher's distribution on fixed token blocks, read from a TeacherCache instead of running the teacher.

    Args:
        cache: built from exactly `blocks` (checked).
        blocks: token ids [n_blocks, seq_len].

    Attributes:
        cache: the TeacherCache on disk.
        temperature: the softmax temperature the cache holds the teacher at.
    """

    def __init__(self, cache: TeacherCache, blocks: torch.Tensor):
        blocks = check_blocks(blocks)
        cache.check_blocks(blocks)
        self.cache = cache
        self.temperature = cache.temperature
        self._index = {_block_key(block): i for i, block in enumerate(blocks)}

    @classmethod
    def for_blocks(cls, teacher, blocks: torch.Tensor, top_k: int, temperature: float, batch_size: int = 4,
                   progress: bool = False) -> "CachedTeacher":
        """The cached teacher for `blocks`, built once into the user cache (reused while teacher, blocks, k
        and temperature are the same).

        Args:
            teacher: the dense teacher as an `evoprune.models.LoadedModel`; it runs only if the cache is missing.
            blocks: the training blocks.
            top_k: teacher tokens kept per position (plus the rest mass); small caches hold full log-probs.
            temperature: the distillation temperature (see the module docstring).
            batch_size: blocks per teacher forward pass while building.
            progress: show a tqdm bar while building.
        """
        from ..config import EvalConfig
        from ..evaluation.suite import teacher_for

        cache = teacher_for(teacher.model, teacher.name, check_blocks(blocks), EvalConfig(top_k=top_k),
                            batch_size, progress, temperature=temperature)
        return cls(cache, blocks)

    def __repr__(self) -> str:
        return f"CachedTeacher({self.cache!r}, temperature={self.temperature:g})"

    def check_covers(self, blocks: torch.Tensor) -> None:
        """Raise UserError unless every block of `blocks` is in the cache."""
        self._indices(check_blocks(blocks))

    def _indices(self, batch: torch.Tensor) -> list[int]:
        indices = []
        for block in batch.detach().to("cpu", torch.int64):
            index = self._index.get(_block_key(block))
            if index is None:
                raise UserError(f"a training block is not in the teacher cache {self.cache.path} (it was built for "
                                f"{self.cache.n_blocks} other blocks); build the cached teacher for the blocks you "
                                "train on")
            indices.append(index)
        return indices

    def slice_for(self, batch: torch.Tensor) -> TeacherSlice:
        """The teacher's cached log-probs for the blocks of `batch` ([batch, seq_len] ids), in batch order."""
        if batch.dim() != 2 or batch.shape[1] != self.cache.seq_len:
            raise UserError(f"the teacher cache {self.cache.path} holds blocks of {self.cache.seq_len} tokens, "
                            f"got a batch of shape {list(batch.shape)}")
        indices = self._indices(batch)
        runs, start = [], 0
        for i in range(1, len(indices) + 1):  # read consecutive blocks with one slice
            if i == len(indices) or indices[i] != indices[i - 1] + 1:
                runs.append(self.cache.read(indices[start], indices[i - 1] + 1))
                start = i
        if len(runs) == 1:
            return runs[0]
        return TeacherSlice(torch.cat([r.logprobs for r in runs]),
                            None if runs[0].token_ids is None else torch.cat([r.token_ids for r in runs]),
                            None if runs[0].rest_logprob is None else torch.cat([r.rest_logprob for r in runs]))

    def kd_loss(self, student_logits: torch.Tensor, batch: torch.Tensor, temperature: float) -> torch.Tensor:
        """`cached_kd_loss` of the student's next-token logits [batch, P, vocab] on the blocks of `batch`.

        Raises:
            UserError: a temperature other than the cache's, another vocabulary, or a block not in the cache.
        """
        if not math.isclose(temperature, self.temperature, rel_tol=1e-12):
            raise UserError(f"the cached teacher {self.cache.path} holds the teacher at temperature "
                            f"{self.temperature:g}, but the distillation temperature is {temperature:g}; build the "
                            "cache at the training temperature")
        if student_logits.shape[-1] != self.cache.vocab_size:
            raise UserError(f"the student predicts {student_logits.shape[-1]} tokens but the cached teacher "
                            f"{self.cache.vocab_size}; distillation needs the same tokenizer and vocabulary")
        teacher = self.slice_for(batch).to(student_logits.device)
        return cached_kd_loss(student_logits, teacher, temperature)


def cached_kd_loss(student_logits: torch.Tensor, teacher: TeacherSlice, temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of the bucket KL(teacher_T ‖ student_T), times T² (see the module docstring).

    Args:
        student_logits: [batch, P, vocab] next-token logits of the student (any float dtype; fp32 math).
        teacher: the cached teacher at `temperature` for the same blocks, on the student's device.
        temperature: T; the student's distribution is softmax(student_logits / T).

    Returns:
        a 0-d float32 tensor, differentiable in `student_logits`; with full log-probs or k = vocab it
        equals `kd_loss(student_logits, teacher_logits, T)`.
    """
    if teacher.logprobs.shape[:2] != student_logits.shape[:2]:
        raise UserError(f"the cached teacher covers {list(teacher.logprobs.shape[:2])} positions but the student "
                        f"predicts {list(student_logits.shape[:2])}")
    t = temperature
    log_q = torch.log_softmax(student_logits.float() / t, dim=-1)
    if teacher.token_ids is None:
        log_p, log_q_buckets = teacher.logprobs, log_q
    else:
        ids = teacher.token_ids
        top = log_q.gather(-1, ids)
        if ids.shape[-1] == log_q.shape[-1]:  # every token is in the top-k: the rest bucket is empty
            log_p, log_q_buckets = teacher.logprobs, top
        else:
            rest = log_q.scatter(-1, ids, float("-inf")).logsumexp(dim=-1, keepdim=True)
            log_p = torch.cat([teacher.logprobs, teacher.rest_logprob.unsqueeze(-1)], dim=-1)
            log_q_buckets = torch.cat([top, rest], dim=-1)
    log_p = log_p - log_p.logsumexp(dim=-1, keepdim=True)  # undo rounding of the stored log-probs
    p = log_p.exp()
    kl = (p * (torch.where(p > 0, log_p, torch.zeros_like(log_p)) - log_q_buckets)).sum()
    n_positions = student_logits.shape[0] * student_logits.shape[1]
    return kl / n_positions * (t * t)
