"""Data-parallel training under ``torchrun`` with explicit gradient synchronization.

We do not wrap the policy in ``DistributedDataParallel``: the training entry point is ``compute_loss`` rather than
``forward``, and the MeanFlow target uses ``torch.func.jvp``, which bypasses DDP's autograd hooks. Instead every
rank starts from rank 0's parameters and averages gradients with one flat all-reduce after ``backward()`` — correct
for every head, and tested by checking that parameters stay bit-identical across ranks.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from core.errors import ConfigError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def parse_device(device: str, key: str = "device") -> torch.device:
    """``device`` as a torch device, or a :class:`ConfigError` naming ``key``. Whether this machine has it is
    :func:`resolve_device`'s question: a config may be composed here for a run on another machine."""
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{key}={device!r} is not a device torch knows (use cpu, cuda or cuda:N): {e}") from None


def resolve_device(device: str, key: str = "device") -> torch.device:
    """The torch device for ``device``, checked before any work starts. A bare ``cuda`` gets an index: this rank's
    own GPU under torchrun (``LOCAL_RANK``; left as is, every rank of a node would land on GPU 0 and NCCL refuses
    that), GPU 0 otherwise (``torch.cuda.set_device`` needs one)."""
    dev = parse_device(device, key)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={device} but this torch ({torch.__version__}) sees no CUDA GPU; use {key}=cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank())
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{key}={device} resolves to GPU {dev.index}, but only {torch.cuda.device_count()} GPU(s) are visible"
            )
    return dev


def init(device: str) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); no-op otherwise."""
    if world_size() > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` outside a process group). A collective: call it on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_parameters(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not dist.is_initialized():
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


def all_reduce_gradients(model: nn.Module) -> None:
    """Average gradients over ranks (one flat buffer: a single collective per step)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
