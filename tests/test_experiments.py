"""Experiment files: loading, the cell grid, status, and end-to-end runs that continue where they stopped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from robeval import experiments as ex
from robeval.errors import RobevalError
from robeval.results import ResultsStore
from robeval.train.config import TrainConfig

SHIPPED = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))

TINY = {
    "name": "tiny",
    "description": "two digits cells",
    "base": {"preset": "ci-small", "epochs": 1, "diagnostics_batch": 0, "val_pgd_steps": 1,
             "data": {"dataset": "digits", "train_subset": 128, "val_size": 64}},
    "grid": {"model.activation": ["relu", "gelu"]},
    "seeds": [0],
    "attack": {"suite": "fgsm", "n": 64, "checks": False},
    "report": {"baseline": "first", "formats": ["md"]},
    "paper": {"source": "a paper", "note": "fewer epochs",
              "rows": [{"cell": {"model.activation": "relu"}, "clean": 68.8, "robust": 33.0}]},
}


def write(tmp_path: Path, values: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def one_line_error(path_or_name, match: str) -> None:
    with pytest.raises(RobevalError, match=match) as info:
        ex.load_experiment(path_or_name)
    assert "\n" not in str(info.value)


def test_cells_are_grid_product_times_seeds(tmp_path):
    values = {**TINY, "paper": None, "grid": {"model.activation": ["relu", "elu(alpha=0.5)"],
                                              "optim.weight_decay": [0.0, "5e-4"]}, "seeds": [0, 1]}
    experiment = ex.load_experiment(write(tmp_path, values))
    found = ex.cells(experiment)
    assert len(found) == 8
    assert found[0].name == "activation=relu,weight_decay=0.0,seed=0"
    assert "activation=elu-alpha=0.5,weight_decay=5e-4,seed=1" in [c.name for c in found]
    assert all(ex.safe_name(c.name) == c.name for c in found)
    last = found[-1]
    assert last.config.model.activation == "elu(alpha=0.5)" and last.config.seed == 1
    assert last.config.optim.weight_decay == pytest.approx(5e-4)
    assert last.config.data.train_subset == 128 and last.config.preset == "ci-small"


def test_grid_groups_vary_one_setting_and_share_the_baseline(tmp_path):
    values = {**TINY, "paper": None, "grid": [{"optim.weight_decay": ["5e-4", 0.0]},
                                              {"optim.label_smoothing": [0.0, 0.1]}]}
    names = [c.name for c in ex.cells(ex.load_experiment(write(tmp_path, values)))]
    assert names == ["weight_decay=5e-4,seed=0", "weight_decay=0.0,seed=0", "label_smoothing=0.1,seed=0"]


def test_data_dir_overrides_base(tmp_path):
    experiment = ex.load_experiment(write(tmp_path, TINY), data_dir=str(tmp_path))
    assert all(c.config.data.data_dir == str(tmp_path) for c in ex.cells(experiment))


@pytest.mark.parametrize("change, match", [
    ({"epochz": 3}, "unknown key 'epochz'"),
    ({"grid": {"model.activaton": ["relu"]}}, "unknown grid key 'model.activaton'"),
    ({"grid": {"modle.activation": ["relu"]}}, "unknown grid key 'modle.activation'"),
    ({"grid": {"seed": [0, 1]}}, "seeds go in 'seeds'"),
    ({"grid": {"model.activation": []}}, "non-empty list"),
    ({"attack": {"suite": "fgsm", "device": "cpu"}}, "unknown key 'device'"),
    ({"report": {"layout": "x"}}, "unknown key 'layout'"),
    ({"seeds": ["a"]}, "list of integers"),
    ({"paper": {"rows": [{"cell": {"model.activation": "tanh"}, "clean": 1}]}}, "matches no cell"),
    ({"grid": {"model.activation": ["nope"]}}, "unknown activation"),
    ({"checkpoint": "final"}, "'checkpoint' in .* must be best .* or last"),
])
def test_bad_experiments_are_one_line_errors(tmp_path, change, match):
    one_line_error(write(tmp_path, {**TINY, **change}), match)


def test_load_refuses_a_finding_whose_metric_the_suite_does_not_give(tmp_path):
    rows = [{"cell": {"model.activation": "relu"}, "pgd50": 30.0},
            {"cell": {"model.activation": "gelu"}, "pgd50": 40.0}]
    finding = {"claim": "gelu beats relu", "better": {"model.activation": "gelu"},
               "worse": {"model.activation": "relu"}, "metric": "pgd20", "paper_metric": "pgd50"}
    values = {**TINY, "paper": {**TINY["paper"], "rows": rows}, "findings": [finding],
              "attack": {"suite": "pgd50,fgsm", "n": 64}}
    one_line_error(write(tmp_path, values), "reads metric 'pgd20', which the suite 'pgd50,fgsm' does not")
    for metric in ("pgd50", "fgsm", "clean", "robust", "worst case"):
        ex.load_experiment(write(tmp_path, {**values, "findings": [{**finding, "metric": metric}]}))


def test_load_reads_which_checkpoint_is_evaluated(tmp_path):
    best = ex.load_experiment(write(tmp_path, TINY))
    last = ex.load_experiment(write(tmp_path, {**TINY, "checkpoint": "last"}, "last.yaml"))
    cell = ex.cells(best)[0]
    assert best.checkpoint == "best"
    assert ex.evaluated_model(best, cell, tmp_path) == ex.run_dir(best, cell, tmp_path)
    assert last.checkpoint == "last"
    assert ex.evaluated_model(last, cell, tmp_path) == ex.run_dir(last, cell, tmp_path) / "last.pt"


def test_bad_yaml_and_unknown_name_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n  grid: {\n")
    one_line_error(bad, "not valid YAML")
    one_line_error("no-such-experiment", "no experiment file 'no-such-experiment'; known .*quickstart")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_experiments_resolve(path):
    experiment = ex.load_experiment(path.stem)
    assert experiment.description and experiment.name == path.stem
    found = ex.cells(experiment)
    assert len(found) >= 2 and all(isinstance(c.config, TrainConfig) for c in found)
    assert ex.eval_config(experiment, found[0]).suite


MINI_STUDIES = [p for p in SHIPPED if p.stem.endswith("-mini") and p.stem != "regress-mini"]


@pytest.mark.parametrize("path", MINI_STUDIES, ids=[p.stem for p in MINI_STUDIES])
def test_mini_studies_load_with_the_committed_protocol(path):
    """All training images but the validation split, the first 500 test images, at least five
    seeds; early stopping on validation PGD accuracy where the best epoch is evaluated, a fixed
    budget where the last one is (claims about where training ends, such as a collapse)."""
    experiment = ex.load_experiment(path)
    assert experiment.attack["n"] == 500 and len(experiment.seeds) >= 5
    for cell in ex.cells(experiment):
        config = cell.config
        assert config.data.train_subset is None and config.data.val_size >= 500
        if experiment.checkpoint == "best":
            assert config.early_stop_patience and config.epochs > config.early_stop_patience
        else:
            assert config.early_stop_patience is None and not config.stop_on_collapse
    finding_metrics = {f.metric for f in experiment.findings}
    assert finding_metrics <= {"clean", "robust", *experiment.attack["suite"].split(",")}


def test_the_figure1_mini_regime_lets_relu_overfit_catastrophically():
    experiment = ex.load_experiment("smoothness-figure1-mini")
    found = ex.cells(experiment)
    assert {c.config.model.activation for c in found} == {"relu", "gelu"}
    for cell in found:
        adversary = cell.config.adversary
        assert adversary.method == "fgsm" and not adversary.random_start
        assert adversary.eps > 8 / 255 and cell.config.epochs >= 30
        assert cell.config.diagnostics_batch > 0
    assert experiment.checkpoint == "last"


def test_shipped_files_come_in_full_and_mini_pairs():
    stems = {p.stem for p in SHIPPED}
    studies = {"sat-table1", "sat-figure3", "sat-table2", "smoothness-table1", "bag-of-tricks"}
    assert {"quickstart"} | studies | {f"{s}-mini" for s in studies} <= stems
    for study in studies:
        mini = ex.load_experiment(f"{study}-mini")
        assert mini.attack["n"] <= 500 and ex.cells(mini)[0].config.model.arch == "cnn-small"


def test_dry_run_lists_todo_and_writes_nothing(tmp_path):
    experiment = ex.load_experiment(write(tmp_path, TINY))
    lines = []
    result = ex.run_experiment(experiment, tmp_path / "root", dry_run=True, log=lines.append)
    assert [r.status for r in result.cells] == ["todo", "todo"]
    assert "activation=gelu,seed=0" in lines[0] and "todo" in lines[0]
    assert not (tmp_path / "root").exists()


def test_cells_run_seed_by_seed_so_a_stopped_study_stays_paired(tmp_path):
    from robeval.experiments.run import run_order

    experiment = ex.load_experiment(write(tmp_path, {**TINY, "seeds": [3, 0, 1]}))
    listed = ex.cells(experiment)
    assert [c.seed for c in listed] == [3, 0, 1, 3, 0, 1]   # setting by setting
    ordered = run_order(experiment, listed)
    assert [c.seed for c in ordered] == [3, 3, 0, 0, 1, 1]
    assert [c.name for c in ordered[:2]] == [listed[0].name, listed[3].name]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The tiny experiment run once, end to end."""
    tmp_path = tmp_path_factory.mktemp("experiment")
    experiment = ex.load_experiment(write(tmp_path, TINY))
    lines = []
    result = ex.run_experiment(experiment, tmp_path, progress=False, log=lines.append)
    return experiment, tmp_path, result, lines


