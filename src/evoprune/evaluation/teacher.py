"""The dense teacher's next-token distribution, computed once, cached on disk, and KL(teacher ‖ student).

File format (one safetensors file, written atomically and streamed batch by batch): the teacher is
evaluated at the P = seq_len - 1 next-token positions of every block (the same positions as the
perplexity). Per position it stores either

* top-k mode: `token_ids` int32 [n_blocks, P, k] (the teacher's k most likely tokens),
  `logprobs` [n_blocks, P, k] (their log-probabilities) and `rest_logprob` float32 [n_blocks, P]
  = log of the teacher's probability mass on all other tokens (-inf when k = vocab); or
* full mode: `logprobs` [n_blocks, P, vocab], every log-probability.

Full mode is used when `top_k is None` or when full log-probs take at most `full_max_bytes`.
The header metadata holds the format tag, the sha256 fingerprint and shape of the blocks, the
vocabulary size, the stored top_k ("full" or k), the log-prob dtype, the softmax temperature the
distribution was taken at (1 unless built for distillation at another temperature, see
`evoprune.train.cached_teacher`) and, when the builder named it, the teacher's identity.

KL in top-k mode is taken between the (k + 1)-bucket distributions "each of the top-k tokens, plus
one bucket for the rest": the teacher's rest mass is `exp(rest_logprob)` and the student's is its
probability mass on every token outside the teacher's top-k (summed from its full softmax, not as
1 - sum, so it stays accurate when tiny). Merging tokens into one bucket can only lose information
(log-sum inequality), so this is a lower bound of the full KL, >= 0, and exact when k = vocab. The
stored teacher buckets are renormalised to sum to 1 before use, which makes rounding of the stored
log-probs a second-order error in the KL instead of a first-order one.

How big the gap to the full KL is depends on the teacher's tail mass. Measured with
SmolLM2-135M-Instruct on 8 x 256 tokens of English prose / technical text (7-12% of the teacher's
mass outside its top 64), for students with one layer removed or 5% weight noise: top-64 gives
15-23% less than the exact KL, top-256 7-12% less, top-1024 2.5-5% less.

Log-probs are stored in float32 by default. float16 changed those KLs by about 1e-6 nats (thanks
to the renormalisation), but saves only 25% of the file because the int32 ids are the same size
(388 vs 516 bytes per position at k = 64), while float32 keeps the full and k = vocab modes exact
to 1e-5. float16 is available for large caches.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..atomic import staged_file
from ..errors import UserError
from .blocks import (batches, check_batch_size, check_blocks, check_vocab, eval_mode, fingerprint, model_device,
                      next_token_logit_chunks, next_token_logprob_chunks)
from ..safetensors_stream import SafetensorsStreamWriter

log = logging.getLogger(__name__)

FORMAT = "evoprune-teacher/1"
DEFAULT_FULL_MAX_BYTES = 64 * 2**20
LOGPROB_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class TeacherSlice:
    """Teacher log-probs for a run of consecutive blocks, float32, not yet renormalised.

    Attributes:
        logprobs: [blocks, P, k] in top-k mode or [blocks, P, vocab] in full mode.
        token_ids: [blocks, P, k] int64 vocabulary ids of `logprobs`; None in full mode.
        rest_logprob: [blocks, P] log teacher mass outside `token_ids`; None in full mode.
    """

    logprobs: torch.Tensor
    token_ids: torch.Tensor | None
    rest_logprob: torch.Tensor | None

    def positions(self, p: int, q: int) -> "TeacherSlice":
        """The slice at positions p .. q - 1 of its blocks."""
        return TeacherSlice(self.logprobs[:, p:q], None if self.token_ids is None else self.token_ids[:, p:q],
                            None if self.rest_logprob is None else self.rest_logprob[:, p:q])

    def to(self, device: torch.device) -> "TeacherSlice":
        return TeacherSlice(self.logprobs.to(device),
                            None if self.token_ids is None else self.token_ids.to(device),
                            None if self.rest_logprob is None else self.rest_logprob.to(device))


def _rebuild_hint(path: Path) -> str:
    return f"delete {path} and rebuild it with TeacherCache.build (evoprune rebuilds it automatically)"


class TeacherCache:
    """A teacher distribution over the next-token positions of fixed token blocks, read lazily from disk.

    Build it with `TeacherCache.build`, reopen it with `TeacherCache.load`; both verify nothing
    is read for blocks other than the ones it was built from.

    Attributes:
        path: the safetensors file.
        fingerprint: sha256 of the blocks' int64 bytes.
        n_blocks, seq_len: shape of the blocks.
        vocab_size: size of the teacher's output distribution.
        top_k: tokens stored per position, or None when full log-probs are stored.
        logprob_dtype: storage dtype of the log-probs (torch.float32 or torch.float16).
        temperature: the stored distribution is softmax(teacher logits / temperature).
        teacher_id: the teacher identity given to `build`, or None.
    """

    def __init__(self, path: Path, handle, metadata: dict[str, str]):
        self.path = path
        self._handle = handle
        self.fingerprint = metadata["fingerprint"]
        self.n_blocks = int(metadata["n_blocks"])
        self.seq_len = int(metadata["seq_len"])
        self.vocab_size = int(metadata["vocab_size"])
        self.top_k = None if metadata["top_k"] == "full" else int(metadata["top_k"])
        self.logprob_dtype = LOGPROB_DTYPES[metadata["logprob_dtype"]]
        self.temperature = float(metadata.get("temperature", "1.0"))
        self.teacher_id = metadata.get("teacher")

    def teacher_nll(self) -> torch.Tensor | None:
        """The teacher's own mean next-token NLL of each block (float64 [n_blocks]), kept by `build` at
        temperature 1; None for a cache without it."""
        return self._handle.get_tensor("teacher_nll") if "teacher_nll" in self._handle.keys() else None

    @property
    def positions(self) -> int:
        """Next-token positions per block (seq_len - 1)."""
        return self.seq_len - 1

    def __repr__(self) -> str:
        mode = "full" if self.top_k is None else f"top_k={self.top_k}"
        return (f"TeacherCache({str(self.path)!r}, blocks={self.n_blocks}x{self.seq_len}, vocab={self.vocab_size}, "
                f"{mode}, {self.logprob_dtype})")

    @classmethod
    def build(cls, model: nn.Module, blocks: torch.Tensor, path: str | Path, top_k: int | None = 64,
              batch_size: int = 4, progress: bool = False, logprob_dtype: torch.dtype = torch.float32,
              full_max_bytes: int = DEFAULT_FULL_MAX_BYTES, temperature: float = 1.0,
              teacher_id: str | None = None) -> "TeacherCache":
        """Run the teacher over `blocks` once and write its distribution to `path` atomically.

        Only one batch of full logits is in memory at a time; results are streamed to disk.

        Args:
            model: the dense teacher; only `model(input_ids=..., use_cache=False).logits` is used.
            blocks: token ids, shape [n_blocks, seq_len].
            path: the safetensors file to write (replaced if it exists).
            top_k: teacher tokens kept per position (clamped to the vocabulary), or None for full log-probs.
            batch_size: blocks per forward pass.
            progress: show a tqdm bar.
            logprob_dtype: torch.float32 (default) or torch.float16 storage for the log-probs.
            full_max_bytes: store full log-probs anyway when they take at most this many bytes (exact KL).
            temperature: store softmax(logits / temperature) (1 for KL; distillation at T > 1 needs its own cache).
            teacher_id: what identifies the teacher (stored, checked by `check_teacher`).

        Returns:
            the cache, opened for reading.
        """
        blocks = check_blocks(blocks)
        check_batch_size(batch_size)
        check_vocab(model, blocks)
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise UserError(f"teacher top_k must be a positive integer or None (full log-probs), got {top_k!r}")
        dtype_name = next((n for n, d in LOGPROB_DTYPES.items() if d == logprob_dtype), None)
        if dtype_name is None:
            raise UserError(f"teacher logprob_dtype must be torch.float32 or torch.float16, got {logprob_dtype}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise UserError(f"teacher cache temperature must be a positive number, got {temperature!r}")
        path = Path(path)
        n_blocks, seq_len = blocks.shape
        positions = seq_len - 1
        writer: SafetensorsStreamWriter | None = None
        with staged_file(path) as tmp, eval_mode(model), torch.inference_mode():
            try:
                for start, batch in batches(blocks, batch_size, model_device(model), progress, desc="teacher"):
                    parts, nll = [], torch.zeros(len(batch), dtype=torch.float64)
                    for p, q, logits in next_token_logit_chunks(model, batch):  # positions in order
                        logprobs = torch.log_softmax(logits / temperature, dim=-1)
                        if writer is None:
                            vocab = logprobs.shape[-1]
                            full_bytes = n_blocks * positions * vocab * logprob_dtype.itemsize
                            k = None if top_k is None or full_bytes <= full_max_bytes else min(top_k, vocab)
                            writer = _open_writer(tmp, n_blocks, seq_len, vocab, k, top_k, dtype_name,
                                                  fingerprint(blocks), float(temperature), teacher_id)
                        if temperature == 1:
                            target = batch[:, p + 1:q + 1].unsqueeze(-1)
                            nll -= logprobs.gather(-1, target).squeeze(-1).double().sum(dim=-1).cpu()
                        parts.append(logprobs.to(logprob_dtype) if k is None else _top_k(logprobs, k, logprob_dtype))
                    _write_batch(writer, start, parts)
                    if temperature == 1:
                        writer.write_rows("teacher_nll", start, nll / positions)
                writer.close()
            except BaseException:
                if writer is not None:
                    writer.discard()
                raise
        cache = cls.load(path, blocks)
        log.info("wrote %r, %.1f MB", cache, path.stat().st_size / 1e6)
        return cache

    @classmethod
    def load(cls, path: str | Path, blocks: torch.Tensor) -> "TeacherCache":
        """Open a cache written by `build` and check that it belongs to `blocks`.

        Raises:
            UserError: if the file is missing, truncated or corrupt, or was built from other token blocks.
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(f"teacher cache {path} does not exist; build it with TeacherCache.build")
        try:
            handle = safe_open(str(path), framework="pt")
            metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"teacher cache {path} is truncated or corrupt ({e}); {_rebuild_hint(path)}") from None
        _check_layout(path, handle, metadata)
        cache = cls(path, handle, metadata)
        cache.check_blocks(blocks)
        return cache

    def check_blocks(self, blocks: torch.Tensor) -> None:
        """Raise UserError unless `blocks` are exactly the tokens this cache was built from."""
        blocks = check_blocks(blocks)
        if tuple(blocks.shape) != (self.n_blocks, self.seq_len) or fingerprint(blocks) != self.fingerprint:
            raise UserError(f"teacher cache {self.path} was built for other token blocks "
                            f"({self.n_blocks}x{self.seq_len}, sha256 {self.fingerprint[:12]}) than these "
                            f"({blocks.shape[0]}x{blocks.shape[1]}, sha256 {fingerprint(blocks)[:12]}); "
                            f"pass the same blocks or {_rebuild_hint(self.path)}")

    def check_teacher(self, teacher_id: str | None, temperature: float = 1.0) -> None:
        """Raise UserError unless this cache holds `teacher_id`'s distribution at `temperature`.

        A cache whose builder named no teacher passes the teacher check (its path names the teacher).
        """
        if self.teacher_id is not None and teacher_id is not None and self.teacher_id != teacher_id:
            raise UserError(f"teacher cache {self.path} holds another teacher ({self.teacher_id}, not {teacher_id}); "
                            f"{_rebuild_hint(self.path)}")
        if not math.isclose(self.temperature, temperature, rel_tol=1e-12):
            raise UserError(f"teacher cache {self.path} holds the teacher at temperature {self.temperature:g}, "
                            f"not {temperature:g}; {_rebuild_hint(self.path)}")

    def read(self, start: int, stop: int) -> TeacherSlice:
        """Teacher log-probs of blocks[start:stop], read from disk, as float32 / int64 CPU tensors."""
        if self.top_k is None:
            return TeacherSlice(self._handle.get_slice("logprobs")[start:stop].float(), None, None)
        return TeacherSlice(self._handle.get_slice("logprobs")[start:stop].float(),
                            self._handle.get_slice("token_ids")[start:stop].long(),
                            self._handle.get_slice("rest_logprob")[start:stop].float())


