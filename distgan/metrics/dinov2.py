"""DINOv2 ViT-S/14 (Oquab et al. 2023) in plain PyTorch, as a feature network: the representation
Stein et al. (2023, "Exposing flaws of generative model evaluation metrics") found to rank
generated images the way people do, where Inception's features do not.

The module names are those of the official code (`facebookresearch/dinov2`, built with
`block_chunks=0` as its torch hub entry does), so `dinov2_vits14_pretrain.pth` loads with
strict=True. Features are the CLS token after the final norm (384), for images resized to 224x224
(bicubic) and normalized with the ImageNet mean and std.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 384
SIZE = 224  # 16x16 patches of 14 px
PATCH = 14
TRAIN_GRID = 37  # the position embeddings are for 518 px (37x37 patches); interpolated to 16x16
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, patches, dim]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(nn.Module):
    """[N, C, H, W] in [-1, 1] (C = 1 or 3, any size) -> [N, 384] CLS features of ViT-S/14."""

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6):
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + TRAIN_GRID**2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # unused here (masked training); in the file
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def interpolate_pos_encoding(self, w: int, h: int) -> torch.Tensor:
        """The position embeddings for a w x h pixel input, as the official code makes them: bicubic,
        with a scale factor of (patches + 0.1) / 37 (the +0.1 is its guard against rounding down a
        size; the factor, not only the size, sets where the samples fall, so it is kept)."""
        grid = self.pos_embed.shape[1] - 1
        m = int(math.sqrt(grid))
        w0, h0 = w // PATCH, h // PATCH
        if w0 * h0 == grid and w == h:
            return self.pos_embed
        pos = self.pos_embed.float()
        patch_pos = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos, scale_factor=((w0 + 0.1) / m, (h0 + 0.1) / m), mode="bicubic", antialias=False
        )
        assert patch_pos.shape[-2:] == (w0, h0)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, w0 * h0, -1)
        return torch.cat([pos[:, :1], patch_pos], 1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # to [0, 1] pixels, resized as the evaluation code does (bicubic, antialiased when
        # shrinking) and clamped as an 8-bit image would be, then ImageNet-normalized
        x = F.interpolate((x + 1) / 2, size=(SIZE, SIZE), mode="bicubic", align_corners=False, antialias=True)
        x = (x.clamp(0, 1) - self.mean) / self.std
        w, h = x.shape[-2:]
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], 1)
        tokens = tokens + self.interpolate_pos_encoding(w, h)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def load(path: str | Path) -> DinoV2:
    """The network with the weights of `path` (a state dict; loaded without unpickling code)."""
    net = DinoV2()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net.eval()