def test_run_trains_evaluates_and_reports(finished_run):
    experiment, root, result, lines = finished_run
    for cell in ex.cells(experiment):
        assert (root / "checkpoints" / "tiny" / cell.name / "best.pt").is_file()
    with ResultsStore(root / "reports" / "tiny" / "robeval.sqlite") as store:
        assert len(store.runs()) == 2 and set(store.runs()["status"]) == {"finished"}
    assert [r.status for r in result.cells] == ["done", "done"]
    assert all(0 <= r.worst_case <= r.clean <= 1 for r in result.cells)
    assert any(line.startswith("cell 2/2 activation=gelu,seed=0 (1 done, 0 left, ")
               and line.endswith(" to go): training") for line in lines), lines
    markdown = result.report["md"].read_text()
    assert "## Published numbers beside ours" in markdown and "fewer epochs" in markdown
    assert re.search(r"\| activation=relu +\| +68\.8 \| +33\.0 \|", markdown)


def test_rerun_continues_only_what_is_missing(finished_run):
    experiment, root, result, _ = finished_run
    found = ex.cells(experiment)
    last_pt = [root / "checkpoints" / "tiny" / c.name / "last.pt" for c in found]
    stamps = [p.stat().st_mtime_ns for p in last_pt]
    with ResultsStore(root / "reports" / "tiny" / "robeval.sqlite") as store:
        store.delete_run(result.cells[1].run_id)
    assert [ex.cell_status(experiment, c, root) for c in found] == ["done", "trained"]
    assert ex.cells_done(experiment, root) == 1
    lines = []
    again = ex.run_experiment(experiment, root, progress=False, log=lines.append)
    assert [p.stat().st_mtime_ns for p in last_pt] == stamps
    assert lines[0].endswith(": done") and lines[1].endswith(": evaluating")
    # positions count the cells done before this run, not the cells before this one
    assert lines[0].startswith(f"cell 1/2 {found[0].name} (1 done, 1 left)")
    assert lines[1].startswith(f"cell 2/2 {found[1].name} (1 done, 0 left)")
    assert ex.cells_done(experiment, root) == 2
    assert not any(line.endswith(": training") for line in lines)
    assert again.cells[1].clean == pytest.approx(result.cells[1].clean)
    assert [ex.cell_status(experiment, c, root) for c in found] == ["done", "done"]


