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


@torch.no_grad()
def average_buffers(*modules: torch.nn.Module) -> None:
    """Replace every floating-point buffer (BatchNorm running stats) by its mean over the ranks, in
    place (a collective; a no-op in one process). DDP keeps parameters equal, but with
    `forward_sync_buffers=False` each rank's running stats follow its own batches."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    buffers = [b for m in modules for b in unwrap(m).buffers() if b.is_floating_point()]
    if not buffers:  # the same on every rank: all skip the collective
        return
    # One all_reduce for all of them (gloo has no AVG: sum, then divide).
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for b, mean in zip(buffers, flat.split([b.numel() for b in buffers])):
        b.copy_(mean.view_as(b))


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 of all parameters' and buffers' bytes (BatchNorm running stats are what the model
    evaluates with): equal digests across ranks = replicas in sync."""
    h = hashlib.sha256()
    m = unwrap(module)
    for t in (*m.parameters(), *m.buffers()):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
