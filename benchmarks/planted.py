"""Planted models that probe the shortcuts of `aa-fast` and of the cheap gradient-masking checks.

`aa-fast` (robeval/attacks/fast.py) runs APGD-CE, then targeted APGD-DLR against the 3 classes
MALT ranks as most promising, and runs Square only when the cheap masking checks
(`robeval.diagnostics.masking.CHEAP_CHECKS`) raise a flag on the first 200 points of a batch.
Each construction here wraps any classifier `net` (images in [0,1] → logits) so as to defeat one
of those shortcuts while the model it wraps stays (almost) the same function:

* `TemperatureMasked`: a temperature that grows off the data fools cross-entropy attacks (the
  loss rises by flattening the softmax) but not scale-invariant losses (DLR, margin);
* `PartialShatter`: shattered gradients on a third of the inputs only, so that statistics taken
  over a batch (medians) look honest while those points survive every gradient attack;
* `DecoyClasses`: extra logits that can never win but that MALT ranks first, so the targeted
  stage spends its 3 targets on classes that cannot be reached;
* `TestTimeDropout`: a randomised model (dropout at test time);
* `InputMutating`: a forward pass that overwrites the caller's tensor in place.

The first three are the benchmark zoo's planted models around a robust cnn-small (see
`bench_aa.PLANTED`); all are deterministic except `TestTimeDropout`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The 2x2 "checkerboard" filter: the energy of an image at the highest spatial frequency.
CHECKER = ((1.0, -1.0), (-1.0, 1.0))
# Median checkerboard chroma energy of a cifar10-mini test image under an ε = 8/255 L∞ random
# sign perturbation (2.7e-3; clean images: median 1.0e-4, 99th percentile 1.4e-3, a uniform
# draw from the ε-ball 1.0e-3): the unit of `TemperatureMasked`'s energy.
SIGN_ENERGY = 2.7e-3
# Mean intensity that splits the 1017 cifar10-mini test images 2/3 (darker) : 1/3 (brighter).
BRIGHT_THRESHOLD = 0.5238


def checker_chroma_energy(x: Tensor) -> Tensor:
    """Per-image mean squared response of the colour part of x (x minus its grey level) to the
    2x2 checkerboard filter: small on natural images, whose colour varies smoothly and is
    shared by neighbouring pixels, large under per-pixel, per-channel perturbations."""
    chroma = x - x.mean(1, keepdim=True)
    channels = x.shape[1]
    kernel = x.new_tensor(CHECKER).view(1, 1, 2, 2).repeat(channels, 1, 1, 1)
    return F.conv2d(chroma, kernel, groups=channels).pow(2).flatten(1).mean(1)


class TemperatureMasked(nn.Module):
    """`net(x) / T(x)` with a temperature T ≥ 1 that grows as x leaves the data.

    Probes attacks and checks that trust cross-entropy. T(x) = 1 + strength·(e(x)/e₀)^power,
    e the colour checkerboard energy (`checker_chroma_energy`) and e₀ its median under an
    ε = 8/255 sign perturbation (`SIGN_ENERGY`): T is close to 1 on clean images (median 1.24,
    90th percentile 4 on the first 200 cifar10-mini test images) and about 1 + strength (41)
    under an L∞ attack at ε = 8/255. The argmax is that of `net`, so the model is exactly as
    robust as `net`; but dividing the logits by T flattens the softmax, so cross-entropy rises
    toward log(classes) without the class changing, and CE attacks (PGD, APGD-CE) climb the
    temperature instead of the margin: their accuracy overestimates the robustness. DLR and
    margin losses are invariant to the scale of the logits and are not fooled.

    The power 1.5 keeps a gradient of T at clean images, so FGSM's single step is fooled
    about as much as PGD and the `fgsm_vs_pgd` check stays quiet (with power 2 FGSM is not
    fooled and that check fires). Measured on a PGD-1 cnn-small (cnn-relu-pgd1), first 200
    test images: clean 43.5%, FGSM 38.0%, PGD-10/PGD-50/APGD-CE 41.0%, APGD-DLR 25.5%, aa-fast
    22.0%, and none of robeval's cheap checks (as committed) raises a flag.
    """

    def __init__(self, net: nn.Module, strength: float = 40.0, power: float = 1.5,
                 reference: float = SIGN_ENERGY):
        super().__init__()
        self.net, self.strength, self.power, self.reference = net, strength, power, reference

    def temperature(self, x: Tensor) -> Tensor:
        """T(x), one value per image."""
        return 1 + self.strength * (checker_chroma_energy(x) / self.reference) ** self.power

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) / self.temperature(x)[:, None]


class PartialShatter(nn.Module):
    """`net` on dark images, `net(x + a·sin(ω·x))` (shattered input gradients) on bright ones.

    Probes masking checks that decide by statistics over a batch. An image whose mean intensity
    exceeds `threshold` (fixed, so the split does not depend on the batch: 0.5238 puts the
    brightest third of the cifar10-mini test set above it) is passed through a high-frequency
    term of amplitude a = `amplitude` (1e-3, 1/8 of 8/255: predictions hardly change) and
    frequency ω = `frequency`, whose derivative 1 + aω·cos(ωx) is dominated by a noise factor
    of size aω (100): the input gradient of the bright images is noise, so every gradient attack
    wanders on them, while on the others the model is exactly `net`. A black-box attack sees
    (almost) `net` everywhere. Medians over a batch (the cheap checks' gradient statistics) come
    from the honest two thirds and pass. Measured on cnn-relu-pgd1, first 200 test images: no
    prediction changes, the bright points are 28 of the 55 that APGD-CE and MALT's APGD-T leave
    standing, no cheap check fires; on the first 100, aa-fast 29% against `aa` 26% (Square
    breaks 3 bright survivors).
    """

    def __init__(self, net: nn.Module, threshold: float = BRIGHT_THRESHOLD, amplitude: float = 1e-3,
                 frequency: float = 1e5):
        super().__init__()
        self.net, self.threshold = net, threshold
        self.amplitude, self.frequency = amplitude, frequency

    def masked(self, x: Tensor) -> Tensor:
        """Which images are shattered (bool, one per image)."""
        return x.flatten(1).mean(1) > self.threshold

    def forward(self, x: Tensor) -> Tensor:
        bright = self.masked(x).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return self.net(x + bright * self.amplitude * torch.sin(self.frequency * x))


class DecoyClasses(nn.Module):
    """`net`'s logits followed by `decoys` extra logits that never win but that MALT ranks first.

    Probes MALT's target selection. Decoy k is z_k = max(net(x)) − margin − s_k(x), with
    s_k(x) = amplitude·mean(1 − cos(ω·x + 2πk/decoys)) ≥ 0: always `margin` or more below the top
    logit (never the argmax, and far enough below it that the softmax, the cross-entropy
    gradient, AutoAttack's logit-ranked targets and DLR's denominator ignore it), and with an
    input gradient of ℓ1 norm ≈ 0.64·amplitude·ω (thousands of times a real class's). MALT scores
    a class c by (z_y − z_c) / ‖∇ₓ(z_y − z_c)‖₁, so the decoys get the smallest scores and a
    3-target MALT stage attacks only them: a targeted loss toward a decoy cannot reach it and
    its gradient is the noise of s_k, so the stage breaks nothing. AutoAttack's APGD-T ranks its
    9 targets by logits and attacks the real classes. The model outputs classes + decoys logits
    (labels stay in the classes of `net`); with `replace` the decoys take the place of `net`'s
    last `decoys` classes instead, so the output keeps the dataset's width (for engines that
    require it) and those classes, never predicted, are decoys too. Measured on cnn-relu-pgd1
    (ω = 1e5): decoy scores 3.3e-4 against 0.03–0.04 for the best real class (median), all 3
    MALT targets are decoys at every correctly classified point, no cheap check fires; first 100
    test images: aa-fast 30% against `aa` 26% (13 outputs), 19% against 15% (`replace`).
    """

    def __init__(self, net: nn.Module, decoys: int = 3, margin: float = 20.0, amplitude: float = 1.0,
                 frequency: float = 1e5, replace: bool = False):
        super().__init__()
        self.net, self.decoys, self.margin = net, decoys, margin
        self.amplitude, self.frequency, self.replace = amplitude, frequency, replace

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        if self.replace:
            logits = logits[:, :-self.decoys]
        top = logits.max(1, keepdim=True).values
        phases = [2 * math.pi * k / self.decoys for k in range(self.decoys)]
        noise = torch.stack([(1 - torch.cos(self.frequency * x + phase)).flatten(1).mean(1)
                             for phase in phases], 1)
        return torch.cat([logits, top - self.margin - self.amplitude * noise], 1)


class TestTimeDropout(nn.Module):
    """`net` with dropout (rate p) applied to its logits on every pass, in eval mode too.

    Probes the determinism check and attacks that assume a fixed function: the same input gets
    different logits (and often a different prediction) on every call.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, net: nn.Module, p: float = 0.5):
        super().__init__()
        self.net, self.p = net, p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.net(x), self.p, training=True)


class InputMutating(nn.Module):
    """Halves its input in place (`x.mul_(0.5)`) before calling `net`: the caller's tensor changes.

    Probes code that reuses the images it passed to the model (clean images, attack iterates).
    On a leaf tensor that requires grad the in-place operation raises in autograd.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        x.mul_(0.5)
        return self.net(x)
