"""scikit-learn's 8x8 handwritten digits, upsampled to 1x16x16 float tensors.

The data ships inside scikit-learn (``sklearn.datasets.load_digits``, 1797 images,
10 classes), so nothing is downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIZE = 16
TEST_FRACTION = 0.25


def load(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(x_train, y_train, x_test, y_test)``: a stratified 75/25 split.

    Images are float32 in [0, 1], shaped ``(N, 1, 16, 16)`` (bilinear upsampling of the
    8x8 originals); labels are int64. The split depends only on ``seed``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = _images(torch.from_numpy(digits.images))
    y = torch.from_numpy(digits.target).long()
    idx_train, idx_test = split_indices(seed)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def split_indices(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into ``load_digits()`` of the training and the test images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    idx_train, idx_test = train_test_split(
        range(len(target)), test_size=TEST_FRACTION, stratify=target, random_state=seed)
    return torch.tensor(idx_train), torch.tensor(idx_test)


def _images(raw: torch.Tensor) -> torch.Tensor:
    """(N, 8, 8) pixel counts 0..16 -> (N, 1, 16, 16) float32 in [0, 1]."""
    x = (raw.float() / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.clamp_(0.0, 1.0).contiguous()