def test_a_study_sharing_a_finished_run_evaluates_it_instead_of_training(finished_run, monkeypatch):
    from robeval.experiments import run as run_module

    experiment, root, _, _ = finished_run
    values = {**TINY, "name": "tiny-again", "paper": None, "attack": {**TINY["attack"], "n": 32},
              "grid": {"model.activation": ["relu", "silu"]}}
    again = ex.load_experiment(write(root, values, "tiny-again.yaml"))
    relu, silu = ex.cells(again)
    assert ex.trained_twin(again, relu, root) == ex.run_dir(experiment, relu, root)
    assert ex.trained_twin(again, silu, root) is None       # no study trained SiLU
    other_seed = ex.load_experiment(write(root, {**values, "seeds": [1]}, "tiny-seed.yaml"))
    assert ex.trained_twin(other_seed, ex.cells(other_seed)[0], root) is None

    trained, real_train = [], run_module.train
    monkeypatch.setattr(run_module, "train", lambda config, out, **kwargs:
                        trained.append(out) or real_train(config, out, **kwargs))
    lines = []
    result = ex.run_experiment(again, root, progress=False, log=lines.append)
    copied, original = ex.run_dir(again, relu, root), ex.run_dir(experiment, relu, root)
    assert trained == [ex.run_dir(again, silu, root)]
    assert any(line.endswith("training reused from tiny/activation=relu,seed=0") for line in lines)
    assert (copied / "best.pt").read_bytes() == (original / "best.pt").read_bytes()
    assert ex.reused_from(copied) == "tiny/activation=relu,seed=0" and ex.reused_from(original) is None
    assert [r.status for r in result.cells] == ["done", "done"]
    with ResultsStore(root / "reports" / "tiny-again" / "robeval.sqlite") as store:
        assert set(store.runs()["n"]) == {32}                 # evaluated under its own attack
    from robeval import reproduction

    section = reproduction.study_section(root / "tiny-again.yaml", root, None, root / "figures")
    assert "; 1 of them reused the training of another study's identical run" in section.text
    assert (section.finished, section.cells, section.reused) == (2, 2, 1)


