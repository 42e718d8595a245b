"""Results store: evaluation runs in one SQLite file, committed batch by batch, read back as pandas.

A *run* is one model evaluated on the first `n` test images against a *suite* of attacks (attack
spec strings at positions 0..k-1). For every (sample, position) the store keeps an outcome:
'robust' (attacked and survived), 'broken' (attacked, some iterate misclassified) or 'skipped'
(not attacked: misclassified clean or, in mode 'cascade', broken by an earlier attack). A run
whose suite holds `corruptions(...)` also keeps, for every sample and (type, severity)
condition, the model's prediction on the corrupted image: every sample, clean-correct or not,
and apart from the attacks (corruptions are not part of the worst case).

Layout (``PRAGMA user_version`` = `SCHEMA_VERSION`; later versions migrate with `_MIGRATIONS`):

- ``runs``: id, key (unique), the `RunRecord` fields (``config``, ``versions`` and ``notes`` as JSON
  text; ``attacks`` and ``corruptions`` live in their own tables), status ('running' |
  'finished'), started_at and finished_at (ISO 8601, UTC).
- ``attacks`` (run_id, position, spec): the suite, in order.
- ``batches`` (run_id, batch_index, committed_at, clean_forward_passes): a row means the batch
  is complete; clean_forward_passes is the image-forwards of its clean classification.
- ``attack_seconds`` (run_id, batch_index, position, seconds, forward_passes, backward_passes,
  notes): the attack's time and image-passes on the batch (see `robeval.attacks.cost`), and what
  the engine noted about it (JSON, see `AttackNotes`).
- ``samples`` (run_id, sample_index, batch_index, label, clean_pred).
- ``outcomes`` (run_id, sample_index, position, outcome, margin, perturbation_norm, iterations).
- ``corruptions`` (run_id, position, corruption, severity): the common-corruption conditions of
  the run, in order (none for a run without the suite item `corruptions`).
- ``corruption_outcomes`` (run_id, sample_index, position, prediction, margin): the model's
  prediction on each sample under each condition; every sample has one per condition.
- ``corruption_seconds`` (run_id, batch_index, position, seconds, forward_passes,
  backward_passes): each condition's time and image-passes on the batch.

Pass counts are NULL in rows written before schema version 2; views show them as NaN. Notes are
NULL in rows written before schema version 3. Stores before version 4 hold no corruptions; a
read-only open of such a store migrates a copy in memory and leaves the file as it is.

Deleting a run deletes everything of it; deleting a batch deletes its samples, their outcomes and
its seconds (foreign keys with ON DELETE CASCADE). Samples are only ever written together with
their batch marker, so every stored sample belongs to a committed batch.

Several processes may write to one file at once: the database is in WAL mode, waits up to
`BUSY_TIMEOUT_S` for a lock, and every write is one short ``BEGIN IMMEDIATE`` transaction.

Modules: `robeval.results.schema` (the statements above, `_MIGRATIONS`, the allowed values),
`robeval.results.records` (the values written and read: `RunRecord`, `SampleRow`, `OutcomeRow`,
`CorruptionRow`, `Passes`, `AttackNotes`; `wilson_interval`), `robeval.results.store`
(`ResultsStore`: connection, transactions, runs, batches), `robeval.results.views` (its pandas
views; `robust_rows`) and `robeval.results.corruptions` (the corruption views; `corruption_table`
and `mean_corruption_error`).
"""

from robeval.results.corruptions import (
    CorruptionViews,
    corruption_errors,
    corruption_table,
    mean_corruption_error,
)
from robeval.results.records import (
    AttackNotes,
    CorruptionRow,
    OutcomeRow,
    Passes,
    RunRecord,
    SampleRow,
    wilson_interval,
)
from robeval.results.schema import _MIGRATIONS as _MIGRATIONS
from robeval.results.schema import _SCHEMA_V1 as _SCHEMA_V1
from robeval.results.schema import MODES, OUTCOMES, RESERVED_ROWS, SCHEMA_VERSION
from robeval.results.store import BUSY_TIMEOUT_S, CorruptionBatch, ResultsStore
from robeval.results.views import StoreViews, robust_rows

__all__ = [
    "BUSY_TIMEOUT_S",
    "MODES",
    "OUTCOMES",
    "RESERVED_ROWS",
    "SCHEMA_VERSION",
    "AttackNotes",
    "CorruptionBatch",
    "CorruptionRow",
    "CorruptionViews",
    "OutcomeRow",
    "Passes",
    "ResultsStore",
    "RunRecord",
    "SampleRow",
    "StoreViews",
    "corruption_errors",
    "corruption_table",
    "mean_corruption_error",
    "robust_rows",
    "wilson_interval",
]
