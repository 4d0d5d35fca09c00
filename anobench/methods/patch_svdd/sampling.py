"""Training-pair sampling for Patch SVDD, on tensors, one pair per image (official codes/datasets.py).

Coordinates are drawn with torch's global CPU RNG (or a given generator), so a run is reproducible
for a fixed `lightning.seed_everything` seed on any device.

- SVDD' pair: a K×K patch at a uniform position and the same patch jittered by (dh, dw) with
  dh, dw ∈ [−K/32, K/32], not both 0, clipped into the image (official `generate_coords_svdd`).
- Position pair: a centre patch p1 at a uniform position and one of its 8 neighbours, label
  0..7 in the order (−1,−1), (−1,0), (−1,1), (0,−1), (0,1), (1,−1), (1,0), (1,1) (row, col
  direction); the neighbour is offset by 3K/4 + U[0, K/4) px along each nonzero axis and clipped
  into the image, exactly as the official `generate_coords_position`. Clipping (centres within
  K px of the border) shortens the offset but never flips its sign; only a centre touching the
  border with the neighbour pointing outwards gives a zero offset on that axis.
"""

from __future__ import annotations

import torch

POS_TO_DIFF = torch.tensor([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)], dtype=torch.long)


def min_image_size(patch: int) -> int:
    """Smallest side for which some centre patch has its whole 3×3 neighbourhood inside the image.

    The largest neighbour offset is 3K/4 + K/4 − 1 = K − 1, so the centre needs K − 1 px of room
    on each side: S ≥ (K − 1) + K + (K − 1) = 3K − 2 (190 px for K = 64, 94 px for K = 32).
    Smaller images would make most position pairs clipped, i.e. the self-supervised task ill-posed.
    """
    return 3 * patch - 2


def check_image_size(height: int, width: int, patch: int) -> None:
    need = min_image_size(patch)
    if height < need or width < need:
        raise ValueError(
            f"Patch SVDD's position task with K={patch} needs images of at least {need}×{need} px "
            f"(a centre patch plus its 3×3 neighbourhood), got image size {height}×{width}; "
            f"use image_size >= {need} (the paper uses 256)"
        )


def _uniform_coords(n: int, height: int, width: int, patch: int, generator: torch.Generator | None) -> torch.Tensor:
    rows = torch.randint(0, height - patch + 1, (n,), generator=generator)
    cols = torch.randint(0, width - patch + 1, (n,), generator=generator)
    return torch.stack([rows, cols], dim=1)


def _clip(coords: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    return torch.stack(
        [coords[:, 0].clamp(0, height - patch), coords[:, 1].clamp(0, width - patch)], dim=1
    )


def sample_svdd_pairs(
    n: int, height: int, width: int, patch: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs of top-left corners (n×2 long each): a patch and its nonzero jitter of ≤ K/32 px."""
    p1 = _uniform_coords(n, height, width, patch, generator)
    jitter = max(1, patch // 32)
    side = 2 * jitter + 1
    # uniform over the side² − 1 nonzero offsets (= the official rejection loop)
    flat = torch.randint(0, side * side - 1, (n,), generator=generator)
    flat = flat + (flat >= (side * side) // 2).long()  # skip the centre (0, 0)
    offset = torch.stack([flat // side - jitter, flat % side - jitter], dim=1)
    return p1, _clip(p1 + offset, height, width, patch)


def sample_position_pairs(
    n: int, height: int, width: int, patch: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n (centre, neighbour, label) triples; corners n×2 long, labels n long in 0..7."""
    check_image_size(height, width, patch)
    p1 = _uniform_coords(n, height, width, patch, generator)
    labels = torch.randint(0, 8, (n,), generator=generator)
    delta = torch.randint(0, patch // 4, (n, 2), generator=generator) + 3 * patch // 4
    p2 = p1 + POS_TO_DIFF[labels] * delta
    return p1, _clip(p2, height, width, patch), labels


def crop_patches(
    images: torch.Tensor, corners: torch.Tensor, patch: int, image_index: torch.Tensor | None = None
) -> torch.Tensor:
    """One K×K crop per row of `corners` (n×2, row, col) → n×C×K×K, from image ``image_index[i]`` of
    `images` (N×C×H×W), or from image i when `image_index` is None (then N = n). Only the patch
    pixels are gathered: a whole training set can be cropped from without copying its images."""
    n = corners.shape[0]
    device = images.device
    corners = corners.to(device)
    span = torch.arange(patch, device=device)
    rows = (corners[:, 0, None] + span)[:, :, None]  # n×K×1
    cols = (corners[:, 1, None] + span)[:, None, :]  # n×1×K
    which = torch.arange(n, device=device) if image_index is None else image_index.to(device)
    return images.permute(0, 2, 3, 1)[which[:, None, None], rows, cols].permute(0, 3, 1, 2).contiguous()
