"""AutoAttack (Croce & Hein, ICML 2020) and its parts, run by pyautoattack with its algorithms unchanged.

Registered attacks and what pyautoattack runs for each:

======================  ==================  ================================================
spec                    pyautoattack        attacks, in order
======================  ==================  ================================================
`aa`                    version="standard"  APGD-CE, APGD-T, FAB-T, Square
`aa-plus`               version="plus"      APGD-CE, APGD-DLR (5 restarts each), FAB
                                            (5 restarts), Square, APGD-T, FAB-T
`aa-rand`               version="rand"      APGD-CE, APGD-DLR (1 restart, EOT over 20
                                            passes per step)
`pyautoattack-apgd-ce`  version="custom"    APGD on the cross-entropy loss
`pyautoattack-apgd-dlr` version="custom"    APGD on the DLR loss
`pyautoattack-apgd-t`   version="custom"    APGD on the targeted DLR loss, one run per
                                            target class
`fab-t`                 version="custom"    targeted FAB, one run per target class
`square`                version="custom"    Square Attack (score-based, no gradients)
======================  ==================  ================================================

The plain names `apgd-ce`, `apgd-dlr` and `apgd-t` are robeval's own APGD with per-sample early
exit (`robeval.attacks.apgd`, same options, same outcomes on all but a few points); the
`pyautoattack-` names run pyautoattack's APGD unchanged, and `aa`, `aa-plus`, `aa-rand` always
use pyautoattack's attacks, for numbers comparable with RobustBench.

The three versions take no options: they are exactly pyautoattack's versions. A part alone
runs with the settings that the standard version gives its attack object (pyautoattack's
`AutoAttack._set_version("standard")` for the L∞ and L2 norms, on top of the constructor's
values), not with the constructor's values, which differ for two settings (APGD: 5 restarts,
FAB: 5 restarts). Defaults and options (`pyautoattack-apgd-ce(iters=20,restarts=1)`,
`pyautoattack-apgd-t(targets=3)`, `square(queries=500)`):

==========  =======================================  =======================================
part        defaults                                 options → attribute (default)
==========  =======================================  =======================================
apgd-ce     100 iterations, 1 restart, EOT 1,        iters → apgd.n_iter (100),
            ρ=0.75                                   restarts → apgd.n_restarts (1),
                                                     eot → apgd.eot_iter (1)
apgd-dlr    as apgd-ce, DLR loss                     as apgd-ce
apgd-t      100 iterations, 9 target classes,        iters → apgd_targeted.n_iter (100),
            1 restart each, ρ=0.75                   restarts → apgd_targeted.n_restarts (1),
                                                     targets → apgd_targeted.n_target_classes (9)
fab-t       100 iterations, 9 target classes,        iters → fab.n_iter (100),
            1 restart each, α_max=0.1, η=1.05, β=0.9 targets → fab.n_target_classes (9)
square      5000 queries, 1 restart, p_init=0.8,     queries → square.n_queries (5000),
            schedule of p not rescaled               restarts → square.n_restarts (1)
==========  =======================================  =======================================

`fab-t` has no `restarts`: pyautoattack sets `fab.n_restarts = 1` itself before every
targeted FAB run. Square keeps AutoAttack's `resc_schedule=False`, so with fewer queries its
square sizes follow the 10 000-query schedule, as in AutoAttack. Setting `iters` of an APGD
part also sets the checkpoint schedule that `APGDAttack.__init__` derives from the number of
iterations (`n_iter_2`, `n_iter_min`, `size_decr`, `n_iter_orig`), so
`pyautoattack-apgd-ce(iters=20)` is the APGD that pyautoattack builds with `n_iter=20`. (In
the table above, `apgd-ce` stands for `pyautoattack-apgd-ce`, and likewise for the other two.)

`run(model, images, labels, seed)` attacks the whole batch in one
`run_standard_evaluation(images, labels, batch_size=len(images))` call on `images.device`.
Like AutoAttack, each attack only sees the points that are still robust. pyautoattack reseeds
torch's global RNG (`torch.manual_seed(seed)` in every attack), so the CPU and CUDA RNG
states are restored afterwards; its logger `"auto-attack"` is disabled unless `verbose=True`,
and the trace function that its dynamic-defence check removes (`sys.settrace(None)`) is put
back. `robust` is pyautoattack's own verdict, `y_adv == labels`: its `y_adv` is the prediction
on each returned example, computed in the batch of still-robust points the attack ran on,
whereas `margin` comes from one forward pass over the whole batch; the two agree unless a
returned example lies so close to the decision boundary that a different batch composition
changes the argmax. `iterations` is None (pyautoattack does not report them). The model is
expected in eval mode and on `images.device`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robeval.attacks.base import ATTACKS, AttackOutcome, ThreatModel, evaluate_examples
from robeval.attacks.steps import NORMS
from robeval.errors import RobevalError
from robeval.registry import canonical
from robeval.spec import format_spec, positive_option

LOGGER_NAME = "auto-attack"  # the logger pyautoattack writes to
PYAUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2"}  # robeval norm name -> pyautoattack's
# What pyautoattack's AutoAttack._set_version("standard") sets for the L∞ and L2 norms; a part
# runs on an AutoAttack(version="custom") configured with these, then with its options.
STANDARD_SETTINGS = {"apgd.n_restarts": 1, "apgd_targeted.n_target_classes": 9, "fab.n_restarts": 1,
                     "apgd_targeted.n_restarts": 1, "fab.n_target_classes": 9, "square.n_queries": 5000}


@dataclass(frozen=True)
class Option:
    """A spec option: the pyautoattack attribute it sets and its default (standard version)."""

    attribute: str  # "<attack object>.<attribute>", e.g. "apgd.n_iter"
    default: int


@dataclass(frozen=True)
class Entry:
    """A registered name: the pyautoattack version, the attacks it runs, and its options."""

    version: str
    attacks: tuple[str, ...] | None = None  # for version="custom"
    options: tuple[tuple[str, Option], ...] = ()


def _apgd_options(attack: str) -> tuple[tuple[str, Option], ...]:
    """`iters` and `restarts` of an APGD attack object (`apgd` or `apgd_targeted`)."""
    return (("iters", Option(f"{attack}.n_iter", 100)), ("restarts", Option(f"{attack}.n_restarts", 1)))


_EOT = (("eot", Option("apgd.eot_iter", 1)),)
_TARGETS = (("targets", Option("apgd_targeted.n_target_classes", 9)),)

ENTRIES: dict[str, Entry] = {
    "aa": Entry("standard"),
    "aa-plus": Entry("plus"),
    "aa-rand": Entry("rand"),
    "pyautoattack-apgd-ce": Entry("custom", ("apgd-ce",), _apgd_options("apgd") + _EOT),
    "pyautoattack-apgd-dlr": Entry("custom", ("apgd-dlr",), _apgd_options("apgd") + _EOT),
    "pyautoattack-apgd-t": Entry("custom", ("apgd-t",), _apgd_options("apgd_targeted") + _TARGETS),
    "fab-t": Entry("custom", ("fab-t",), (("iters", Option("fab.n_iter", 100)),
                                          ("targets", Option("fab.n_target_classes", 9)))),
    "square": Entry("custom", ("square",), (("queries", Option("square.n_queries", 5000)),
                                            ("restarts", Option("square.n_restarts", 1)))),
}


def resolve_options(name: str, options: dict) -> dict[str, int]:
    """All options of `name` with their values: the given ones over the defaults."""
    entry = ENTRIES[name]
    allowed = dict(entry.options)
    unknown = sorted(set(options) - set(allowed))
    if unknown and not allowed:
        raise RobevalError(f"{name} takes no options (got {', '.join(unknown)}); "
                           "use its parts, e.g. apgd-ce(iters=20), or aa-fast, for cheaper runs")
    if unknown:
        raise RobevalError(f"{name} has no option {', '.join(unknown)}; options: {', '.join(allowed)}")
    given = {key: positive_option(name, key, value) for key, value in options.items()}
    return {key: given.get(key, option.default) for key, option in entry.options}


def set_apgd_iterations(apgd, n_iter: int) -> None:
    """Set an APGD object's iterations and the checkpoint schedule its constructor derives."""
    apgd.n_iter = n_iter
    apgd.n_iter_orig = n_iter + 0
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


