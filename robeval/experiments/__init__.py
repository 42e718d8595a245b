"""Experiments: a grid of training runs, their evaluation and one report, from a YAML file.

An experiment file describes a study end to end::

    name: quickstart                  # folder under checkpoints/ and reports/ (default: file stem)
    description: ReLU against GELU under PGD-1 training on the embedded digits
    base:                             # a preset plus nested overrides, as `robeval train --config`
      preset: ci-small
      data: {dataset: digits}
    grid:                             # dotted keys -> lists; the cells are their product
      model.activation: [relu, gelu]
    seeds: [0]                        # every cell is trained once per seed (default [0])
    attack: {suite: "fgsm,pgd10,apgd-ce", n: 300}   # EvalConfig fields except data_dir/device
    report: {baseline: first}         # baseline: first | none | a cell name; formats; ci; title
    paper:                            # optional published numbers shown beside ours
      source: "Xie et al., Smooth Adversarial Training, Figure 3"
      note: "what differs (dataset, model, epochs)"
      tables:                         # where the rows are printed in the paper's text (tests check it)
        t1: {file: sat-smooth-adversarial-training.md, caption: "Table 1:",
             metrics: {clean: "Accuracy (%)", robust: "Robustness (%)"}}
      rows:
        - {cell: {model.activation: relu}, table: t1, at: [ResNet-50, ✗, ✗], clean: 68.8, robust: 33.0}
        - {cell: {model.activation: silu}, clean: 69.7, robust: 42.3,
           quote: "achieve 42.3% robustness and 69.7% standard accuracy"}
    findings:                         # the paper's claims as comparisons of two cells (robeval.findings)
      - {claim: "SiLU is more robust than ReLU", better: {model.activation: silu},
         worse: {model.activation: relu}, metric: robust}
    checkpoint: best                  # evaluated: best (highest val PGD accuracy) | last (final epoch)

`grid` may also be a list of such mappings: the cells are then the union of their products
(identical configurations are trained once), which varies one setting at a time around `base`
as in Bag of Tricks; each single-key group also gets a table of its own in report.md.
Grid keys are `section.field` (sections data, model, adversary, optim) or a top-level training
field such as `epochs`; seeds come from `seeds`, never from the grid.

`checkpoint` says which model of each training run is evaluated: `best` (the default: best.pt,
the epoch with the highest validation PGD accuracy, which is what early stopping keeps, as in
Bag of Tricks) or `last` (last.pt, the final epoch: for claims about where training ends up,
such as catastrophic overfitting, which the best epoch would hide). A finding's `metric` must be
clean, robust (worst case) or an attack of the suite; that is checked when the file is loaded.

`run_experiment` trains every cell into `root/checkpoints/<name>/<cell>`, evaluates it into
`root/reports/<name>/robeval.sqlite` and renders `root/reports/<name>/report`. Interrupted work
continues where it stopped: a cell whose training finished is not trained again, and an
evaluation resumes at its first unfinished batch. Published numbers, when given, are set beside ours in a
table of the report, and each finding gets the paper's difference, ours with a 95% interval and
a verdict (see robeval.findings).

A published row's metric columns are any keys besides `cell`, `table`, `at`, `quote` and
`relative_to`: `clean`, `robust` (the paper's headline robustness) or an attack name (`pgd10`,
`pgd50`, `aa`). `relative_to` names the cell of another row when the paper prints this row as a
difference from that one (SAT Table 2); its values are then added to the other row's. `table`
and `at` (row labels, or a mapping with `row` and `column`), or `quote` (a passage of the
running text holding the numbers), say where the numbers are printed; tests/test_paper_numbers.py
checks every number there. None of this changes what is trained: a cell's identity is its
training configuration.

Layout (imports flow down this list; robeval.check uses the package, never the other way):

* `grid`: `Cell`, the grid expanded into cells (`cells`, `grid_groups`), their names and labels,
  setting keys and the folders of a cell's run and of the experiment's report (`run_dir`, `report_dir`);
* `spec`: finding, reading and checking an experiment file (`load_experiment`), the `Experiment`,
  `CellResult` and `ExperimentResult` dataclasses, the published numbers of its paper block;
* `report`: `write_report`, the group and study tables, the per-image flags of a finished evaluation
  (`metric_flags`, `measurements`), the finding and published rows, the paper section and `cells_table`;
* `run`: training and evaluating cells (`run_experiment`), their status and evaluation in the store;
* `record`: a study's reproduction record, the finished cells' flags, histories and seconds in one
  file kept with the repository (`read_record`, `write_record`, `recorded_cells`).

Everything is re-exported here: `from robeval import experiments as ex; ex.load_experiment(...)`.
"""

from robeval.experiments.grid import (
    Cell,
    cells,
    config_key,
    grid_groups,
    report_dir,
    run_dir,
    safe_name,
    setting_key,
    spec_label,
    spec_setting,
)
from robeval.experiments.record import (
    CellRecord,
    cell_record,
    read_record,
    record_measurements,
    record_path,
    recorded_cells,
    write_record,
)
from robeval.experiments.report import (
    Measurements,
    cells_table,
    finding_rows,
    measured_flags,
    measurements,
    metric_flags,
    paper_section,
    published_rows,
    study_tables,
    write_report,
)
from robeval.experiments.run import (
    FINISHED_MARKER,
    STATUSES,
    STORE_NAME,
    cell_status,
    cells_done,
    eval_config,
    evaluated_model,
    find_evaluation,
    reused_from,
    run_cell,
    run_experiment,
    trained_twin,
    training_finished,
)
from robeval.experiments.spec import (
    CHECKPOINTS,
    EVAL_FIELDS,
    PAPER_KEYS,
    REPORT_KEYS,
    ROW_KEYS,
    TOP_FIELDS,
    TOP_KEYS,
    CellResult,
    Experiment,
    ExperimentResult,
    check_grid_key,
    experiment_dirs,
    find_experiment,
    load_experiment,
    paper_metrics,
    published_values,
)
from robeval.train.config import config_to_dict  # re-exported: where the tests have always found it

__all__ = [
    "CHECKPOINTS", "Cell", "CellRecord", "CellResult", "EVAL_FIELDS", "Experiment", "ExperimentResult",
    "FINISHED_MARKER", "Measurements", "PAPER_KEYS", "REPORT_KEYS", "ROW_KEYS", "STATUSES",
    "STORE_NAME", "TOP_FIELDS", "TOP_KEYS", "cell_record", "cell_status", "cells", "cells_done",
    "cells_table", "check_grid_key", "config_key", "config_to_dict", "eval_config", "evaluated_model",
    "experiment_dirs", "find_evaluation", "find_experiment", "finding_rows", "grid_groups",
    "load_experiment", "measured_flags", "measurements", "metric_flags", "paper_metrics",
    "paper_section", "published_rows", "published_values", "read_record", "record_measurements",
    "record_path", "recorded_cells", "report_dir", "reused_from", "run_cell", "run_dir",
    "run_experiment", "safe_name", "setting_key", "spec_label", "spec_setting", "study_tables",
    "trained_twin", "training_finished", "write_record", "write_report"
]
