"""Common corruptions (CIFAR-10-C): the 15 types, the suite item, the engine, the store, reports.

The corruptions are compared with the `imagecorruptions` package (the `test` extra), run with
its own parameters (ImageNet-C's) through robeval's implementation: the deterministic types
pixel for pixel, the random ones by pixel statistics over a few cifar10-mini images.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import warnings
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import torch

from robeval.attacks import ThreatModel, parse_suite
from robeval.attacks.corruptions import (
    GROUPS,
    CorruptionSuite,
    corrupt,
    corruption_names,
    get_corruption,
    split_suite_items,
)
from robeval.attacks.corruptions.draws import Draws
from robeval.attacks.corruptions.fractal import plasma_fractal
from robeval.attacks.corruptions.geometry import motion_blur
from robeval.cli import main
from robeval.data import load_test_set
from robeval.errors import RobevalError
from robeval.results import ResultsStore, corruption_errors, corruption_table, mean_corruption_error

CIFAR10C = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
            "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
            "elastic_transform", "pixelate", "jpeg_compression"]
THREAT = ThreatModel(8 / 255)


def images_of(dataset: str, data_dir, n: int) -> torch.Tensor:
    test = load_test_set(dataset, data_dir, n)
    return test.images.float() / 255


@pytest.fixture(scope="module")
def cifar_images(cifar10_mini_dir):
    """The first 32 cifar10-mini test images in [0,1]."""
    return images_of("cifar10", cifar10_mini_dir, 32)


@pytest.fixture(scope="module")
def digit_images():
    """The first 16 test images of the embedded digits (one channel)."""
    return images_of("digits", None, 16)


# --- the corruptions ------------------------------------------------------------------------

def test_the_15_types_are_registered_in_cifar10c_order_with_five_severities():
    assert corruption_names() == CIFAR10C
    families = {name: get_corruption(name).group for name in CIFAR10C}
    assert [families[name] for name in CIFAR10C] == ["noise"] * 3 + ["blur"] * 4 + ["weather"] * 3 \
        + ["digital"] * 5
    assert all(len(get_corruption(name).parameters) == 5 for name in CIFAR10C)
    assert get_corruption("Gaussian-Noise").name == "gaussian_noise"
    assert get_corruption("gaussian_noise").parameters == (0.04, 0.06, 0.08, 0.09, 0.10)  # 32×32 values


@pytest.mark.parametrize("name", CIFAR10C)
def test_each_type_changes_the_image_and_stays_an_8_bit_image_in_0_1(name, cifar_images, digit_images):
    for images in (cifar_images[:12], digit_images):
        for severity in (1, 3, 5):
            out = corrupt(images, name, severity, range(len(images)), seed=0)
            assert out.shape == images.shape and out.dtype == torch.float32
            assert float(out.min()) >= 0 and float(out.max()) <= 1
            assert torch.equal(out * 255, (out * 255).round()), "not on 8-bit levels"
            assert float((out - images).abs().mean()) > 1e-3, f"{name} at {severity} changed nothing"


def test_the_same_images_give_the_same_corrupted_images_whatever_the_batch(cifar_images):
    indices = list(range(len(cifar_images)))
    for name in CIFAR10C:
        whole = corrupt(cifar_images, name, 4, indices, seed=3)
        assert torch.equal(whole, corrupt(cifar_images, name, 4, indices, seed=3)), name
        part = corrupt(cifar_images[8:20], name, 4, indices[8:20], seed=3)
        assert torch.equal(part, whole[8:20]), f"{name} depends on the batch"


def test_the_seed_and_the_image_index_decide_the_randomness(cifar_images):
    indices = list(range(len(cifar_images)))
    random = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow",
              "frost", "fog", "elastic_transform"}
    for name in CIFAR10C:
        first = corrupt(cifar_images, name, 3, indices, seed=0)
        other = corrupt(cifar_images, name, 3, indices, seed=1)
        assert torch.equal(first, other) == (name not in random), name
    shifted = corrupt(cifar_images[:4], "gaussian_noise", 3, [100, 101, 102, 103], seed=0)
    assert not torch.equal(shifted, corrupt(cifar_images[:4], "gaussian_noise", 3, range(4), seed=0))


def test_higher_severity_changes_the_images_more_for_most_types(cifar_images):
    """CIFAR-10-C's own parameters are not monotone in pixel change for three types: glass blur
    (severities 1–3 shuffle once, with growing blur), frost (the image's weight falls as the
    texture's rises) and elastic (its affine jitter shrinks as the displacement grows)."""
    indices = list(range(len(cifar_images)))
    change = {name: [float((corrupt(cifar_images, name, s, indices) - cifar_images).abs().mean())
                     for s in range(1, 6)] for name in CIFAR10C}
    not_monotone = {name for name, values in change.items()
                    if any(b < a for a, b in zip(values, values[1:], strict=False))}
    assert not_monotone <= {"glass_blur", "frost", "elastic_transform"}, change
    assert all(values[4] > values[0] for name, values in change.items() if name != "elastic_transform")


def test_frost_textures_follow_the_reference_photographs(cifar_images):
    """Frost at CIFAR-10-C's parameters, with the synthetic textures, against the same blend with
    the reference's photographs (shrunk to a fifth, random 32×32 crops, as CIFAR-10-C does)."""
    import cv2  # installed with imagecorruptions (the test extra)

    folder = resources.files("imagecorruptions") / "frost"
    photos = [cv2.resize(cv2.imread(str(folder / name)), (0, 0), fx=0.2, fy=0.2)[..., ::-1]
              for name in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")]
    rng = np.random.default_rng(0)
    pixels = (cifar_images * 255).permute(0, 2, 3, 1).numpy()
    for severity in (1, 3, 5):
        weights = get_corruption("frost").parameters[severity - 1]
        blended = []
        for image in pixels:
            photo = photos[rng.integers(5)]
            y, x = rng.integers(0, photo.shape[0] - 32), rng.integers(0, photo.shape[1] - 32)
            blended.append(np.uint8(np.clip(weights[0] * image + weights[1] * photo[y:y + 32, x:x + 32],
                                            0, 255)))
        reference = torch.from_numpy(np.stack(blended)).permute(0, 3, 1, 2).float() / 255
        ours = corrupt(cifar_images, "frost", severity, range(len(cifar_images)))
        assert_statistics_close(ours, reference, cifar_images, 0.03)


# --- against the reference package --------------------------------------------------------------

def _arange(*args: float) -> tuple:
    return tuple(np.arange(*args).tolist())


# imagecorruptions' parameters (ImageNet-C's), as its corruptions.py sets them per severity; the
# elastic ones in robeval's form: (scale = alpha · max shift, σ, no affine jitter)
REFERENCE_PARAMETERS = {
    "gaussian_noise": [.08, .12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [.03, .06, .09, 0.17, 0.27],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [_arange(1, 1.11, 0.01), _arange(1, 1.16, 0.01), _arange(1, 1.21, 0.02),
                  _arange(1, 1.26, 0.02), _arange(1, 1.31, 0.03)],
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
             (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
             (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    "fog": [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)],
    "brightness": [.1, .2, .3, .4, .5],
    "contrast": [0.4, .3, .2, .1, .05],
    "elastic_transform": [(250 * share * 32 * 0.005, 32 * 0.01, 0)
                          for share in (0.05, 0.065, 0.085, 0.1, 0.12)],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
}
# Deterministic given the parameters: robeval's output is the reference's up to one 8-bit level
# (float rounding on the other side of a level; Pillow's fixed-point arithmetic).
EXACT = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
# Random: mean, standard deviation and mean absolute change within these (over 32 images; the
# draws differ). Fog's brightness rests on one fractal per image, so its mean varies most; motion
# blur's and snow's angles are drawn per image.
TOLERANCE = {"fog": 0.04, "motion_blur": 0.025, "snow": 0.02}


@pytest.fixture(scope="module")
def reference():
    """imagecorruptions' `corrupt`, made to run on today's numpy and scikit-image: `np.float_`
    (gone in numpy 2) and skimage's `multichannel=` (now `channel_axis`) supplied; nothing else
    changed."""
    import skimage.filters

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # pkg_resources and scipy.ndimage.interpolation are deprecated
        import imagecorruptions
        from imagecorruptions import corruptions
    gaussian = skimage.filters.gaussian
    patch = pytest.MonkeyPatch()
    patch.setattr(np, "float_", np.float64, raising=False)
    patch.setattr(corruptions, "gaussian", lambda image, sigma, multichannel=False, **kw: gaussian(
        image, sigma, channel_axis=-1 if multichannel else None, **kw))
    yield imagecorruptions
    patch.undo()


def reference_images(reference, images: torch.Tensor, name: str, severity: int) -> torch.Tensor:
    np.random.seed(severity)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = [reference.corrupt(image, severity, name) for image in pixels]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def statistics(images: torch.Tensor, clean: torch.Tensor) -> np.ndarray:
    return np.array([float(images.mean()), float(images.std()), float((images - clean).abs().mean())])


def assert_statistics_close(ours, theirs, clean, tolerance: float) -> None:
    mine, reference = statistics(ours, clean), statistics(theirs, clean)
    assert np.abs(mine - reference).max() <= tolerance, \
        f"mean, std, mean change: ours {mine.round(4)}, reference {reference.round(4)}"


@pytest.mark.parametrize("severity", [1, 3, 5])
@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMETERS))
def test_corruptions_match_the_reference_package(name, severity, reference, cifar_images):
    entry = REFERENCE_PARAMETERS[name][severity - 1]
    parameters = entry if isinstance(entry, tuple) else (entry,)
    ours = corrupt(cifar_images, name, severity, range(len(cifar_images)), parameters=parameters)
    theirs = reference_images(reference, cifar_images, name, severity)
    if name in EXACT:
        assert float((ours - theirs).abs().max()) <= 1 / 255 + 1e-6
        assert_statistics_close(ours, theirs, cifar_images, 0.003)
    else:
        assert_statistics_close(ours, theirs, cifar_images, TOLERANCE.get(name, 0.01))


def test_motion_blur_matches_the_reference_at_the_same_angle(reference, cifar_images):
    from imagecorruptions import corruptions

    for radius, sigma in ((6, 2), (9, 2.5), (20, 15)):   # the last one leaves the image, as in ImageNet-C
        np.random.seed(radius)
        angles = torch.tensor(np.random.uniform(-45, 45, len(cifar_images)))
        pixels = (cifar_images * 255).permute(0, 2, 3, 1).numpy()
        theirs = np.stack([corruptions._motion_blur(image, radius, sigma, float(angle))
                           for image, angle in zip(pixels, angles, strict=True)])
        ours = motion_blur(cifar_images * 255, radius, sigma, angles).permute(0, 2, 3, 1).numpy()
        assert np.abs(ours - theirs).max() < 1e-3


def test_the_fog_fractal_follows_the_reference(reference):
    from imagecorruptions import corruptions

    np.random.seed(0)
    for decay in (2.0, 1.4):
        theirs = np.stack([corruptions.plasma_fractal(32, decay) for _ in range(200)])
        ours = plasma_fractal(Draws(range(200), "cpu"), 32, decay).numpy()
        for stat in (np.mean, np.std, lambda a: np.abs(np.diff(a, axis=1)).mean()):
            assert abs(stat(ours) - stat(theirs)) < 0.02


# --- the suite item ---------------------------------------------------------------------------

def corruption_item(text: str) -> CorruptionSuite:
    _, item = split_suite_items(parse_suite(text, THREAT))
    return item


def test_the_suite_item_lists_types_and_severities():
    assert corruption_item("corruptions").conditions == [(n, s) for n in CIFAR10C for s in range(1, 6)]
    item = corruption_item("corruptions(severities=4-5+1,types=fog+noise)")
    assert item.types == ("gaussian_noise", "shot_noise", "impulse_noise", "fog")
    assert item.severities == (1, 4, 5)
    assert item.spec == "corruptions(types=gaussian_noise+shot_noise+impulse_noise+fog,severities=1+4+5)"
    assert corruption_item(item.spec) == item
    assert corruption_item("corruptions(severities=3)").spec == "corruptions(severities=3)"
    assert corruption_item("corruptions(types=Motion-Blur)").types == ("motion_blur",)
    assert set(GROUPS) == {"noise", "blur", "weather", "digital"}
    attacks, item = split_suite_items(parse_suite("fgsm,corruptions(types=fog),pgd2", THREAT))
    assert [attack.spec for attack in attacks] == ["fgsm", "pgd2"] and item.types == ("fog",)


@pytest.mark.parametrize("spec,message", [
    ("corruptions(types=fogg)", "unknown corruption 'fogg'; known: gaussian_noise"),
    ("corruptions(severities=6)", "severity 6 in severities=6 is not a whole number in 1..5"),
    ("corruptions(severities=0-2)", "write e.g. severities=1-5"),
    ("corruptions(severities=2.5)", "not a list of names or whole numbers"),
    ("corruptions(severities=3-1)", "runs backwards; write 1-3"),
    ("corruptions(severities=1+1)", "severity 1 is listed twice"),
    ("corruptions(types=fog+weather)", "fog is listed twice"),
    ("corruptions(types=fog++snow)", "empty entry"),
    ("corruptions(level=3)", "unknown option 'level'; known: types, severities"),
    ("corruptions,corruptions(types=fog)", "merge them into one corruptions(...)"),
    ("corruptions(severities=" + "9" * 5000 + ")", "not a whole number in 1..5"),
    ("corruptions(types=" + "x" * 5000 + ")", "unknown corruption"),
])
def test_bad_options_are_refused_in_one_line(spec, message):
    with pytest.raises(RobevalError) as info:
        split_suite_items(parse_suite(spec, THREAT))
    text = str(info.value)
    assert message in text and "\n" not in text and len(text) < 400


def test_an_unknown_attack_names_the_corruptions_item():
    with pytest.raises(RobevalError, match="other suite items: corruptions"):
        parse_suite("corruption", THREAT)


# --- mCE ------------------------------------------------------------------------------------

def summary_of(accuracies: dict) -> pd.DataFrame:
    index = pd.MultiIndex.from_tuples(list(accuracies), names=["corruption", "severity"])
    return pd.DataFrame({"accuracy": list(accuracies.values())}, index=index)


def test_mce_divides_summed_errors_by_the_baselines_and_averages_over_types():
    run = summary_of({("fog", 1): 0.9, ("fog", 2): 0.7, ("snow", 1): 0.5, ("snow", 2): 0.5})
    base = summary_of({("fog", 1): 0.8, ("fog", 2): 0.6, ("snow", 1): 0.5, ("snow", 2): 0.0})
    errors = corruption_errors(run, base)
    assert errors["fog"] == pytest.approx((0.1 + 0.3) / (0.2 + 0.4))
    assert errors["snow"] == pytest.approx((0.5 + 0.5) / (0.5 + 1.0))
    assert mean_corruption_error(run, base) == pytest.approx((errors["fog"] + errors["snow"]) / 2)
    assert mean_corruption_error(base, base) == pytest.approx(1.0)
    assert math.isnan(mean_corruption_error(run, summary_of({("fog", 1): 0.8, ("fog", 2): 0.6})))
    table = corruption_table(run)
    assert list(table.index) == ["fog", "snow", "mean"] and list(table.columns) == ["1", "2", "mean"]
    assert table.loc["mean", "mean"] == pytest.approx(0.65) and table.loc["fog", "mean"] == pytest.approx(0.8)


# --- the engine, the store, the command line and the report ------------------------------------

@pytest.fixture(scope="module")
def cifar_state_dict(tmp_path_factory):
    """A freshly built cnn-small (seed 0) for CIFAR-10 as a plain state_dict."""
    from robeval.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "cnn_small_cifar.pt"
    torch.save(build_model("cnn-small", num_classes=10).net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def digits_state_dict(tmp_path_factory):
    """A freshly built one-channel cnn-small (seed 0) for the embedded digits."""
    from robeval.models import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "cnn_small_digits.pt"
    torch.save(build_model("cnn-small", num_classes=10, in_channels=1).net.state_dict(), path)
    return path


def attack(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["attack", *args, "--eps", "8/255", "--arch", "cnn-small", "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_attack_with_corruptions_on_cifar10_mini(cifar_state_dict, cifar10_mini_dir, tmp_path, capsys,
                                                 one_torch_thread):
    db = tmp_path / "db.sqlite"
    common = [str(cifar_state_dict), "--dataset", "cifar10", "--data-dir", str(cifar10_mini_dir), "--n", "24",
              "--batch-size", "8", "--no-checks"]
    suite = "pgd2,corruptions(types=gaussian_noise+fog,severities=1+5)"
    code, out, _ = attack(capsys, *common, "--suite", suite, "--db", str(db))
    assert code == 0
    assert "common corruptions" in out and "gaussian_noise" in out and "fog" in out
    assert "corruption accuracy:" in out and "2 types x 2 severities, 24 images each" in out
    assert attack(capsys, *common, "--suite", "pgd2", "--db", str(db))[0] == 0
    store = ResultsStore(db)
    with_corruptions, without = store.summary(1), store.summary(2)
    # corruptions are not folded into the adversarial rows
    assert list(with_corruptions.index) == ["clean", "pgd2", "worst case"]
    assert with_corruptions["accuracy"].equals(without["accuracy"])
    # per-sample, per-type, per-severity outcomes, every one from the model's own forward pass
    long = store.corruption_outcomes(1)
    assert len(long) == 24 * 4 and set(zip(long["corruption"], long["severity"], strict=True)) == {
        ("gaussian_noise", 1), ("gaussian_noise", 5), ("fog", 1), ("fog", 5)}
    source_model = load_cifar_model(cifar_state_dict)
    images = images_of("cifar10", cifar10_mini_dir, 24)
    for name, severity in (("fog", 5), ("gaussian_noise", 1)):
        with torch.no_grad():
            expected = source_model(corrupt(images, name, severity, range(24), seed=0)).argmax(1)
        stored = long[(long["corruption"] == name) & (long["severity"] == severity)]
        assert stored["prediction"].tolist() == expected.tolist()
    summary = store.corruption_summary(1)
    assert summary.loc[("fog", 5), "correct"] == int(long[(long["corruption"] == "fog")
                                                           & (long["severity"] == 5)]["correct"].sum())
    assert (summary["forward_passes"] == 24).all() and (summary["backward_passes"] == 0).all()
    shown = corruption_table(summary)
    assert f"{100 * shown.loc['mean', 'mean']:.2f}%" in out


def load_cifar_model(path):
    from robeval.sources import load_source

    return load_source(str(path), arch="cnn-small", dataset="cifar10", device="cpu").model.eval()


def test_attack_with_corruptions_alone_on_digits(digits_state_dict, tmp_path, capsys, one_torch_thread):
    db = tmp_path / "db.sqlite"
    suite = "corruptions(types=frost+brightness+snow+elastic_transform,severities=2)"
    code, out, _ = attack(capsys, str(digits_state_dict), "--dataset", "digits", "--n", "20", "--suite",
                          suite, "--db", str(db), "--json")
    assert code == 0
    document = json.loads(out)
    assert [row["attack"] for row in document["summary"]] == ["clean"]   # no attack, no worst case
    rows = document["corruptions"]
    assert [(row["corruption"], row["severity"]) for row in rows[:-1]] == [
        ("snow", 2), ("frost", 2), ("brightness", 2), ("elastic_transform", 2)]
    assert rows[-1]["corruption"] == "mean"
    assert rows[-1]["accuracy"] == pytest.approx(np.mean([row["accuracy"] for row in rows[:-1]]))
    assert document["checks"] == []    # the masking checks vouch for attacks; there are none
    assert len(ResultsStore(db).corruption_outcomes(1)) == 20 * 4


@pytest.mark.parametrize("suite,message", [
    ("corruptions(types=fogg)", "unknown corruption 'fogg'"),
    ("corruptions(severities=7)", "not a whole number in 1..5"),
    ("pgd2,corruptions(kind=fog)", "unknown option 'kind'"),
])
def test_the_command_refuses_bad_corruption_options_in_one_line(digits_state_dict, tmp_path, capsys,
                                                                 suite, message):
    code, _, err = attack(capsys, str(digits_state_dict), "--dataset", "digits", "--n", "4", "--suite",
                          suite, "--db", str(tmp_path / "db.sqlite"))
    assert code == 2 and message in err and err.count("\n") == 1


def test_an_interrupted_run_resumes_to_the_same_corruption_outcomes(digits_state_dict, tmp_path,
                                                                    monkeypatch, one_torch_thread):
    from robeval import evaluate as engine
    from robeval.evaluate import EvalConfig, evaluate
    from robeval.sources import load_source

    source = load_source(str(digits_state_dict), arch="cnn-small", dataset="digits", device="cpu")
    config = EvalConfig(suite="fgsm,corruptions(types=gaussian_noise+glass_blur,severities=2+4)", eps=0.1,
                        n=24, batch_size=8, dataset="digits", checks=False)
    straight = evaluate(source, config, ResultsStore(tmp_path / "a.sqlite"), progress=False, log=print)
    written = []
    original = engine.BatchOutcome.write

    def write_then_stop(self, store, run_id, batch):
        if written:
            raise KeyboardInterrupt
        written.append(batch)
        original(self, store, run_id, batch)

    monkeypatch.setattr(engine.BatchOutcome, "write", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        evaluate(source, config, ResultsStore(tmp_path / "b.sqlite"), progress=False, log=print)
    monkeypatch.setattr(engine.BatchOutcome, "write", original)
    lines = []
    resumed = evaluate(source, config, ResultsStore(tmp_path / "b.sqlite"), progress=False, log=lines.append)
    assert any("resuming: 1 of 3 batches" in line for line in lines)
    assert resumed.store.corruption_outcomes(1).equals(straight.store.corruption_outcomes(1))
    assert resumed.corruptions["accuracy"].equals(straight.corruptions["accuracy"])


def test_the_report_shows_corruption_tables_and_mce_against_a_baseline(cifar_mlp, cifar10_mini_dir,
                                                                       tmp_path, one_torch_thread):
    import copy

    from robeval.api import evaluate_model

    db = tmp_path / "db.sqlite"
    suite = "pgd2,corruptions(types=gaussian_noise+contrast+pixelate,severities=1+5)"
    torch.manual_seed(1)
    untrained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    for model, name in ((untrained, "untrained"), (copy.deepcopy(cifar_mlp), "mlp")):
        evaluate_model(model, eps="2/255", suite=suite, data_dir=cifar10_mini_dir, n=64, store=db,
                       checks=False, name=name, log=lambda _: None)
    out = tmp_path / "report"
    assert main(["report", "--db", str(db), "--out", str(out), "--baseline", "1"]) == 0
    markdown = (out / "report.md").read_text()
    assert "## Common corruptions: accuracy (%) per type" in markdown
    assert "## Common corruptions: accuracy (%) per severity" in markdown
    store = ResultsStore(db, readonly=True)
    mce = mean_corruption_error(store.corruption_summary(2), store.corruption_summary(1))
    type_table = markdown.split("per type")[1].split("## ")[0]
    mlp_row = next(line for line in type_table.splitlines() if line.startswith("| mlp"))
    assert f"{100 * mce:.1f}" in mlp_row and "contrast" in type_table and "mCE" in type_table
    assert next(line for line in type_table.splitlines() if line.startswith("| untrained")).count("100.0")
    mean = corruption_table(store.corruption_summary(2)).loc["mean", "mean"]
    assert f"{100 * mean:.1f}" in mlp_row
    latex = (out / "tables.tex").read_text()
    assert r"gaussian\_noise" in latex and "mCE" in latex
    from pypdf import PdfReader

    pdf = " ".join(page.extract_text() for page in PdfReader(out / "report.pdf").pages)
    assert "Common corruptions" in pdf and "mCE" in pdf


# --- old stores -------------------------------------------------------------------------------

def write_version_3_store(path) -> None:
    """A store as robeval wrote it before the corruptions: schema version 3, one finished run."""
    from robeval.results import _MIGRATIONS

    db = sqlite3.connect(path)
    for statements in _MIGRATIONS[:3]:
        for statement in statements:
            db.execute(statement)
    db.execute("PRAGMA user_version = 3")
    db.execute(
        "INSERT INTO runs (id, key, model, checkpoint_hash, config, dataset, n, eps, norm, seed, "
        "batch_size, mode, versions, device, git_commit, status, started_at, finished_at) VALUES "
        "(1, 'old', 'm', NULL, '{}', 'cifar10', 2, 0.03, 'linf', 0, 2, 'cascade', '{}', 'cpu', NULL, "
        "'finished', '2025-01-01T00:00:00+00:00', '2025-01-01T00:00:02+00:00')")
    db.execute("INSERT INTO attacks VALUES (1, 0, 'fgsm')")
    db.execute("INSERT INTO batches VALUES (1, 0, '2025-01-01T00:00:01+00:00', 2)")
    db.execute("INSERT INTO attack_seconds VALUES (1, 0, 0, 1.5, 6, 2, NULL)")
    db.executemany("INSERT INTO samples VALUES (1, ?, 0, 3, 3)", [(0,), (1,)])
    db.executemany("INSERT INTO outcomes VALUES (1, ?, 0, ?, 0.1, 0.03, 1)", [(0, "robust"), (1, "broken")])
    db.commit()
    db.close()


def test_a_store_from_before_the_corruptions_stays_readable(tmp_path):
    path = tmp_path / "old.sqlite"
    write_version_3_store(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with ResultsStore(path, readonly=True) as store:
        assert store.summary(1).loc["fgsm", "accuracy"] == 0.5
        assert store.corruption_summary(1).empty and store.runs().loc[0, "corruptions"] == []
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before   # read, not migrated on disk
    with ResultsStore(path) as store:
        assert store.run_record(1).corruptions == []
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 4


# --- on a GPU -----------------------------------------------------------------------------------

@pytest.mark.gpu
def test_corruptions_on_cuda_match_the_cpu(digit_images):
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = (images * 255).round() / 255
    for batch in (images, digit_images):
        for name in CIFAR10C:
            cpu = corrupt(batch, name, 3, range(len(batch)))
            cuda = corrupt(batch.cuda(), name, 3, range(len(batch)))
            assert cuda.device.type == "cuda"
            difference = (cuda.cpu() - cpu).abs()
            # the same draws; float rounding may move a value across an 8-bit level (twice in glass
            # blur, which truncates to 8 bits in the middle)
            assert float(difference.max()) <= 2 / 255 + 1e-6 and float(difference.mean()) < 1e-3, name


def test_a_model_without_a_recorded_eps_needs_one_only_for_attacks(tmp_path, capsys, cifar10_mini_dir):
    """A plain state_dict records no ε: common corruptions alone run without one, attacks ask for it."""
    from robeval.models import build_model

    torch.manual_seed(0)
    path = tmp_path / "weights.pt"
    torch.save(build_model("cnn-small").state_dict(), path)
    common = ["attack", str(path), "--arch", "cnn-small", "--dataset", "cifar10", "--data-dir",
              str(cifar10_mini_dir), "--n", "8", "--db", str(tmp_path / "r.sqlite"), "--no-checks"]
    assert main([*common, "--suite", "corruptions(types=fog,severities=1)"]) == 0
    assert "corruption accuracy:" in capsys.readouterr().out
    assert main([*common, "--suite", "fgsm"]) == 2
    assert "does not record its ε: pass --eps" in capsys.readouterr().err