def _set(adversary, path: str, value: int) -> None:
    """Set `holder.attribute` of an AutoAttack; an APGD's iterations with their schedule."""
    holder, attribute = path.split(".")
    target = getattr(adversary, holder)
    if attribute == "n_iter" and holder.startswith("apgd"):
        set_apgd_iterations(target, value)
    else:
        setattr(target, attribute, value)


def configure(adversary, name: str, values: dict[str, int]) -> None:
    """Give a custom AutoAttack the standard version's settings, then the part's option values."""
    for path, value in STANDARD_SETTINGS.items():
        _set(adversary, path, value)
    for key, option in ENTRIES[name].options:
        _set(adversary, option.attribute, values[key])


@contextlib.contextmanager
def quiet_logger(verbose: bool) -> Iterator[None]:
    """Disable pyautoattack's logger for the duration, unless `verbose`."""
    logger = logging.getLogger(LOGGER_NAME)
    disabled = logger.disabled
    logger.disabled = disabled or not verbose
    try:
        yield
    finally:
        logger.disabled = disabled


@contextlib.contextmanager
def preserved_global_state() -> Iterator[None]:
    """Restore torch's CPU and CUDA RNG states and the trace function after the block."""
    trace = sys.gettrace()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            yield
    finally:
        sys.settrace(trace)


