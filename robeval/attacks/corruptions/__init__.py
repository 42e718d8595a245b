"""Common corruptions (CIFAR-10-C): the 15 types of Hendrycks & Dietterich at severities 1–5.

Own implementations as tensor operations on the images' device, batch by batch, with the
parameters of CIFAR-10-C's generator (the 32×32 constants); frost uses synthetic textures
(`robeval.attacks.corruptions.frost`). Randomness is drawn per image from its test-set index and
the run seed (`draws`), so the same images always get the same corrupted images. docs/design.md,
"Common corruptions", says why and how; `suite` is the suite item `corruptions(...)` and
`engine` evaluates it on a batch.

Modules: `base` (registry, `corrupt`), `noise`, `blur`, `weather`, `digital` (the corruptions),
`filters`, `geometry`, `fractal`, `frost` (their building blocks), `draws`, `suite`, `engine`.
"""

from robeval.attacks.corruptions import blur as _blur  # noqa: F401  (registers the corruptions)
from robeval.attacks.corruptions import digital as _digital  # noqa: F401
from robeval.attacks.corruptions import noise as _noise  # noqa: F401
from robeval.attacks.corruptions import weather as _weather  # noqa: F401
from robeval.attacks.corruptions.base import (
    CORRUPTIONS,
    GROUPS,
    SEVERITIES,
    Corruption,
    corrupt,
    corruption_names,
    get_corruption,
)
from robeval.attacks.corruptions.engine import ConditionOutcome, evaluate_corruptions
from robeval.attacks.corruptions.suite import NAME, CorruptionSuite, build_corruptions, split_suite_items

__all__ = ["CORRUPTIONS", "GROUPS", "NAME", "SEVERITIES", "ConditionOutcome", "Corruption",
           "CorruptionSuite", "build_corruptions", "corrupt", "corruption_names", "evaluate_corruptions",
           "get_corruption", "split_suite_items"]