@pytest.mark.parametrize("text", ["[a, list]", "{unclosed: [", "\xff\xfe"])
def test_a_damaged_run_marker_is_a_one_line_error(tmp_path, text):
    folder = tmp_path / "study" / "activation=relu,seed=0"
    folder.mkdir(parents=True)
    (folder / ex.FINISHED_MARKER).write_bytes(text.encode("latin-1"))
    with pytest.raises(RobevalError) as info:
        ex.reused_from(folder)
    assert "\n" not in str(info.value) and ex.FINISHED_MARKER in str(info.value)
    assert ex.reused_from(tmp_path) is None                 # no marker: trained itself


def test_interrupted_training_resumes(tmp_path, monkeypatch):
    import robeval.train as train_module
    from robeval.experiments import run as run_module

    grid = [{"optim.label_smoothing": [0.0, 0.1]}, {"optim.weight_decay": ["5e-4"]}]
    experiment = ex.load_experiment(write(tmp_path, {**TINY, "paper": None, "grid": grid}))
    real_train, calls = train_module.train, []

    def flaky(config, out, **kwargs):
        calls.append(kwargs["resume"])
        if len(calls) == 2:
            Path(out).mkdir(parents=True)
            (Path(out) / "config.yaml").write_text(yaml.safe_dump(ex.config_to_dict(config)))
            raise KeyboardInterrupt
        return real_train(config, out, **kwargs)

    monkeypatch.setattr(run_module, "train", flaky)   # where _train_cell looks it up
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiment(experiment, tmp_path, progress=False, log=lambda _: None)
    found = ex.cells(experiment)
    assert [ex.cell_status(experiment, c, tmp_path) for c in found] == ["done", "partial"]
    first = tmp_path / "checkpoints" / "tiny" / found[0].name / "last.pt"
    stamp = first.stat().st_mtime_ns
    result = ex.run_experiment(experiment, tmp_path, progress=False, log=lambda _: None)
    assert calls == [False, False, True] and first.stat().st_mtime_ns == stamp
    assert [r.cell.name for r in result.cells] == ["label_smoothing=0.0,seed=0", "label_smoothing=0.1,seed=0"]
    markdown = result.report["md"].read_text()
    assert "## One setting at a time: label_smoothing" in markdown and "Published numbers" not in markdown