def _open_writer(tmp: Path, n_blocks: int, seq_len: int, vocab: int, k: int | None, requested_top_k: int | None,
                 dtype_name: str, blocks_sha256: str, temperature: float,
                 teacher_id: str | None) -> SafetensorsStreamWriter:
    positions = seq_len - 1
    dtype = LOGPROB_DTYPES[dtype_name]
    if k is None:
        tensors = {"logprobs": (dtype, (n_blocks, positions, vocab))}
    else:
        tensors = {"token_ids": (torch.int32, (n_blocks, positions, k)),
                   "logprobs": (dtype, (n_blocks, positions, k)),
                   "rest_logprob": (torch.float32, (n_blocks, positions))}
    metadata = {"format": FORMAT, "fingerprint": blocks_sha256, "n_blocks": str(n_blocks), "seq_len": str(seq_len),
                "vocab_size": str(vocab), "top_k": "full" if k is None else str(k),
                "requested_top_k": "full" if requested_top_k is None else str(requested_top_k),
                "logprob_dtype": dtype_name, "positions": "next-token positions 0 .. seq_len-2 of each block",
                "temperature": repr(temperature)}
    if temperature == 1:  # the teacher's own mean next-token NLL per block: its held-out perplexity for free
        tensors["teacher_nll"] = (torch.float64, (n_blocks,))
    if teacher_id is not None:
        metadata["teacher"] = teacher_id
    return SafetensorsStreamWriter(tmp, tensors, metadata)


