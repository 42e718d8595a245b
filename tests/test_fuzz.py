"""Property-based fuzzing of the user-input boundaries: each input is either accepted or refused
with robeval's own one-line error (`RobevalError`, no newline), never another exception; and
nothing a user writes makes robeval allocate something huge (attack counts have upper bounds)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robeval.attacks import ThreatModel, attack_names, parse_suite
from robeval.data.contract import check_cifar_arrays
from robeval.errors import RobevalError
from robeval.evaluate import EvalConfig
from robeval.report.tables import latex_escape, md_escape
from robeval.schema import validated
from robeval.spec import parse_eps, parse_spec, positive_option
from robeval.train.config import config_from_dict
from robeval.yamlfile import parse_yaml, read_yaml

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THREAT = ThreatModel(8 / 255)
MAX_ITERATIONS = 10**6      # iterations / queries / steps an attack spec may ask for
MAX_REPEATS = 10**4         # restarts / targets / eot


def one_line_error(call, *args, **kwargs):
    """`call(*args)`'s value, or None when it raised a one-line RobevalError; anything else fails."""
    try:
        return call(*args, **kwargs)
    except RobevalError as err:
        message = str(err)
        assert "\n" not in message and "\r" not in message, f"multi-line error: {message!r}"
        assert message.strip(), "empty error message"
        return None


# --- values that users (or hostile files) write ----------------------------------------------

HOSTILE_WORDS = ["nan", "inf", "-inf", "+inf", "1e400", "-1e400", "1e-400", "0", "-0", "-1", "1.5",
                 "²", "٣", "1_000", "0x10", "1/0", "0/0", "8/255", "255/8", "true", "false", "yes",
                 "None", "null", "", " ", "ce", "dlr", "margin", "logits", "10**30",
                 str(10**30), str(10**12), str(10**20), "9" * 400, "1" * 5000, "1" * 5000 + "/3",
                 "1e10", "1e6", "1000000", "1000001", "10000", "10001", "()", "(", ")", "=", ",",
                 "é", "\n", "pgd10"]

hostile_text = st.one_of(st.sampled_from(HOSTILE_WORDS), st.text(max_size=12),
                         st.integers().map(str), st.floats().map(repr),
                         st.integers(min_value=-10**40, max_value=10**40).map(str))

OPTION_KEYS = ["steps", "restarts", "iters", "queries", "eot", "loss", "targets", "step",
               "random_start", "targeted", "select", "bogus", ""]


@st.composite
def attack_specs(draw):
    name = draw(st.sampled_from(attack_names() + ["pgd", "pgd0", "pgd-1", "PGD10", "apgd_ce"]))
    if name in ("pgdK", "pgdK-smooth"):
        count = draw(st.one_of(st.integers(0, 10**6 + 2), st.sampled_from([10**12, 10**20, 10**30]),
                               st.integers(0, 10**4000)))
        name = name.replace("K", str(count))
    if draw(st.booleans()):
        return name
    items = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(OPTION_KEYS))
        value = draw(hostile_text)
        items.append(draw(st.sampled_from([f"{key}={value}", f"{key}", f"{key}=({value})",
                                           f"{key}={value}={value}"])))
    body = ",".join(items)
    return draw(st.sampled_from([f"{name}({body})", f"{name}(({body})", f"{name}({body}))",
                                 f"{name}({body}", f"{name}{body})", f"{name}(({body}))"]))


@st.composite
def suites(draw):
    specs = draw(st.lists(attack_specs(), min_size=1, max_size=4))
    return draw(st.sampled_from([",", ", ", ",,", " , "])).join(specs)


