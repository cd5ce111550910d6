"""``aggregate``: from the listed result files to the aggregate tables (pure, no globbing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from tmifpe.aggregate.compare_aa import attack_cost, autoattack_summary, vs_autoattack, with_aa_gap
from tmifpe.aggregate.environment import environment_table
from tmifpe.aggregate.fast import FAST_KEYS, fast_table, load_fast
from tmifpe.aggregate.inputs import (
    DEFAULT_SUITE,
    load_autoattack,
    load_cells,
    load_timings,
    require_files,
)
from tmifpe.aggregate.iterations import robust_vs_iterations
from tmifpe.aggregate.keys import MODEL_KEYS, RUN_KEYS
from tmifpe.aggregate.leaderboard import leaderboard_comparison
from tmifpe.aggregate.precision_effect import nonfinite, precision_effect
from tmifpe.aggregate.robust import clean_accuracy, robust_accuracy, worst_case

# Every table ``aggregate`` returns, with the key columns its rows are sorted by.
TABLE_KEYS: dict[str, list[str]] = {
    "clean_accuracy": MODEL_KEYS,
    "robust_accuracy": RUN_KEYS,
    "worst_case": [*MODEL_KEYS, "precision", "budget"],
    "worst_case_all_precisions": [*MODEL_KEYS, "budget"],
    "autoattack": MODEL_KEYS,
    "vs_autoattack": RUN_KEYS,
    "attack_cost": RUN_KEYS,
    "leaderboard": MODEL_KEYS,
    "precision_effect": RUN_KEYS,
    "nonfinite": RUN_KEYS,
    "robust_vs_iterations": [*RUN_KEYS, "iteration"],
    "fast": FAST_KEYS,  # the fast preset vs AA per split (tmifpe/aggregate/fast.py)
    "environment": ["suite", "kind", "file"],  # tmifpe/aggregate/environment.py
}


def aggregate(
    cell_files: Sequence[Path],
    aa_files: Sequence[Path],
    timing_files: Sequence[Path],
    *,
    leaderboard: Mapping | None = None,
    model_ids: Mapping[str, tuple[str, str]] | None = None,
    fast_files: Sequence[Path] = (),
    suite: str = DEFAULT_SUITE,
) -> dict[str, pl.DataFrame]:
    """All aggregate tables (``TABLE_KEYS``) from exactly the listed files.

    ``cell_files``: attack-cell Parquet files; ``aa_files``: AutoAttack Parquet files;
    ``timing_files``: their ``.timing.json`` companions (each must sit beside a listed result
    file). ``leaderboard``: the ``tmifpe/leaderboard.json`` mapping (dataset → id → entry);
    ``model_ids``: grid key → (dataset, RobustBench id) for the models that get a leaderboard
    row. ``suite``: the name the tables carry (result rows carry none). Accuracies are
    fractions in [0, 1] except in ``leaderboard`` (percent, like the
    leaderboard); differences are in percentage points (``_pp``). A listed file that does not
    exist raises ``FileNotFoundError`` naming it; runs that were not made are absent, not zero.
    """
    cell_paths = require_files(cell_files)
    aa_paths = require_files(aa_files)
    timing_paths = require_files(timing_files)
    cells = load_cells(cell_paths, suite)
    aa = load_autoattack(aa_paths, suite)
    cell_timing, aa_timing = load_timings(timing_paths, cell_paths, aa_paths, suite)

    clean = clean_accuracy(cells)
    aa_summary = autoattack_summary(aa, aa_timing)
    cost = attack_cost(cells, cell_timing)
    tables = {
        "clean_accuracy": clean,
        "robust_accuracy": robust_accuracy(cells),
        "worst_case": with_aa_gap(worst_case(cells, TABLE_KEYS["worst_case"]), aa_summary),
        "worst_case_all_precisions": with_aa_gap(
            worst_case(cells, TABLE_KEYS["worst_case_all_precisions"]), aa_summary
        ),
        "autoattack": aa_summary,
        "vs_autoattack": vs_autoattack(cells, aa, cost, aa_summary),
        "attack_cost": cost,
        "leaderboard": leaderboard_comparison(clean, aa_summary, leaderboard, model_ids),
        "precision_effect": precision_effect(cells),
        "nonfinite": nonfinite(cells, aa),
        "robust_vs_iterations": robust_vs_iterations(cells),
        "fast": fast_table(*load_fast(fast_files, suite), aa, aa_timing),  # results/fast
        "environment": environment_table({"attack": cell_paths, "autoattack": aa_paths,
                                          "fast": require_files(fast_files)}, suite),
    }
    return {name: sort_table(name, table) for name, table in tables.items()}


def sort_table(name: str, table: pl.DataFrame) -> pl.DataFrame:
    """Rows in key order (nulls last), so equal inputs give equal bytes downstream."""
    return table.sort(TABLE_KEYS[name], nulls_last=True, maintain_order=True)
