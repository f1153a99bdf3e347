"""Result tables in the paper's layout: Table 2 (5-class: accuracy, AUC per class) and Table 3 (top tagging:
accuracy, AUC, eps_s at eps_b = 0.1, 0.01, 0.001), each value with its +- std over test folds."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from jbot.evaluate.metrics import EPS_B_TARGETS, MIN_BACKGROUND, shown
from jbot.io import atomic_write_text


def columns(class_names: tuple[str, ...]) -> list[str]:
    if len(class_names) == 2:
        return ["acc", "auc"] + [f"eps_s_at_{t:g}" for t in EPS_B_TARGETS]
    return ["acc"] + [f"auc_{c}" for c in class_names]


def results_table(title: str, rows: dict[str, dict[str, float]], class_names: tuple[str, ...],
                  prefix: str = "test/") -> Table:
    """``rows``: {row label: metrics with keys ``{prefix}{column}`` and ``{prefix}{column}_std``}."""
    cols = columns(class_names)
    table = Table(title=title)
    table.add_column("")
    for col in cols:
        table.add_column(col.replace("eps_s_at_", "εs@εb="), justify="right")
    for label, metrics in rows.items():
        table.add_row(label, *(shown(metrics, f"{prefix}{col}") for col in cols))
    first = next(iter(rows.values()), {})
    if f"{prefix}n_test" in first:
        sizes = f"{int(first[f'{prefix}n_test'])} test jets"
        if f"{prefix}n_background" in first:
            sizes += f", {int(first[f'{prefix}n_background'])} of them background"
        table.caption = (f"{sizes}; chance: accuracy {first.get(f'{prefix}chance_acc', float('nan')):.2f}, AUC 0.50;"
                         f" ± = std over test folds; a working point on < {MIN_BACKGROUND} background jets is not "
                         "resolved")
    return table


def write_json(path: str | Path, payload: dict) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=float))