class PyAutoAttack:
    """One registered AutoAttack version or part, bound to its threat model (see the module doc)."""

    def __init__(self, name: str, threat: ThreatModel, options: dict | None = None,
                 verbose: bool = False):
        if name not in ENTRIES:
            raise RobevalError(f"unknown AutoAttack name {name!r}; known: {', '.join(ENTRIES)}")
        norm = NORMS.resolve(threat.norm) if threat.norm in NORMS else canonical(threat.norm)
        if norm not in PYAUTOATTACK_NORMS:
            raise RobevalError(f"{name} supports the norms {', '.join(PYAUTOATTACK_NORMS)}, "
                               f"not {threat.norm!r}")
        self.name, self.entry, self.threat, self.verbose = name, ENTRIES[name], threat, verbose
        self.norm = norm
        self.values = resolve_options(name, options or {})
        defaults = {key: option.default for key, option in self.entry.options}
        self.spec = format_spec(name, {k: v for k, v in self.values.items() if v != defaults[k]})

    def build(self, model: nn.Module, device: torch.device, seed: int):
        """pyautoattack's `AutoAttack` for this version or part, configured and ready to run."""
        try:
            from pyautoattack import AutoAttack
        except ImportError as error:
            raise RobevalError("AutoAttack needs pyautoattack: pip install pyautoattack") from error
        attacks = None if self.entry.attacks is None else list(self.entry.attacks)
        adversary = AutoAttack(model, attacks=attacks, device=device, eps=self.threat.eps,
                               norm=PYAUTOATTACK_NORMS[self.norm], seed=seed, version=self.entry.version)
        if self.entry.version == "custom":
            configure(adversary, self.name, self.values)
        adversary.verbose = self.verbose
        return adversary

    def adversarial(self, model: nn.Module, images: Tensor, labels: Tensor,
                    seed: int) -> tuple[Tensor, Tensor]:
        """pyautoattack's `(x_adv, y_adv)` for the batch, leaving robeval's global state as it was."""
        with quiet_logger(self.verbose), preserved_global_state():
            adversary = self.build(model, images.device, seed)
            return adversary.run_standard_evaluation(images, labels, batch_size=len(images))

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int) -> AttackOutcome:
        """Attack a batch; returns per-sample outcomes (see `AttackOutcome` and the module doc)."""
        if len(images) == 0:
            return evaluate_examples(model, images, images, labels, self.norm)
        x_adv, y_adv = self.adversarial(model, images, labels, seed)
        outcome = evaluate_examples(model, x_adv, images, labels, self.norm)
        outcome.robust = (y_adv == labels).cpu()
        return outcome


def _register() -> None:
    """Add every version and part to `ATTACKS`."""
    for name in ENTRIES:
        ATTACKS.add(name, lambda threat, options, name=name: PyAutoAttack(name, threat, options))


_register()
