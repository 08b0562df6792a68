"""Evaluation of causal LMs on token blocks: perplexity, KL to a cached teacher, latency and memory."""

from .latency import LatencyResult, cache_nbytes, compare_latency, measure_latency, weights_nbytes
from .latency_sweep import Workload, sweep_latency, sweep_rows
from .perplexity import mean_nll, perplexity
from .streamed_perplexity import streamed_mean_nll, streamed_perplexity
from .teacher import TeacherCache, TeacherSlice, kl_to_teacher

__all__ = [
    "LatencyResult",
    "TeacherCache",
    "TeacherSlice",
    "Workload",
    "cache_nbytes",
    "compare_latency",
    "kl_to_teacher",
    "mean_nll",
    "measure_latency",
    "perplexity",
    "streamed_mean_nll",
    "streamed_perplexity",
    "sweep_latency",
    "sweep_rows",
    "weights_nbytes",
]
