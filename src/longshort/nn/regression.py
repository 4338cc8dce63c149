"""What the classifier's head outputs mean under ``task: regress``, and the losses that train them.

The backbone is the classifier's (:class:`~longshort.nn.classifier.SequenceClassifier`); only its last layer's
width changes: ``k`` targets times ``width`` outputs each, read here as

- ``mse``, ``mae``, ``huber``: one value per target, the prediction;
- ``quantile``: one value per level of ``quantiles`` (sorted at prediction, so the levels never cross: the
  monotone rearrangement of Chernozhukov et al. 2010); the point prediction is the level nearest 0.5;
- ``gaussian_nll``: a mean and a variance (``softplus`` of the second output, plus a floor) per target; the
  prediction is the mean, and the 10% and 90% quantiles of that normal are its 80% interval;
- ``student_t`` (task forecast): location, scale and degrees of freedom (``2 + softplus``) of a Student-t.

Everything is in the scaled target's units (the pipeline standardises the target on the training split); the
run maps predictions back (:meth:`longshort.data.pipeline.Preprocessor.unscale_targets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class RegressSection(Protocol):
    """What :func:`regression_outputs` reads of ``regress.*`` (training/config.py's RegressSection; nn does not
    import training)."""

    loss: str
    quantiles: Sequence[float]
    huber_delta: float

Z_80 = 1.2815515655446004  # the standard normal's 90% quantile: mean +- Z_80 * sd is an 80% interval
DISTRIBUTIONS = ("gaussian_nll", "student_t")  # the losses whose head predicts a whole distribution
VAR_FLOOR = 1e-4  # the smallest variance the Gaussian head predicts (scaled units): keeps the NLL finite


@dataclass(frozen=True)
class RegressionOutputs:
    """The head's layout for ``targets`` numbers per sequence under loss ``loss``."""

    loss: str
    targets: int
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    huber_delta: float = 1.0

    @property
    def width(self) -> int:
        """Outputs per target."""
        return {"quantile": len(self.quantiles), "gaussian_nll": 2, "student_t": 3}.get(self.loss, 1)

    @property
    def size(self) -> int:
        """The head's whole output width (what the model is built with as its number of 'classes')."""
        return self.targets * self.width

    @property
    def levels(self) -> tuple[float, ...]:
        """The quantile levels :meth:`quantile_values` returns (none for the point losses)."""
        if self.loss == "quantile":
            return self.quantiles
        return (0.1, 0.9) if self.loss in DISTRIBUTIONS else ()

    def _shaped(self, z: Tensor) -> Tensor:
        if z.shape[-1] != self.size:
            raise ValueError(f"the model outputs {z.shape[-1]} values per sequence, expected {self.size} "
                             f"({self.targets} targets x {self.width} for loss {self.loss})")
        return z.float().reshape(*z.shape[:-1], self.targets, self.width)

    def _variance(self, raw: Tensor) -> Tensor:
        return F.softplus(raw) + VAR_FLOOR

    def point(self, z: Tensor) -> Tensor:
        """The prediction [B, k]."""
        s = self._shaped(z)
        if self.loss == "quantile":
            mid = min(range(len(self.quantiles)), key=lambda i: abs(self.quantiles[i] - 0.5))
            return s.sort(-1).values[..., mid]
        return s[..., 0]

    def quantile_values(self, z: Tensor) -> Tensor:
        """[B, k, len(levels)]: the predicted quantiles (sorted), or the Gaussian's 10% and 90% quantiles."""
        s = self._shaped(z)
        if self.loss == "quantile":
            return s.sort(-1).values
        if self.loss == "gaussian_nll":
            sd = self._variance(s[..., 1]).sqrt()
            return torch.stack([s[..., 0] - Z_80 * sd, s[..., 0] + Z_80 * sd], -1)
        if self.loss == "student_t":
            from scipy.stats import t as student  # torch's StudentT has no inverse CDF

            df, scale = self._student(s)
            z = torch.as_tensor(student.ppf(0.9, df.detach().cpu().double().numpy()), dtype=s.dtype, device=s.device)
            return torch.stack([s[..., 0] - z * scale, s[..., 0] + z * scale], -1)
        return s[..., :0]

    def _student(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """(degrees of freedom > 2, so the variance exists; scale > 0) of a Student-t head."""
        return 2.0 + F.softplus(s[..., 2]), F.softplus(s[..., 1]) + VAR_FLOOR**0.5

    def distribution(self, z: Tensor) -> torch.distributions.Distribution:
        """The predicted distribution per target (distribution losses only)."""
        s = self._shaped(z)
        if self.loss == "gaussian_nll":
            return torch.distributions.Normal(s[..., 0], self._variance(s[..., 1]).sqrt())
        if self.loss == "student_t":
            df, scale = self._student(s)
            return torch.distributions.StudentT(df, s[..., 0], scale)
        raise ValueError(f"loss {self.loss} predicts no distribution")

    def sample(self, z: Tensor, seed: int) -> Tensor:
        """One draw [B, k] from the predicted distribution, from torch's generator seeded with ``seed`` (the
        distributions' samplers take no generator: the global one is forked and restored around the draw)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.distribution(z).sample()

    def loss_value(self, z: Tensor, y: Tensor) -> Tensor:
        """The batch's mean loss for outputs ``z`` [B, size] and targets ``y`` [B, k] (scaled units)."""
        s = self._shaped(z)
        y = y.float().reshape(s.shape[:-1])
        if self.loss == "mse":
            return F.mse_loss(s[..., 0], y)
        if self.loss == "mae":
            return F.l1_loss(s[..., 0], y)
        if self.loss == "huber":
            return F.huber_loss(s[..., 0], y, delta=self.huber_delta)
        if self.loss == "gaussian_nll":
            return F.gaussian_nll_loss(s[..., 0], y, self._variance(s[..., 1]))
        if self.loss == "student_t":
            return -self.distribution(z).log_prob(y).mean()
        # pinball loss of each level, averaged over levels, targets and the batch (torch has none built in)
        q = torch.tensor(self.quantiles, dtype=s.dtype, device=s.device)
        err = y[..., None] - s
        return torch.maximum(q * err, (q - 1) * err).mean()


def regression_outputs(section: RegressSection, targets: int) -> RegressionOutputs:
    """The head layout of ``regress.*`` for ``targets`` numbers per sequence."""
    return RegressionOutputs(section.loss, targets, tuple(section.quantiles), section.huber_delta)
