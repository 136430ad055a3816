"""The few collectives the loop and the evaluator need, each a no-op in a single process."""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from distgan.core.engine import unwrap


def gather(obj) -> list:
    """obj from every rank (a collective: every rank must call it)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item())


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 of all parameters' bytes: equal digests across ranks = replicas in sync."""
    h = hashlib.sha256()
    for p in unwrap(module).parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
