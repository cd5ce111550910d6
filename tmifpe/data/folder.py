"""A folder of images in torchvision's ``ImageFolder`` layout (``<dir>/<class>/<image>``), as
evaluation tensors, images in ImageFolder's order, pixels in [0,1]. Labels: when every class
folder is named by a non-negative integer, that integer (so ``<dir>/3/`` holds the model's class 3
even if other classes are absent); otherwise ImageFolder's index of the name in sorted order.
Greyscale images stay one-channel, everything else is RGB.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets import ImageFolder
from torchvision.transforms.functional import pil_to_tensor


class ImageFolderError(ValueError):
    """The folder is not a usable ImageFolder (no images, mixed sizes or channel counts)."""


def _open(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("L" if img.mode in ("1", "L", "I;16", "I") else "RGB")


def load_image_folder(
    root: Path, n_examples: int | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """(x float32 (N, C, H, W) in [0,1], y int64 (N,), class names) of the first ``n_examples``
    images (all when None)."""
    root = Path(root)
    if not root.is_dir():
        raise ImageFolderError(f"{root} is not a folder")
    try:
        ds = ImageFolder(str(root), loader=_open)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ImageFolderError(f"{root}: not an ImageFolder (<dir>/<class>/<image>): "
                               f"{' '.join(str(exc).split())[:160]}") from None
    numbered = all(c.isdigit() for c in ds.classes)
    n = len(ds) if n_examples is None else min(n_examples, len(ds))
    xs, ys = [], []
    for i in range(n):
        img, label = ds[i]
        t = pil_to_tensor(img)  # (C, H, W) uint8
        if xs and t.shape != xs[0].shape:
            raise ImageFolderError(f"{ds.samples[i][0]}: image of shape {tuple(t.shape)}, the "
                                   f"first image is {tuple(xs[0].shape)}; resize them to one size")
        xs.append(t)
        ys.append(int(ds.classes[label]) if numbered else label)
    x = torch.stack(xs).float().div_(255)
    return x, torch.tensor(ys, dtype=torch.int64), list(ds.classes)
