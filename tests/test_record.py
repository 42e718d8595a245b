"""Reproduction records: what docs/reproduction.md reads of each finished cell, kept with the
repository so the page can be rebuilt, and a stopped reproduction continued, without the run
folders; stale and damaged entries never give a number."""

from __future__ import annotations

import json

import pytest

from robeval import experiments as ex
from robeval import reproduction
from robeval.errors import RobevalError
from robeval.experiments import run as run_module
from robeval.results import ResultsStore
from tests.test_experiments import TINY, write

FINDING = {"claim": "gelu beats relu", "better": {"model.activation": "gelu"},
           "worse": {"model.activation": "relu"}, "metric": "fgsm", "paper_metric": "robust"}
STUDY = {**TINY, "findings": [FINDING],
         "paper": {**TINY["paper"], "rows": [*TINY["paper"]["rows"],
                                             {"cell": {"model.activation": "gelu"}, "robust": 35.0}]}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny study run end to end, and its record brought up to date from the run."""
    root = tmp_path_factory.mktemp("record")
    path = write(root, STUDY)
    experiment = ex.load_experiment(path)
    result = ex.run_experiment(experiment, root, progress=False, log=lambda _: None)
    entries, stale = reproduction.update_record(experiment, root, root / "records")
    return experiment, path, root, result, entries, stale


def no_training(*args, **kwargs):
    raise AssertionError("a recorded cell was trained again")


def test_the_record_holds_what_the_store_and_run_folder_say(finished):
    experiment, _, root, result, entries, stale = finished
    assert stale == 0 and list(entries) == [c.name for c in ex.cells(experiment)]
    with ResultsStore(ex.report_dir(experiment, root) / ex.STORE_NAME) as store:
        from_store = ex.measurements(result.cells, store)
        for cell_result in result.cells:
            entry = entries[cell_result.cell.name]
            assert entry.evaluation_seconds == store.working_seconds(cell_result.run_id)
            assert entry.model_sha256 == store.run_record(cell_result.run_id).checkpoint_hash
            history = (ex.run_dir(experiment, cell_result.cell, root) / "history.jsonl").read_text()
            assert entry.training_seconds == pytest.approx(
                sum(json.loads(line)["time"] for line in history.splitlines()))
    read_back, _ = ex.read_record(experiment, ex.record_path(experiment, root / "records"))
    from_record = ex.record_measurements(experiment, read_back)
    assert from_record.keys() == from_store.keys()
    for setting, seeds in from_store.items():
        for metric, flags in seeds[0].items():
            assert from_record[setting][0][metric].equals(flags), (setting, metric)


def test_the_page_rebuilds_from_the_record_alone(finished, tmp_path):
    experiment, path, root, _, _, _ = finished
    out = tmp_path / "reproduction.md"
    (tmp_path / "reproduction").mkdir()
    records = tmp_path / "reproduction" / "records"
    records.mkdir()
    record = ex.record_path(experiment, records)
    record.write_bytes(ex.record_path(experiment, root / "records").read_bytes())
    with_runs = reproduction.build([path], root, None, out, "cmd")
    fresh = tmp_path / "fresh-machine"   # no checkpoints, no stores
    without_runs = reproduction.build([path], fresh, None, out, "cmd")
    assert without_runs == with_runs
    assert "cells finished**: 2 of 2 (seeds 0)" in without_runs
    assert "| gelu beats relu" in without_runs


def test_an_entry_of_another_protocol_gives_no_number(finished, tmp_path):
    experiment, path, root, _, _, _ = finished
    records = tmp_path / "records"
    records.mkdir()
    ex.record_path(experiment, records).write_bytes(
        ex.record_path(experiment, root / "records").read_bytes())
    stronger = write(tmp_path, {**STUDY, "attack": {**STUDY["attack"], "n": 32}})
    section = reproduction.study_section(stronger, tmp_path / "fresh", None, tmp_path, records)
    assert section.finished == 0 and section.verdicts == ["inconclusive at this scale"]
    assert "**dropped**: 2 entries of the record ran under another protocol" in section.text
    assert "activation=relu,seed=0 (todo)" in section.text
    other_seed = ex.load_experiment(write(tmp_path, {**STUDY, "seeds": [1]}))
    assert ex.read_record(other_seed, ex.record_path(experiment, root / "records")) == ({}, 2)


@pytest.mark.parametrize("damage", ["flip a flag", "cut short", "not json"])
def test_a_damaged_record_is_a_one_line_error(finished, tmp_path, damage):
    experiment, _, root, _, _, _ = finished
    lines = ex.record_path(experiment, root / "records").read_text().splitlines()
    row = json.loads(lines[0])
    if damage == "flip a flag":
        flags = row["entry"]["flags"]
        flags["clean"] = format(int(flags["clean"][:2], 16) ^ 0x80, "02x") + flags["clean"][2:]
        lines[0] = json.dumps(row)
    elif damage == "cut short":
        lines[0] = lines[0][: len(lines[0]) // 2]
    else:
        lines[0] = "{'cell': 1}"
    path = tmp_path / "tiny.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RobevalError) as info:
        ex.read_record(experiment, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "git checkout --" in message


def test_a_run_given_the_record_skips_the_cells_it_holds(finished, tmp_path, monkeypatch):
    experiment, _, root, _, entries, _ = finished
    records = tmp_path / "records"
    records.mkdir()
    ex.write_record(experiment, ex.record_path(experiment, records),
                    {name: entry for name, entry in entries.items() if "relu" in name})
    recorded = ex.recorded_cells(experiment, records)
    assert recorded == {"activation=relu,seed=0"}
    assert ex.cells_done(experiment, tmp_path / "fresh", recorded) == 1
    trained, real_train = [], run_module.train
    monkeypatch.setattr(run_module, "train", lambda config, out, **kwargs:
                        trained.append(out.name) or real_train(config, out, **kwargs))
    lines = []
    result = ex.run_experiment(experiment, tmp_path / "fresh", progress=False, log=lines.append,
                               recorded=recorded)
    assert trained == ["activation=gelu,seed=0"]
    assert [r.status for r in result.cells] == ["recorded", "done"]
    assert any(line.endswith("activation=relu,seed=0 (1 done, 1 left): in the record, not run")
               for line in lines), lines

    monkeypatch.setattr(run_module, "train", no_training)
    lines.clear()
    everything = ex.recorded_cells(experiment, root / "records")
    result = ex.run_experiment(experiment, tmp_path / "none", progress=False, log=lines.append,
                               recorded=everything)
    assert [r.status for r in result.cells] == ["recorded", "recorded"] and result.report == {}
    assert lines[-1] == "report: none written here (every cell is in the record)"


def test_reproduction_run_continues_from_the_committed_record(finished, tmp_path, monkeypatch, capsys):
    experiment, path, root, _, _, _ = finished
    out = tmp_path / "docs" / "reproduction.md"
    records = out.parent / out.stem / "records"
    records.mkdir(parents=True)
    ex.record_path(experiment, records).write_bytes(
        ex.record_path(experiment, root / "records").read_bytes())
    monkeypatch.setattr(run_module, "train", no_training)
    code = reproduction.main([str(path), "--run", "--quiet", "--root", str(tmp_path / "fresh"),
                              "--out", str(out)])
    assert code == 0, capsys.readouterr().out
    assert "cells finished**: 2 of 2 (seeds 0)" in out.read_text()


def test_robeval_run_takes_the_record_folder(finished, tmp_path):
    from click.testing import CliRunner

    from robeval.cli import cli

    _, path, root, _, _, _ = finished
    outcome = CliRunner().invoke(cli, ["run", str(path), "--root", str(tmp_path), "--quiet",
                                       "--records", str(root / "records")])
    assert outcome.exit_code == 0, outcome.output
    assert "2 cells are in the record" in outcome.output
    assert not (tmp_path / "checkpoints").exists()
