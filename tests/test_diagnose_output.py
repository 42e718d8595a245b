"""What `robeval diagnose` prints: within 100 columns, quantities by their papers' names, one
line per check with a flagged check's explanation; `--json` holds the full evidence."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from torch import Tensor, nn

import robeval
from robeval.cli import main
from robeval.data.digits import read_digits
from robeval.diagnose import diagnosis_json, summary_lines
from robeval.diagnostics.explain import (
    CHECK_INDENT,
    EVIDENCE_SUMMARIES,
    QUANTITY_LABELS,
    R_READING,
    WIDTH,
    evidence_summary,
)
from robeval.diagnostics.gradients import QUANTITIES, STATISTICS
from robeval.diagnostics.masking import CHEAP_CHECKS, CHECKS
from robeval.results import ResultsStore
from tests.conftest import fit_full_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 16


class QuantisedZeroGradient(nn.Module):
    """A planted masked model: the network on 8-bit inputs, with an input gradient of exactly zero."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * 0 + (torch.round(x * 255) / 255).detach())


def cli(*args: str) -> tuple[int, str, str]:
    """Run the command line in-process (usable from module fixtures, unlike capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def too_wide(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > WIDTH]


def joined(text: str) -> str:
    """The printed lines as one line of words, so wrapped sentences can be searched."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory):
    """A cnn-small PGD-1-trained for one short epoch on the embedded digits: an honest model."""
    from robeval.train import resolve_config, train

    config = resolve_config("ci-small", overrides={
        "data": {"dataset": "digits", "train_subset": 256, "val_size": 64},
        "epochs": 1, "diagnostics_batch": 0, "val_pgd_steps": 1})
    out = tmp_path_factory.mktemp("diagnose-output") / "digits-run"
    train(config, out, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def honest_output(honest_run, tmp_path_factory):
    """`robeval diagnose` on the honest run, as text and as --json, into one store."""
    db = tmp_path_factory.mktemp("diagnose-db") / "db.sqlite"
    common = [str(honest_run), "--n", str(N), "--checks", "cheap", "--db", str(db)]
    text = cli("diagnose", *common)
    document = cli("diagnose", *common, "--json")
    return text, document, db


@pytest.fixture(scope="module")
def masked_diagnosis():
    """`diagnose_model` on a planted masked model (an MLP fitted on the digits behind 8-bit
    quantisation with a zero gradient), every check: its Diagnosis and the lines it logged."""
    torch.manual_seed(0)
    train = read_digits("train")
    net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 32), nn.ReLU(), nn.Linear(32, 10))
    fit_full_batch(net, train.images.float() / 255, train.labels, steps=60, lr=1e-2)
    logged: list[str] = []
    diagnosis = robeval.diagnose_model(QuantisedZeroGradient(net), dataset="digits", eps="8/255", n=N,
                                       checks="all", log=logged.append)
    return diagnosis, logged


def test_honest_diagnosis_fits_100_columns_and_names_the_quantities(honest_output):
    (code, out, _), _, db = honest_output
    assert code == 0
    assert too_wide(out) == []
    for quantity in QUANTITY_LABELS.values():
        assert quantity.text(10) in out and quantity.unit in out
    assert "R_fgsm" not in out and "grad_lipschitz" not in out   # codes are for the store, not people
    assert R_READING in joined(out)
    check_rows = [line for line in out.splitlines() if line.split(" ", 1)[0] in CHECKS]
    assert [row.split()[0] for row in check_rows] == list(CHEAP_CHECKS)
    assert all(row[CHECK_INDENT - 6:CHECK_INDENT - 2] == "pass" for row in check_rows)
    assert f"0 of {len(CHEAP_CHECKS)} checks flagged; stored in {db}" in out
    assert "{" not in out                                       # no evidence JSON in the summary


def test_json_holds_the_full_evidence_and_the_labelled_gradient_table(honest_output):
    _, (code, out, err), db = honest_output
    assert code == 0
    document = json.loads(out)                                  # stdout is one JSON document
    assert "measuring gradient quality" in err                  # progress went to stderr
    assert set(document["gradients"]) == set(QUANTITIES)
    for code_, row in document["gradients"].items():
        assert row["label"] == QUANTITY_LABELS[code_].text(10)
        assert set(STATISTICS) <= set(row) and row["n"] + row["n_nonfinite"] == N
    stored = ResultsStore(db).notes(document["run_id"])["checks"]
    assert [check["name"] for check in document["checks"]] == list(CHEAP_CHECKS)
    for check in document["checks"]:
        assert check["evidence"] == stored[check["name"]]["evidence"]
        assert check["explanation"] and check["summary"] == evidence_summary(check["name"], check["evidence"])
    assert document["flags"] == [] and document["n"] == N and document["pgd_steps"] == 10


def test_a_masked_model_prints_the_same_summary_with_each_flag_explained(masked_diagnosis):
    diagnosis, logged = masked_diagnosis
    flagged = {check.name for check in diagnosis.flags}
    assert {"gradients", "unbounded"} <= flagged
    printed = "\n".join(logged)
    assert too_wide(printed) == []
    summary = summary_lines(diagnosis)
    assert logged[-len(summary):] == summary                    # what `robeval diagnose` prints
    for check in diagnosis.checks:
        row = next(line for line in summary if line.startswith(f"{check.name} "))
        assert ("pass" if check.passed else "FLAG") in row
        assert (joined(check.explanation) in joined(printed)) == (not check.passed)
    assert f"{len(flagged)} of {len(CHECKS)} checks flagged" in printed
    document = json.loads(json.dumps(diagnosis_json(diagnosis), allow_nan=False))
    assert {line.split(":")[0] for line in document["flags"]} == {f"FLAG {name}" for name in flagged}


def test_every_check_has_an_evidence_summary_that_reads_its_evidence(masked_diagnosis, honest_output):
    assert set(EVIDENCE_SUMMARIES) == set(CHECKS)
    _, (_, out, _), _ = honest_output
    evidence = [(check.name, check.evidence) for check in masked_diagnosis[0].checks]
    evidence += [(check["name"], check["evidence"]) for check in json.loads(out)["checks"]]
    for name, found in evidence:
        text = EVIDENCE_SUMMARIES[name](found)                  # a renamed evidence key fails here
        assert "{" not in text and len(text) <= 2 * (WIDTH - CHECK_INDENT)


def test_attack_json_holds_the_summary_rows_checks_and_notes(honest_run, tmp_path):
    code, out, _ = cli("attack", str(honest_run), "--suite", "fgsm", "--n", str(N), "--quiet",
                       "--json", "--db", str(tmp_path / "db.sqlite"))
    assert code == 0
    document = json.loads(out)
    assert [row["attack"] for row in document["summary"]] == ["clean", "fgsm", "worst case"]
    assert all(row["n"] == N for row in document["summary"])
    assert [check["name"] for check in document["checks"]] == list(CHEAP_CHECKS)
    assert all(isinstance(check["evidence"], dict) and check["summary"] for check in document["checks"])
    assert set(document["attack_notes"]) <= {"fgsm"} and document["notes"] == document["flags"] == []