def _check_bounded(attacks) -> None:
    """Every count an accepted attack carries is within the limits (nothing huge is built)."""
    for attack in attacks:
        for attribute, limit in (("steps", MAX_ITERATIONS), ("iters", MAX_ITERATIONS),
                                 ("queries", MAX_ITERATIONS), ("restarts", MAX_REPEATS),
                                 ("targets", MAX_REPEATS), ("eot", MAX_REPEATS)):
            value = getattr(attack, attribute, None)
            if isinstance(value, int):
                assert 1 <= value <= limit, f"{attack.spec}: {attribute}={value} was accepted"
        values = getattr(attack, "values", None)
        if isinstance(values, dict):
            for key, value in values.items():
                limit = MAX_REPEATS if key in ("restarts", "targets", "eot") else MAX_ITERATIONS
                assert value <= limit, f"{attack.spec}: {key}={value} was accepted"
        parts = list(getattr(attack, "stages", []))   # aa-fast: its APGD stages and its Square
        parts += [attack.black_box] if hasattr(attack, "black_box") else []
        _check_bounded(parts)


# --- the suite grammar ------------------------------------------------------------------------

@FAST
@given(st.text(max_size=60))
def test_parse_suite_arbitrary_text(text):
    attacks = one_line_error(parse_suite, text, THREAT)
    if attacks is not None:
        _check_bounded(attacks)


@FAST
@given(suites())
def test_parse_suite_structured(text):
    attacks = one_line_error(parse_suite, text, THREAT)
    if attacks is not None:
        _check_bounded(attacks)


@pytest.mark.parametrize("spec", [
    "pgd99999999999999999999999", "pgd1000001", "pgd10(restarts=10001)", "pgd10(eot=100000)",
    "aa-fast(queries=100000000000000000000)", "aa-fast(iters=10000000)", "aa-fast(targets=99999)",
    "apgd-ce(iters=1000000000000)", "apgd-t(targets=1000000)", "apgd-ce(restarts=1e9)",
    "square(queries=1e30)", "pyautoattack-apgd-ce(eot=1e5)", "fab-t(iters=1e7)",
    "pgd" + "9" * 5000, "pgd10(restarts=" + "9" * 5000 + ")",
])
def test_huge_counts_are_refused(spec):
    with pytest.raises(RobevalError) as info:
        parse_suite(spec, THREAT)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300
    assert "at most" in message or "positive integer" in message


@pytest.mark.parametrize("spec", ["pgd1000000", "pgd10(restarts=10000)", "aa-fast(queries=1000000)",
                                  "apgd-t(targets=10000)", "pgd10(eot=10000)"])
def test_counts_at_the_limit_are_accepted(spec):
    assert parse_suite(spec, THREAT)


def test_positive_option_messages_unchanged():
    unchanged = r"^pgd10: restarts=0 must be a positive integer \(write e\.g\. restarts=2\)$"
    with pytest.raises(RobevalError, match=unchanged):
        positive_option("pgd10", "restarts", 0, "write e.g. restarts=2")
    with pytest.raises(RobevalError, match=r"^aa-fast: option iters=-1 must be a positive integer$"):
        positive_option("aa-fast", "iters", -1)
    assert positive_option("x", "iters", 10.0) == 10
    with pytest.raises(RobevalError, match="at most 7"):
        positive_option("x", "iters", 8, maximum=7)


# --- ε and specs ------------------------------------------------------------------------------

@FAST
@given(st.one_of(hostile_text, st.floats(), st.integers(min_value=-10**30, max_value=10**30)))
def test_parse_eps(value):
    eps = one_line_error(parse_eps, value)
    if eps is not None:
        assert isinstance(eps, float) and math.isfinite(eps) and 0 <= eps <= 1


@FAST
@given(st.one_of(st.text(max_size=40), attack_specs()))
def test_parse_spec(text):
    parsed = one_line_error(parse_spec, text)
    if parsed is not None:
        name, options = parsed
        assert isinstance(name, str) and isinstance(options, dict)


# --- YAML -------------------------------------------------------------------------------------