def test_paper_block_without_rows_gives_source_and_note_but_no_table(tmp_path):
    values = {**TINY, "paper": {"source": "a paper, Table 2", "note": "smaller model"}}
    section = ex.paper_section(ex.load_experiment(write(tmp_path, values)))
    assert "Source: a paper, Table 2." in section and "What differs: smaller model" in section
    assert "No published figures are listed" in section and "|" not in section


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_paper_study_says_where_its_published_numbers_come_from(path):
    experiment = ex.load_experiment(path)
    if experiment.name.startswith(("quickstart", "regress")):
        return
    assert experiment.paper and experiment.paper.get("source") and experiment.paper.get("note")


def test_reproduction_shows_finished_cells_and_names_the_missing(finished_run, tmp_path):
    from robeval import reproduction

    experiment, root, result, _ = finished_run
    values = {**TINY, "findings": [{"claim": "gelu beats relu", "better": {"model.activation": "gelu"},
                                    "worse": {"model.activation": "relu"}, "metric": "fgsm",
                                    "paper_metric": "robust"}],
              "paper": {**TINY["paper"], "rows": [*TINY["paper"]["rows"],
                                                  {"cell": {"model.activation": "gelu"}, "robust": 35.0}]}}
    path = write(tmp_path, {**values, "seeds": [0, 1]})
    out = tmp_path / "docs" / "reproduction.md"
    text = reproduction.build([path], root, None, out, "python -m robeval.reproduction")
    assert out.read_text() == text and "Generated by `python -m robeval.reproduction`" in text
    assert "cells finished**: 2 of 4 (seeds 0)" in text
    evaluation = re.search(r"training \d+ s and evaluation (\d+) s, summed over the finished runs", text)
    with ResultsStore(ex.report_dir(experiment, root) / ex.STORE_NAME) as store:
        runs = store.runs().set_index("id").loc[[c.run_id for c in result.cells]]
    spent = (runs["finished_at"] - runs["started_at"]).dt.total_seconds().sum()
    assert evaluation and int(evaluation.group(1)) == round(spent)
    assert "activation=relu,seed=1 (todo); activation=gelu,seed=1 (todo)" in text
    verdict = r"\| +1 × 64 \| inconclusive at this scale \|"
    assert re.search(r"\| gelu beats relu .*\| +\+2\.0 \| .* " + verdict, text)
    clean = f"{100 * result.cells[0].clean:.1f}"
    assert re.search(rf"\| activation=relu +\| +68\.8 \| +33\.0 \| +{clean} \|", text)


def test_reproduction_run_fills_the_missing_seeds_then_writes_the_document(finished_run, tmp_path, capsys):
    import shutil

    from robeval import reproduction

    _, trained_root, _, _ = finished_run
    root = tmp_path / "root"
    shutil.copytree(trained_root, root)
    kept = root / "checkpoints" / "tiny" / "activation=relu,seed=0" / "best.pt"
    stamp = kept.stat().st_mtime_ns
    path = write(tmp_path, {**TINY, "seeds": [0, 1]})
    out = tmp_path / "reproduction.md"
    assert reproduction.main([str(path), "--run", "--quiet", "--root", str(root), "--out", str(out)]) == 0
    assert "study 1/1: tiny" in capsys.readouterr().out
    assert "cells finished**: 4 of 4 (seeds 0, 1)" in out.read_text()
    assert kept.stat().st_mtime_ns == stamp          # seed 0 was not trained again


