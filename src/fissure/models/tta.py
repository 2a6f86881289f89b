"""Test-time augmentation: a model's probabilities averaged over flipped and rotated views.

Training shows every model its images flipped and turned by quarter turns
(:func:`fissure.training.datasets.augment`), yet a trained network answers differently for
each view: on the magnetic-tile test set the eight views of one classifier scored 0.81-0.92
balanced accuracy on their own and 0.97 averaged (docs/benchmarks.md). The spec says which views
(``spec["tta"]``):

- ``none``: the image as it is (every model trained before this module);
- ``flips``: also mirrored left-right, top-bottom and both (4 forward passes);
- ``d8``: those and the same four of the transposed image, i.e. all quarter turns (8 passes;
  square inputs only, which is what fissure feeds: resized images and tiles; otherwise flips).

The wrapped module returns what the plain one does, so callers are unchanged: a segmenter's
logits (the log-odds of the averaged probability), a classifier's log of the averaged class
probabilities (softmax gives them back exactly). Its state dict is the plain module's.
"""

from __future__ import annotations

import torch
from torch import nn

from fissure.errors import ConfigError

VIEWS = {"none": 1, "flips": 4, "d8": 8}
_EPS = 1e-6


def _view(x: torch.Tensor, k: int) -> torch.Tensor:
    """View ``k`` of a batch: bit 0 mirrors left-right, bit 1 top-bottom, bit 2 transposes."""
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x


def _unview(y: torch.Tensor, k: int) -> torch.Tensor:
    """A per-pixel output of view ``k`` turned back to the image's orientation."""
    if k & 2:
        y = y.flip(-2)
    if k & 1:
        y = y.flip(-1)
    if k & 4:
        y = y.transpose(-1, -2)
    return y


class TestTimeAugmented(nn.Module):
    """``module`` answering with its probabilities averaged over ``tta``'s views (module docstring)."""

    def __init__(self, module: nn.Module, tta: str):
        super().__init__()
        if tta not in VIEWS:  # a spec from elsewhere: one line, never a traceback
            raise ConfigError(f"model spec tta: unknown value {tta!r}; choose one of {', '.join(VIEWS)}")
        self.inner = module
        self.tta = tta

    def views(self, x: torch.Tensor) -> int:
        square = x.shape[-1] == x.shape[-2]
        return VIEWS[self.tta] if square or self.tta != "d8" else VIEWS["flips"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, total = self.views(x), None
        for k in range(n):
            out = self.inner(_view(x, k)).float()
            # per-pixel maps turn back; class scores have no orientation
            prob = _unview(torch.sigmoid(out), k) if out.dim() == 4 else torch.softmax(out, dim=1)
            total = prob if total is None else total + prob
        mean = (total / n).clamp(_EPS, 1 - _EPS)
        return torch.log(mean / (1 - mean)) if mean.dim() == 4 else torch.log(mean)

    # the plain module's weights, under its own names: saving, packaging and fine-tuning a loaded
    # model see the model, not the wrapper
    def state_dict(self, *args, **kwargs):
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)


def wrap(module: nn.Module, tta: str | None) -> nn.Module:
    """The plain model under ``module`` with the views ``tta`` says (None or ``none``: the plain
    model), so the spec decides, whatever wrapped it before."""
    if not tta or tta == "none":
        return unwrap(module)
    return TestTimeAugmented(unwrap(module), tta)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain model under any test-time augmentation (Grad-CAM needs one forward pass)."""
    return module.inner if isinstance(module, TestTimeAugmented) else module