YAML_PIECES = ["a: 1", "- x", "&a [*a]", "&a [1, 2]", "*a", "[*a, *a, *a]", "{", "}", "[", "]",
               "!!python/object:os.system", "!!binary AAAA", "? ", ": ", "---", "...", "%YAML 1.1",
               "'", '"', "\t", "  ", "\n", "\x00", "\ufeff", "|", ">", "#", "é", "1e400", ".nan"]
yaml_text = st.one_of(st.text(max_size=60),
                      st.lists(st.sampled_from(YAML_PIECES), max_size=12).map("".join))


@FAST
@given(yaml_text)
def test_parse_yaml(text):
    try:
        one_line_error(parse_yaml, text, "x")
    except yaml.YAMLError:
        pass    # read_yaml turns these into one-line errors; see the next test


_YAML_DIR = Path(tempfile.mkdtemp(prefix="robeval-fuzz-yaml-"))


@FAST
@given(st.one_of(yaml_text.map(lambda text: text.encode("utf-8", "surrogatepass")),
                 st.binary(max_size=40)))
def test_read_yaml(raw):
    path = _YAML_DIR / "config.yaml"
    path.write_bytes(raw)
    one_line_error(read_yaml, path, "config file")


# --- evaluation settings ----------------------------------------------------------------------

HUGE = [10**400, -10**400, 10**5000, -10**5000, "9" * 5000, "1e400", 2**63, 2**64]


def huge(index: int) -> object:
    """`HUGE[index]`; strategies map through this (repr() of 10**5000, which hypothesis takes of
    sampled_from's list and of bound methods, is refused by Python)."""
    return HUGE[index]


anything = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-10**40, max_value=10**40),
              st.integers(0, len(HUGE) - 1).map(huge),
              st.floats(), st.text(max_size=10), st.sampled_from(HOSTILE_WORDS)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=5), children, max_size=3)),
    max_leaves=6)


@FAST
@given(n=anything, batch_size=st.one_of(anything, st.just("auto")), seed=anything)
def test_eval_config_schema(n, batch_size, seed):
    config = one_line_error(validated, EvalConfig(n=n, batch_size=batch_size, seed=seed))
    if config is not None:
        assert config.n is None or (type(config.n) is int and 1 <= config.n <= 2**31 - 1)
        assert config.batch_size == "auto" or type(config.batch_size) is int
        assert type(config.seed) is int and config.seed >= 0


# --- training config --------------------------------------------------------------------------

TRAIN_KEYS = {
    "data": ["dataset", "data_dir", "train_subset", "test_subset", "val_size", "split_seed", "augment"],
    "model": ["arch", "activation", "smooth_grad"],
    "adversary": ["method", "norm", "eps", "steps", "step_size", "random_start", "bn_mode",
                  "eps_warmup_epochs", "trades_beta", "igr_lambda"],
    "optim": ["optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "milestones",
              "gamma", "warmup_epochs", "batch_size", "lr_scaling", "base_batch_size",
              "label_smoothing"],
}
TOP_KEYS = ["epochs", "seed", "device", "amp", "val_pgd_steps", "val_batch_size", "early_stop_patience",
            "diagnostics_batch", "stop_on_collapse", "sync_bn", "preset", "bogus"]
PLAUSIBLE = ["pgd", "trades", "fgsm", "igr", "standard", "sgd", "adam", "cosine", "piecewise", "onecycle",
             "linf", "l2", "eval", "train", "none", "linear", "digits", "cnn-small", "relu", "elu(alpha=0.5)",
             "cpu", "auto", "cuda", "cuda:99", "cuda:-1", "mps", "1,2,3", "elu(alpha=nan)",
             "elu(alpha=1e400)", "softplus(beta=0)", "silu(x=1)", "wrn-10000-10", "wrn-34-" + "9" * 30,
             "wrn-0-0", "cifar10",
             "imagenet", "1e400", "-0.1", "nan", [1, 2], [10**30], [-1], [math.nan], 8 / 255, 0.1, 10, 1]
