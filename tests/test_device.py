"""The device each process chooses: torchrun's local ranks, CUDA_VISIBLE_DEVICES, CPU-only machines, `--device`.

The GPU count is passed in (`cuda_count`), as the machine would report it, so every case runs on a CPU.
"""

from __future__ import annotations

import pytest
import torch

from evoprune.device import choose_device, distributed_backend, synchronize, torchrun_launch, visible_cuda_count
from evoprune.errors import UserError
from evoprune.models import check_device, resolve_compute_dtype


def torchrun_env(local_rank: int, nproc: int = 4, node: int = 0, **extra) -> dict[str, str]:
    """The variables torchrun sets for one process of `nproc` per machine."""
    return {"RANK": str(node * nproc + local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(2 * nproc),
            "LOCAL_WORLD_SIZE": str(nproc), **extra}


@pytest.mark.parametrize("local_rank", [0, 1, 3])
@pytest.mark.parametrize("node", [0, 1])
def test_each_torchrun_process_gets_its_local_ranks_gpu(local_rank, node):
    env = torchrun_env(local_rank, node=node)
    assert choose_device("cuda", env, cuda_count=4) == torch.device("cuda", local_rank)
    assert torchrun_launch(env).rank == node * 4 + local_rank
    assert distributed_backend(env, cuda_count=4) == ("nccl", torch.device("cuda", local_rank))


def test_a_local_rank_without_a_gpu_is_one_line():
    with pytest.raises(UserError, match=r"local rank 4 has no GPU of its own.*4 CUDA GPU\(s\).*nproc_per_node 4") as e:
        choose_device("cuda", torchrun_env(4, nproc=5), cuda_count=4)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="local rank 1 has no GPU"):  # only one GPU visible of the four
        choose_device("cuda", torchrun_env(1, CUDA_VISIBLE_DEVICES="2"), cuda_count=4)


def test_more_processes_than_gpus_fall_back_to_gloo():
    assert distributed_backend(torchrun_env(0, nproc=5), cuda_count=4) == ("gloo", None)
    assert distributed_backend(torchrun_env(1, nproc=2), cuda_count=0) == ("gloo", None)


@pytest.mark.parametrize("visible, count", [("", 0), ("-1", 0), ("0", 1), ("1,3", 2), ("0,1,2,3,4,5", 4),
                                            ("0,-1,2", 1)])
def test_cuda_visible_devices_limits_the_count(visible, count):
    assert visible_cuda_count({"CUDA_VISIBLE_DEVICES": visible}, cuda_count=4) == count
    assert visible_cuda_count({}, cuda_count=4) == 4


@pytest.mark.parametrize("env, count", [({"CUDA_VISIBLE_DEVICES": ""}, 4), ({}, 0), (torchrun_env(1), 0)])
def test_no_visible_gpu_means_cpu_and_cuda_refused_in_one_line(env, count):
    assert choose_device(None, env, cuda_count=count) == torch.device("cpu")
    assert choose_device("cpu", env, cuda_count=count) == torch.device("cpu")
    assert distributed_backend(env, cuda_count=count) == ("gloo", None)
    for requested in ("cuda", "cuda:0"):
        with pytest.raises(UserError, match=f"device {requested} is not available: .*no CUDA GPU.*--device cpu") as e:
            choose_device(requested, env, cuda_count=count)
        assert "\n" not in str(e.value)
    if "CUDA_VISIBLE_DEVICES" in env:
        with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES=''"):
            choose_device("cuda", env, cuda_count=count)


def test_an_explicit_index_is_honoured():
    assert choose_device("cuda:1", {}, cuda_count=2) == torch.device("cuda", 1)
    assert choose_device("cuda:1", torchrun_env(3), cuda_count=4) == torch.device("cuda", 1)  # wins over LOCAL_RANK
    assert choose_device("cuda", {}, cuda_count=2) == torch.device("cuda", 0)  # no torchrun: the first GPU
    with pytest.raises(UserError, match=r"device cuda:2 is not available: this process sees 2 CUDA GPU\(s\)"):
        choose_device("cuda:2", {}, cuda_count=2)


def test_bad_names_and_bad_torchrun_variables_are_refused():
    with pytest.raises(UserError, match=r"model.device \(--device\) must be cpu, cuda, cuda:N or mps, got 'gpu'"):
        choose_device("gpu", {}, cuda_count=4)
    with pytest.raises(UserError, match="LOCAL_RANK='x' is not a whole number"):
        choose_device("cuda", {"LOCAL_RANK": "x"}, cuda_count=4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_this_machine_checks_through_the_same_function():
    check_device("cpu")
    with pytest.raises(UserError, match="device cuda is not available"):
        check_device("cuda")
    assert choose_device("cuda:0", {}, cuda_count=1) == torch.device("cuda", 0)  # a count given wins over torch's


def test_synchronize_and_compute_dtype_take_the_chosen_device():
    synchronize(torch.device("cpu"))  # nothing queued on a CPU: returns at once
    chosen = choose_device("cuda", torchrun_env(2), cuda_count=4)
    assert resolve_compute_dtype("auto", torch.bfloat16, str(chosen)) == torch.bfloat16  # GPUs compute in bf16
    assert resolve_compute_dtype("auto", torch.bfloat16, "cpu") == torch.float32
