"""A dataset folder registered in the store, with the folds every run on it uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.data.folds import fold_rule, make_folds, make_group_folds, read_groups
from engine.data.manifest import DatasetLayout, load_layout
from engine.errors import DataError
from engine.specs import stored_folds_mismatch

if TYPE_CHECKING:
    from engine.store import Store


@dataclass
class PreparedData:
    """A loaded dataset layout registered in the store, with its stored folds."""

    layout: DatasetLayout
    dataset_id: int
    folds: np.ndarray          # fold index per curated clip, curated CSV order

    @property
    def classes(self) -> list[str]:
        return self.layout.classes


def prepare_dataset(store: Store, root: str | Path, *, n_folds: int = 5, fold_seed: int = 42,
                    folds_field: str = "train.n_folds", group_column: str = "") -> PreparedData:
    """Load the layout, register it, and compute the folds once (stored for every later run).

    With ``group_column`` (``data.group_column``) the folds keep each source
    recording named in that column of ``train_curated.csv`` in one fold
    (``make_group_folds``); without, they are iterative stratification
    (``make_folds``). The dataset row records the rule (``fold_rule``).
    ``folds_field`` names the spec's fold-count setting in the error raised
    when it disagrees with the dataset's stored folds; a group column that
    disagrees with the stored rule is an error on ``data.group_column``.
    """
    layout = load_layout(root)
    name = Path(root).resolve().name
    dataset_id = store.register_dataset(
        root, name=name, classes=layout.classes, n_curated=len(layout.curated.fnames),
        n_noisy=len(layout.noisy.fnames) if layout.noisy else 0, n_test=len(layout.test.fnames))
    stored = store.get_folds(dataset_id)
    if not stored:
        if group_column:
            groups = read_groups(layout.curated.csv_path, group_column, layout.curated.fnames)
            folds = make_group_folds(layout.curated.Y, groups, n_splits=n_folds, seed=fold_seed)
        else:
            folds = make_folds(layout.curated.Y, n_splits=n_folds, seed=fold_seed)
        store.save_folds(dataset_id, layout.curated.fnames, folds.tolist(), seed=fold_seed, n_folds=n_folds,
                         rule=fold_rule(group_column))
        stored = store.get_folds(dataset_id)
    ds = store.get_dataset(dataset_id)
    mismatch = stored_folds_mismatch(ds, group_column=group_column, n_folds=n_folds, fold_seed=fold_seed,
                                     folds_field=folds_field)
    if mismatch is not None:
        raise mismatch
    missing = [f for f in layout.curated.fnames if f not in stored]
    if missing:
        raise DataError(f"{len(missing)} curated clips (first: {missing[0]}) are not in the stored folds: "
                        "the curated list changed since the folds were made; register it as a new dataset",
                        file=layout.curated.csv_path)
    folds = np.array([stored[f] for f in layout.curated.fnames], dtype=np.int64)
    return PreparedData(layout=layout, dataset_id=dataset_id, folds=folds)
