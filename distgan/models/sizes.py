"""Which square images the conv families (dcgan, resnet) make: s0 * 2^k px from an s0 x s0 start map.

s0 in 4..7 is one octave, so every size has exactly one (s0, k): 32 = 4 * 2^3, 28 = 7 * 2^2,
48 = 6 * 2^3. Sizes 8..64 that are powers of two start from 4x4, as DCGAN always has.
"""

from __future__ import annotations

MIN_SIZE, MAX_SIZE = 8, 256
SIZES = tuple(sorted(s0 * 2**k for s0 in range(4, 8) for k in range(1, 7) if MIN_SIZE <= s0 * 2**k <= MAX_SIZE))


def start_map(size: int) -> tuple[int, int]:
    """(s0, k) with size = s0 * 2^k, s0 in 4..7, k >= 1: the start map's side and the number of doublings."""
    if size not in SIZES:
        raise ValueError(f"{size} px is not one of {SIZES}")
    s0, k = size, 0
    while s0 >= 8:
        s0, k = s0 // 2, k + 1
    return s0, k


def shape_problem(arch: str, sample_shape: tuple[int, ...]) -> str | None:
    """Why `arch` cannot make samples of this shape (one line that says how to fix it), or None."""
    if len(sample_shape) != 3:
        shape = tuple(sample_shape)
        return f"model.arch={arch} needs images (C, H, W); this data has samples of shape {shape}: use model.arch=mlp"
    c, h, w = sample_shape
    if h != w or h not in SIZES:
        return (
            f"model.arch={arch} makes square images of {', '.join(map(str, SIZES))} px (s0*2^k, s0 in 4..7); "
            f"this data is {h}x{w}: resize it to one of these or use model.arch=mlp"
        )
    if c not in (1, 3):
        return f"model.arch={arch} makes 1- or 3-channel images; this data has {c} channels"
    return None