def test_a_cell_folder_trained_under_other_settings_is_not_taken_as_finished(tmp_path):
    """A study file changed after a cell trained (say, more epochs) must not reuse the old model."""
    import yaml

    from robeval.experiments.run import FINISHED_MARKER, training_finished
    from robeval.train.config import config_from_dict, config_to_dict

    trained = config_from_dict({"epochs": 2})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(trained)))
    (tmp_path / FINISHED_MARKER).write_text("")
    assert training_finished(tmp_path, trained)
    assert not training_finished(tmp_path, config_from_dict({"epochs": 10}))


def test_a_data_folder_named_another_way_is_the_same_setting(tmp_path, monkeypatch):
    """`--data-dir ../data` and the same folder's absolute path name one run; another folder does not."""
    import yaml

    from robeval.experiments.run import FINISHED_MARKER, training_finished
    from robeval.train.config import config_from_dict, config_to_dict

    data, other, run = tmp_path / "data", tmp_path / "other", tmp_path / "work" / "run"
    for folder in (data, other, run):
        folder.mkdir(parents=True)
    trained = config_from_dict({"data": {"dataset": "cifar10", "data_dir": str(data)}})
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(trained)))
    (run / FINISHED_MARKER).write_text("")
    monkeypatch.chdir(tmp_path / "work")
    named = lambda folder: config_from_dict({"data": {"dataset": "cifar10", "data_dir": folder}})  # noqa: E731
    assert training_finished(run, named("../data"))
    assert not training_finished(run, named("../other"))


def test_the_time_left_is_estimated_from_the_cells_that_had_work():
    from robeval.experiments.run import time_left

    assert time_left([], 5) == ""
    assert time_left([120.0, 240.0], 4) == ", about 12 min to go"
    assert time_left([10.0], 2) == ", under a minute to go"