def _top_k(logprobs: torch.Tensor, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(token ids int32, top-k log-probs in `dtype`, log mass of the rest) of log-probs [b, P, vocab]; overwrites them."""
    top_logprobs, top_ids = logprobs.topk(k, dim=-1)
    rest = logprobs.scatter_(-1, top_ids, float("-inf")).logsumexp(dim=-1)
    return top_ids.to(torch.int32), top_logprobs.to(dtype), rest


def _write_batch(writer: SafetensorsStreamWriter, start: int, parts: list) -> None:
    """Store one batch of teacher log-probs, given per chunk of positions as full log-probs or `_top_k` triples."""
    if isinstance(parts[0], torch.Tensor):
        writer.write_rows("logprobs", start, torch.cat(parts, dim=1))
        return
    for i, name in enumerate(("token_ids", "logprobs", "rest_logprob")):
        writer.write_rows(name, start, torch.cat([part[i] for part in parts], dim=1))


def _check_layout(path: Path, handle, metadata: dict[str, str]) -> None:
    """Raise UserError unless the header describes a complete, self-consistent teacher cache."""
    def corrupt(problem: str) -> UserError:
        return UserError(f"teacher cache {path} is corrupt or not a teacher cache ({problem}); {_rebuild_hint(path)}")

    if metadata.get("format") != FORMAT:
        raise corrupt(f"format tag {metadata.get('format')!r}, expected {FORMAT!r}")
    try:
        n, seq_len, vocab = int(metadata["n_blocks"]), int(metadata["seq_len"]), int(metadata["vocab_size"])
        top_k = None if metadata["top_k"] == "full" else int(metadata["top_k"])
        dtype = LOGPROB_DTYPES[metadata["logprob_dtype"]]
        if not float(metadata.get("temperature", "1.0")) > 0:
            raise ValueError(f"temperature {metadata['temperature']!r} is not positive")
        if len(metadata["fingerprint"]) != 64:
            raise ValueError(f"fingerprint {metadata['fingerprint']!r} is not a sha256 hex digest")
    except (KeyError, ValueError) as e:
        raise corrupt(f"bad metadata {e}") from None
    positions = seq_len - 1
    names = {"float32": "F32", "float16": "F16", "int32": "I32", "float64": "F64"}
    if top_k is None:
        expected = {"logprobs": (dtype, [n, positions, vocab])}
    else:
        expected = {"token_ids": (torch.int32, [n, positions, top_k]), "logprobs": (dtype, [n, positions, top_k]),
                    "rest_logprob": (torch.float32, [n, positions])}
    if "teacher_nll" in handle.keys():  # caches written before it was kept have none
        expected["teacher_nll"] = (torch.float64, [n])
    if set(handle.keys()) != set(expected):
        raise corrupt(f"tensors {sorted(handle.keys())}, expected {sorted(expected)}")
    for name, (want_dtype, want_shape) in expected.items():
        view = handle.get_slice(name)
        got_dtype, got_shape = view.get_dtype(), list(view.get_shape())
        if got_dtype != names[str(want_dtype).removeprefix("torch.")] or got_shape != want_shape:
            raise corrupt(f"{name} is {got_dtype} {got_shape}, expected {want_dtype} {want_shape}")


def kl_per_position(teacher: TeacherSlice, student_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) at every position, in nats.

    Args:
        teacher: the teacher's slice, on the student's device.
        student_logprobs: float32 [blocks, P, vocab]; overwritten in top-k mode.

    Returns:
        float32 [blocks, P], clamped at 0 (rounding can otherwise give -1e-8 for identical models).
    """
    if teacher.token_ids is None:
        teacher_logprobs = teacher.logprobs - teacher.logprobs.logsumexp(dim=-1, keepdim=True)
        return _plogp_ratio(teacher_logprobs, student_logprobs).sum(dim=-1).clamp_min(0.0)
    student_top = student_logprobs.gather(-1, teacher.token_ids)
    student_rest = student_logprobs.scatter_(-1, teacher.token_ids, float("-inf")).logsumexp(dim=-1)
    buckets = torch.cat([teacher.logprobs, teacher.rest_logprob.unsqueeze(-1)], dim=-1)
    buckets = buckets - buckets.logsumexp(dim=-1, keepdim=True)
    student_buckets = torch.cat([student_top, student_rest.unsqueeze(-1)], dim=-1)
    return _plogp_ratio(buckets, student_buckets).sum(dim=-1).clamp_min(0.0)


def _plogp_ratio(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """p * (log p - log q) elementwise, with 0 where p == 0."""
    return torch.where(log_p > float("-inf"), log_p.exp() * (log_p - log_q), torch.zeros_like(log_p))


def check_kl_inputs(blocks: torch.Tensor, batch_size: int, cache: TeacherCache) -> torch.Tensor:
    """The checked blocks of a KL measurement: the cache's own blocks, a valid batch size, temperature 1."""
    blocks = check_blocks(blocks)
    check_batch_size(batch_size)
    cache.check_blocks(blocks)
    if cache.temperature != 1.0:
        raise UserError(f"teacher cache {cache.path} holds the teacher at temperature {cache.temperature:g}, not 1; "
                        "KL to the teacher is measured at temperature 1")
    return blocks


def check_same_vocab(student_logprobs: torch.Tensor, cache: TeacherCache) -> None:
    """Raise UserError unless the student predicts as many tokens as the teacher in `cache`."""
    if student_logprobs.shape[-1] != cache.vocab_size:
        raise UserError(f"the model predicts {student_logprobs.shape[-1]} tokens but the teacher in {cache.path} "
                        f"predicts {cache.vocab_size}; KL needs the same tokenizer and vocabulary")


def kl_to_teacher(model: nn.Module, blocks: torch.Tensor, cache: TeacherCache, batch_size: int = 4,
                  progress: bool = False, per_block: bool = False) -> float | torch.Tensor:
    """Mean per-token KL(teacher ‖ model) in nats over the next-token positions of `blocks`.

    Args:
        model: the student; only `model(input_ids=..., use_cache=False).logits` is used.
        blocks: token ids, shape [n_blocks, seq_len]; must be the blocks `cache` was built from.
        cache: the teacher distribution at temperature 1 (see the module docstring for the top-k
            approximation), or a `TeacherSubset` of one.
        batch_size: blocks per forward pass.
        progress: show a tqdm bar.
        per_block: return the mean KL of every block instead of the overall mean.

    Returns:
        a float, or with `per_block` a float64 CPU tensor of shape [n_blocks].

    Raises:
        UserError: if `blocks` are not the cache's blocks or the model's vocabulary differs from the teacher's.
    """
    blocks = check_kl_inputs(blocks, batch_size, cache)
    check_vocab(model, blocks)
    device = model_device(model)
    block_sums = torch.zeros(len(blocks), dtype=torch.float64)
    with eval_mode(model), torch.inference_mode():
        for start, batch in batches(blocks, batch_size, device, progress, desc="KL to teacher"):
            teacher = cache.read(start, start + len(batch)).to(device)
            kl = torch.empty(len(batch), cache.positions)
            for p, q, student in next_token_logprob_chunks(model, batch):
                check_same_vocab(student, cache)
                kl[:, p:q] = kl_per_position(teacher.positions(p, q), student).cpu()
            block_sums[start:start + len(batch)] = kl.double().sum(dim=-1)
    per_block_kl = block_sums / cache.positions
    if per_block:
        return per_block_kl
    result = float(per_block_kl.mean())
    if not math.isfinite(result):
        log.warning("KL to teacher is %s: the model gives zero probability to tokens the teacher predicts", result)
    return result