train_value = st.one_of(anything, st.sampled_from(PLAUSIBLE))


@st.composite
def train_dicts(draw):
    values = {}
    for section, keys in TRAIN_KEYS.items():
        choice = draw(st.integers(0, 5))
        if choice == 0:
            continue
        if choice == 1:
            values[section] = draw(train_value)     # a section that is not a mapping
            continue
        chosen = draw(st.lists(st.sampled_from(keys + ["bogus"]), max_size=4, unique=True))
        values[section] = {key: draw(train_value) for key in chosen}
    for key in draw(st.lists(st.sampled_from(TOP_KEYS), max_size=3, unique=True)):
        values[key] = draw(train_value)
    return values


@FAST
@given(train_dicts())
def test_train_config(values):
    one_line_error(config_from_dict, values)


# --- CIFAR data reader ------------------------------------------------------------------------

DTYPES = [np.uint8, np.int8, np.int64, np.float32, np.float64, np.bool_, np.complex64, np.uint16,
          "U3", object, "datetime64[s]", "V4"]


@st.composite
def cifar_arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from([(0,), (2,), (2, 3072), (3, 3072), (0, 3072), (2, 3071), (2, 3, 1024),
                                  (), (1, 1), (2, 0)]))
    size = int(np.prod(shape)) if shape else 1
    numbers = draw(st.lists(st.one_of(st.integers(-300, 300), st.sampled_from([np.nan, np.inf, 3.7])),
                            min_size=min(size, 4), max_size=min(size, 4)))
    with np.errstate(all="ignore"):
        flat = np.zeros(size, dtype=np.float64)
        flat[:len(numbers)] = numbers
        try:
            array = flat.astype(dtype).reshape(shape)
        except (TypeError, ValueError):
            array = np.zeros(shape, dtype=dtype)
    return array


label = st.one_of(st.integers(-3, 12), st.integers(), st.integers(0, 3).map(huge), st.booleans(),
                  st.floats(), st.none(), st.text(max_size=3),
                  st.just(np.int64(3)), st.just(np.bool_(True)), st.just(np.float32(2.0)), st.just([1]))
labels = st.one_of(st.lists(label, max_size=4), st.lists(label, max_size=4).map(tuple),
                   st.lists(st.integers(0, 9), max_size=4).map(np.array), st.none(), st.text(max_size=4),
                   st.just(np.zeros((2, 2), dtype=np.int64)), st.just({"a": 1}), st.integers())


@FAST
@given(cifar_arrays(), labels)
def test_check_cifar_arrays(data, labels):
    one_line_error(check_cifar_arrays, data, labels, classes=10, file="f")


@FAST
@given(st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.integers(), max_size=2)), labels)
def test_check_cifar_non_arrays(data, labels):
    one_line_error(check_cifar_arrays, data, labels, classes=10, file="f")


# --- run names in reports ---------------------------------------------------------------------

names = st.one_of(st.text(max_size=30),
                  st.lists(st.sampled_from(list("|<>[]*_`\\&\n\r\x0b\x0c\x1c\x85\u2028\u2029#~!a {}%$^")),
                           max_size=20).map("".join))


def _unescaped(text: str, char: str) -> bool:
    """Whether `char` occurs in `text` without an odd number of backslashes before it."""
    for index, current in enumerate(text):
        if current != char:
            continue
        slashes = 0
        while index - slashes - 1 >= 0 and text[index - slashes - 1] == "\\":
            slashes += 1
        if slashes % 2 == 0:
            return True
    return False


@FAST
@given(names)
def test_md_escape(name):
    escaped = md_escape(name)
    assert len(escaped.splitlines()) <= 1
    for char in "|<[*_`":
        assert not _unescaped(escaped, char), (name, escaped)


@FAST
@given(names)
def test_latex_escape(name):
    escaped = latex_escape(name)
    assert len(escaped.splitlines()) <= 1