def test_reproduction_runs_studies_side_by_side_and_names_one_that_fails(tmp_path, capsys):
    """--jobs 2: each study runs in its own process, its lines prefixed; a shared cell ends with
    the same weights in both studies; a failing study is named and the others still finish."""
    import torch

    from robeval import reproduction

    first = write(tmp_path, {**TINY, "name": "tiny-a"}, "tiny-a.yaml")
    second = write(tmp_path, {**TINY, "name": "tiny-b", "grid": {"model.activation": ["relu"]}},
                   "tiny-b.yaml")
    broken = write(tmp_path, {**TINY, "name": "tiny-c",
                              "base": {**TINY["base"], "data": {"dataset": "cifar10",
                                                                "data_dir": str(tmp_path / "none")}}},
                   "tiny-c.yaml")
    root, out = tmp_path / "root", tmp_path / "reproduction.md"
    code = reproduction.main([str(first), str(second), str(broken), "--run", "--jobs", "2",
                              "--root", str(root), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 2
    assert re.search(r"error: tiny-c stopped before finishing", printed)
    assert "[tiny-a] cell 1/2" in printed and "[tiny-b] cell 1/1" in printed
    assert "study tiny-a: finished" in printed and "study tiny-b: finished" in printed
    assert re.search(r"study tiny-c: stopped; overall: \d of 5 cells done", printed)
    shared = [torch.load(root / "checkpoints" / name / "activation=relu,seed=0" / "best.pt",
                         weights_only=True)["model"] for name in ("tiny-a", "tiny-b")]
    assert all(torch.equal(value, shared[1][key]) for key, value in shared[0].items())
    assert reproduction.main([str(first), str(second), "--root", str(root), "--out", str(out)]) == 0
    assert "Runs finished (trained and evaluated): 3 of 3" in out.read_text()
    # run again: the overall count starts from the cells already done, before any study logs
    capsys.readouterr()
    assert reproduction.main([str(first), str(second), "--run", "--jobs", "2", "--root",
                              str(root), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("overall: 3 of 3 cells done\n")


def test_reproduction_refuses_a_job_count_below_one(capsys):
    from robeval import reproduction

    with pytest.raises(SystemExit):
        reproduction.main(["--run", "--jobs", "0"])
    assert "--jobs" in capsys.readouterr().err


def test_overall_progress_reads_the_cell_lines_and_costs_waiting_studies_at_the_mean():
    from robeval.experiments.parallel import Overall

    overall = Overall({"a": 10, "b": 4, "c": 6}, jobs=2)
    assert overall.line() == "0 of 20 cells done"
    assert not overall.saw("a", "epoch 1/10  loss 2.3")
    assert overall.saw("a", "cell 3/10 activation=relu,seed=1 (2 done, 7 left)\n")
    assert overall.line() == "2 of 20 cells done"   # no cell timed yet: no estimate
    # a: 8 cells left at 7 min / 8 = 52.5 s each; b: 3 left at 2 min / 3 = 40 s each
    overall.saw("a", "cell 3/10 activation=relu,seed=1 (2 done, 7 left, about 7 min to go)")
    overall.saw("b", "cell 2/4 x=1,seed=0 (1 done, 2 left, about 2 min to go)")
    # waiting c: 6 cells at the mean 46.25 s; all over 2 jobs
    expected = (8 * 52.5 + 3 * 40 + 6 * 46.25) / 2 / 3600
    assert overall.line() == f"3 of 20 cells done, about {expected:.1f} h to go"
    overall.finish("b", completed=True)
    assert overall.line().startswith("6 of 20 cells done")
    overall.finish("a", completed=False)   # stopped: its cells stay undone, none left to run
    assert overall.line() == f"6 of 20 cells done, about {6 * 46.25 / 2 / 3600:.1f} h to go"


def test_an_interrupted_reproduction_says_how_to_continue(monkeypatch, tmp_path, capsys):
    from robeval import reproduction

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduction, "run_studies", interrupted)
    path = write(tmp_path, TINY)
    assert reproduction.main([str(path), "--run", "--root", str(tmp_path), "--out",
                              str(tmp_path / "r.md")]) == 130
    assert "interrupted: finished cells are kept" in capsys.readouterr().out
    assert not (tmp_path / "r.md").exists()


def test_overall_progress_reads_the_positions_a_real_run_logs(finished_run):
    """The overall line parses what run_experiment actually logs (the two must not drift apart)."""
    from robeval.experiments.parallel import Overall

    experiment, _, _, lines = finished_run
    overall = Overall({experiment.name: len(ex.cells(experiment))}, jobs=1)
    positions = [line for line in lines if overall.saw(experiment.name, line)]
    assert [line.split(" (")[0] for line in positions if line.endswith(": training")] == [
        "cell 1/2 activation=relu,seed=0", "cell 2/2 activation=gelu,seed=0"]
    assert overall.reached[experiment.name] == 1   # the second cell's line: 1 done


def test_a_terminated_side_by_side_run_stops_its_studies(tmp_path):
    """SIGTERM to `reproduction --run --jobs 2` ends the studies' processes with it."""
    import signal
    import subprocess
    import sys
    import time

    long = {**TINY, "base": {**TINY["base"], "epochs": 50}}
    paths = [write(tmp_path, {**long, "name": n}, f"{n}.yaml") for n in ("long-a", "long-b")]
    root = tmp_path / "root"
    parent = subprocess.Popen([sys.executable, "-m", "robeval.reproduction", *map(str, paths),
                               "--run", "--jobs", "2", "--root", str(root),
                               "--out", str(tmp_path / "r.md")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in parent.stdout:      # wait until both studies are training
        seen.append(line)
        if sum(": training" in item for item in seen) >= 2:
            break
    parent.send_signal(signal.SIGTERM)
    output = parent.communicate(timeout=60)[0]
    assert parent.returncode == 130 and "interrupted: finished cells are kept" in output

    def command_line(process: Path) -> bytes:
        try:
            return (process / "cmdline").read_bytes()
        except OSError:   # ended while we looked
            return b""

    def children():
        return [p for p in Path("/proc").iterdir()
                if p.name.isdigit() and str(root).encode() in command_line(p)]

    deadline = time.monotonic() + 10
    while children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not children()
