"""The Python API: any nn.Module evaluated and diagnosed as the command line does, keyed by what it is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import robeval
from robeval.data import load_test_set
from robeval.data.digits import read_digits
from robeval.errors import RobevalError
from robeval.evaluate import EvalConfig, ResolvedEval, evaluate, run_key
from robeval.results import ResultsStore
from robeval.sources import ModelSource
from tests.conftest import REPO_ROOT, fit_full_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = 8 / 255


def mlp(seed: int) -> nn.Module:
    """A small digits classifier, trained for a few full-batch steps from `seed`."""
    torch.manual_seed(seed)
    train = read_digits("train")
    model = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 32), nn.ReLU(), nn.Linear(32, 10))
    return fit_full_batch(model, train.images.float() / 255, train.labels, steps=60, lr=1e-2)


@pytest.fixture(scope="module")
def models() -> tuple[nn.Module, nn.Module]:
    return mlp(0), mlp(1)


def python_block(readme: str, heading: str) -> str:
    """The first ```python block of the README section `heading`."""
    section = readme.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = python_block((REPO_ROOT / "README.md").read_text(), "## Python")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md#python", "exec"), namespace)
    result, diagnosis, own = namespace["result"], namespace["diagnosis"], namespace["own"]
    assert list(result.summary.index) == ["clean", "fgsm", "pgd10", "worst case"]
    assert result.summary.loc["clean", "accuracy"] > 0.8   # the example trains a real classifier
    assert [check.name for check in result.checks if not check.passed] == []
    assert len(namespace["per_sample"]) == 100 and diagnosis.flags == []
    assert own.summary.loc["clean", "n"] == 64
    assert list(tmp_path.iterdir()) == []                  # nothing written where it runs


def test_a_different_model_under_the_same_name_starts_its_own_run(models, tmp_path):
    first, second = models
    store = ResultsStore(tmp_path / "r.sqlite")
    options = {"dataset": "digits", "eps": EPS, "suite": "fgsm", "n": 60, "batch_size": 30,
               "checks": False, "store": store, "name": "my-model", "log": lambda _: None}
    one = robeval.evaluate_model(first, **options)
    two = robeval.evaluate_model(second, **options)
    assert one.run_id != two.run_id and two.batches_resumed == 0
    alone = robeval.evaluate_model(second, **{**options, "store": None})
    assert two.summary["accuracy"].equals(alone.summary["accuracy"])   # its own numbers
    again = robeval.evaluate_model(first, **options)
    assert again.run_id == one.run_id and again.batches_resumed == 2       # the same model resumes
    assert again.summary["accuracy"].equals(one.summary["accuracy"])


def test_hand_built_sources_are_keyed_by_their_weights_not_their_name(models):
    first, second = models
    plan = ResolvedEval("fgsm", EPS, "linf", 60, 0, "cascade", "digits", None)
    keys = [run_key(ModelSource(model, "same-name", "python", None, 10), plan, ["fgsm"], "30")
            for model in (first, second, first)]
    assert keys[0] != keys[1] and keys[0] == keys[2]
    renamed = ModelSource(first, "another-name", "python", None, 10)
    assert run_key(renamed, plan, ["fgsm"], "30") == keys[0]


def test_attack_tensors_matches_the_dataset_path_sample_by_sample(models):
    model, _ = models
    test = load_test_set("digits", None, 60)
    options = {"eps": EPS, "suite": "fgsm,pgd5", "batch_size": 30}
    from_data = robeval.evaluate_model(model, dataset="digits", n=60, checks=False, log=lambda _: None,
                                       **options)
    own = robeval.attack_tensors(model, test.images.float() / 255, test.labels, **options)
    columns = ["label", "clean_pred", "outcome_fgsm", "outcome_pgd5", "robust"]
    assert own.store.per_sample(own.run_id)[columns].equals(
        from_data.store.per_sample(from_data.run_id)[columns])
    again = robeval.attack_tensors(model, test.images.float() / 255, test.labels, store=own.store, **options)
    assert again.run_id == own.run_id and again.batches_resumed == 2


def test_the_model_is_given_back_as_it_was(models):
    model, _ = models
    model.train()
    for parameter in model.parameters():
        parameter.grad = None
    robeval.attack_tensors(model, torch.rand(8, 1, 32, 32), torch.arange(8), eps=EPS, suite="fgsm",
                           checks=True)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    model.eval()


def test_the_python_api_is_lazy_and_listed():
    assert {"evaluate_model", "diagnose_model", "attack_tensors"} <= set(dir(robeval))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        robeval.nope  # noqa: B018


def test_bad_models_and_tensors_are_one_line_errors(models):
    model, _ = models
    with pytest.raises(RobevalError, match="outputs 7 classes but digits has 10"):
        robeval.evaluate_model(nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 7)), dataset="digits", eps=EPS)
    with pytest.raises(RobevalError, match=r"failed on a \(1, 3, 32, 32\) batch of images"):
        robeval.evaluate_model(model, dataset="cifar10", eps=EPS)
    with pytest.raises(RobevalError, match=r"must lie in \[0,1\]"):
        robeval.attack_tensors(model, torch.full((2, 1, 32, 32), 2.0), torch.zeros(2, dtype=torch.long),
                               eps=EPS)
    with pytest.raises(RobevalError, match="labels must be an integer tensor of shape"):
        robeval.attack_tensors(model, torch.rand(2, 1, 32, 32), torch.zeros(3, dtype=torch.long), eps=EPS)
    with pytest.raises(RobevalError, match=r"labels must lie in 0\.\.9"):
        robeval.attack_tensors(model, torch.rand(2, 1, 32, 32), torch.tensor([0, 10]), eps=EPS)
    with pytest.raises(RobevalError, match="must be a torch.nn.Module"):
        robeval.diagnose_model(lambda x: x, dataset="digits", eps=EPS)


def test_a_temporary_store_is_removed_with_its_result(models):
    import gc

    model, _ = models
    result = robeval.attack_tensors(model, torch.rand(4, 1, 32, 32), torch.arange(4), eps=EPS,
                                    suite="fgsm")
    folder = Path(result.store.path).parent
    assert folder.is_dir()
    del result
    gc.collect()
    assert not folder.exists()


def test_a_store_path_keeps_the_results(models, tmp_path):
    model, _ = models
    path = tmp_path / "kept.sqlite"
    result = robeval.attack_tensors(model, torch.rand(4, 1, 32, 32), torch.arange(4), eps=EPS,
                                    suite="fgsm", store=path)
    assert ResultsStore(path).summary(result.run_id).equals(result.summary)


def test_evaluate_accepts_a_hand_built_python_source(models, tmp_path):
    model, _ = models
    source = ModelSource(model, "hand", "python", None, 10, dataset="digits", eps=EPS, norm="linf")
    config = EvalConfig(suite="fgsm", n=30, batch_size=30, checks=False)
    result = evaluate(source, config, ResultsStore(tmp_path / "r.sqlite"), progress=False,
                      log=lambda _: None)
    assert result.summary.loc["clean", "n"] == 30
