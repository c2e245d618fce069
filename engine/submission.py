"""Submission CSVs in the Kaggle format: ``fname`` then one probability column per class.

Rows follow ``sample_submission.csv`` order and the class columns its column
order. Files are validated before they are written and written atomically (the
run layer's writer: a temporary file in the same folder, fsync, rename), so a failed write
never leaves a half-written or invalid submission in place of a good one.

Float format: every probability is written with Python's shortest
round-trip representation (``repr``; pandas' default for float columns), which
reads back to the identical float64. LWLRAP depends only on the order of the
scores within each clip, and blended probabilities can differ in the 7th or
later significant digit (or sit very close to 0), so any fixed precision such
as ``'%.6g'`` or ``'%.8f'`` would merge near-ties and change the score. The
cost is about 20 characters per value: a few MB for the full test set.

Row numbers in errors are CSV line numbers (the header is line 1), as in
``engine.data.labels``. numpy and pandas only: the console imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from engine.data import labels as label_csv
from engine.errors import DataError
from engine.metrics import lwlrap

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["read_sample_submission", "score_submission", "validate_submission", "write_submission"]

FNAME_COLUMN = "fname"
MAX_NAMED = 10


def _some(names: Sequence[str], total: int | None = None) -> str:
    """Up to MAX_NAMED names quoted, and how many there are in all."""
    total = len(names) if total is None else total
    shown = ", ".join(repr(str(n)) for n in list(names)[:MAX_NAMED])
    more = f" and {total - MAX_NAMED} more" if total > MAX_NAMED else ""
    return f"{total}: {shown}{more}"


def _exact_float_parsing(pd) -> dict:
    """read_csv options that parse floats back to the exact float64 that was written.

    pandas 3 does this by default (and deprecates the option); pandas 2's
    default parser can be off by one unit in the last place.
    """
    return {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def read_sample_submission(path: Path | str) -> tuple[list[str], list[str]]:
    """Read ``sample_submission.csv``: the test fnames in row order and the classes in column order.

    A missing or empty file, a first column other than ``fname``, duplicate or
    empty class names or fnames, and a file without clips are DataErrors
    naming the file and line.
    """
    path = Path(path)
    classes, fnames, _ = label_csv.read_sample_submission(path)
    if not fnames:
        raise DataError("the sample submission lists no test clips; use the "
                        "sample_submission.csv of the dataset", file=path, row=1)
    return fnames, classes


def _check_columns(columns: Sequence[str], classes: Sequence[str], file: Path | str | None) -> None:
    """``fname`` first, then exactly ``classes`` in order; a DataError naming what differs."""
    if FNAME_COLUMN not in columns:
        raise DataError(f"no '{FNAME_COLUMN}' column; the first column must be '{FNAME_COLUMN}'",
                        file=file, row=1)
    if columns[0] != FNAME_COLUMN:
        raise DataError(f"'{FNAME_COLUMN}' must be the first column; it is column "
                        f"{columns.index(FNAME_COLUMN) + 1} (first is {columns[0]!r})", file=file, row=1)
    got = list(columns[1:])
    expected = set(classes)
    missing = [c for c in classes if c not in set(got)]
    if missing:
        raise DataError(f"class column(s) missing, {_some(missing)}; the columns must be those of "
                        "sample_submission.csv", file=file, row=1)
    extra = [c for c in got if c not in expected]
    if extra:
        raise DataError(f"column(s) that are not classes of sample_submission.csv, {_some(extra)}; "
                        "remove them", file=file, row=1)
    seen: set[str] = set()
    for name in got:
        if name in seen:
            raise DataError(f"class column {name!r} appears twice", file=file, row=1)
        seen.add(name)
    for position, (name, want) in enumerate(zip(got, classes), start=2):
        if name != want:
            raise DataError(f"class columns out of order: column {position} is {name!r} where "
                            f"sample_submission.csv has {want!r}; write the classes in "
                            "sample_submission.csv column order", file=file, row=1)


def _check_fnames(fnames: Sequence[str], sample_fnames: Sequence[str], file: Path | str | None) -> None:
    """Exactly the sample's clips, once each, in the sample's order."""
    first_line: dict[str, int] = {}
    for line, name in enumerate(fnames, start=2):
        if name in first_line:
            raise DataError(f"clip {name!r} appears twice (first on line {first_line[name]})",
                            file=file, row=line, value=name)
        first_line[name] = line
    listed = set(sample_fnames)
    missing = [f for f in sample_fnames if f not in first_line]
    if missing:
        raise DataError(f"test clip(s) of sample_submission.csv missing, {_some(missing)}; "
                        "predict every test clip", file=file)
    extra = [f for f in fnames if f not in listed]
    if extra:
        raise DataError(f"clip(s) not in sample_submission.csv, {_some(extra)}; "
                        "remove them or check the test set", file=file)
    for line, (name, want) in enumerate(zip(fnames, sample_fnames), start=2):
        if name != want:
            raise DataError(f"rows out of order: {name!r} where sample_submission.csv has {want!r}; "
                            "write the rows in sample_submission.csv order", file=file, row=line,
                            value=name)


def _score_values(df: "pd.DataFrame", classes: Sequence[str], fnames: Sequence[str],
                  file: Path | str | None, *, unit_interval: bool) -> np.ndarray:
    """The class columns as a finite float64 matrix; a DataError naming the first bad cell."""
    import pandas as pd

    columns = []
    for name in classes:
        column = df[name]
        numeric = pd.to_numeric(column, errors="coerce")
        bad = numeric.isna() & column.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"non-numeric score for class {name!r} of clip {fnames[i]!r}",
                            file=file, row=i + 2, value=column.iloc[i])
        columns.append(numeric.to_numpy(dtype=np.float64))
    values = np.stack(columns, axis=1) if columns else np.zeros((len(df), 0))
    not_finite = ~np.isfinite(values)
    if not_finite.any():
        i, j = np.argwhere(not_finite)[0]
        raise DataError(f"NaN or inf score for class {classes[j]!r} of clip {fnames[i]!r}; "
                        "every score must be a number", file=file, row=int(i) + 2,
                        value=float(values[i, j]))
    if unit_interval:
        outside = (values < 0.0) | (values > 1.0)
        if outside.any():
            i, j = np.argwhere(outside)[0]
            raise DataError(f"score for class {classes[j]!r} of clip {fnames[i]!r} is outside "
                            "[0, 1]; write probabilities", file=file, row=int(i) + 2,
                            value=float(values[i, j]))
    return values


def validate_submission(df: "pd.DataFrame", sample_fnames: Sequence[str], classes: Sequence[str],
                        *, file: Path | str | None = None) -> None:
    """Raise DataError unless ``df`` is a valid submission for this sample.

    Checks, in order: ``fname`` is the first column; the class columns are
    exactly ``classes`` in order (missing, extra, duplicate or out-of-order
    columns are named); the rows are exactly ``sample_fnames`` in order
    (missing and extra clips are named, up to 10 with the count); every score
    is a finite number in [0, 1] (the first bad cell is named by clip, class
    and line). ``file`` only labels the messages.
    """
    columns = [str(c) for c in df.columns]
    _check_columns(columns, classes, file)
    fnames = [str(f) for f in df[FNAME_COLUMN].tolist()]
    _check_fnames(fnames, sample_fnames, file)
    _score_values(df, classes, fnames, file, unit_interval=True)


def write_submission(path: Path | str, fnames: Sequence[str], probs: np.ndarray, *,
                     sample_submission: Path | str) -> Path:
    """Write ``probs`` (rows matching ``fnames``, columns in class order) as a submission CSV.

    Rows are matched to ``sample_submission.csv`` by fname and written in its
    order, so predictions may come in any order. A sample clip without a
    prediction, a prediction for a clip the sample does not list, a shape that
    does not fit, and any value that fails ``validate_submission`` are
    DataErrors; nothing is written then and an existing file at ``path`` is
    left as it was. Returns the path written.
    """
    import pandas as pd

    path = Path(path)
    sample_fnames, classes = read_sample_submission(sample_submission)
    fnames = [str(f) for f in fnames]
    scores = np.asarray(probs, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != (len(fnames), len(classes)):
        raise DataError(f"predictions have shape {scores.shape}; expected [{len(fnames)} clips, "
                        f"{len(classes)} classes] to match the fnames and sample_submission.csv",
                        file=path)
    row_of: dict[str, int] = {}
    for i, name in enumerate(fnames):
        if name in row_of:
            raise DataError(f"clip {name!r} has two rows of predictions ({row_of[name]} and {i})",
                            file=path, value=name)
        row_of[name] = i
    missing = [f for f in sample_fnames if f not in row_of]
    if missing:
        raise DataError(f"no prediction for test clip(s) of {Path(sample_submission).name}, "
                        f"{_some(missing)}; run inference on the whole test set", file=path)
    listed = set(sample_fnames)
    extra = [f for f in fnames if f not in listed]
    if extra:
        raise DataError(f"predictions for clip(s) not in {Path(sample_submission).name}, "
                        f"{_some(extra)}; check that the test set matches the sample submission",
                        file=path)

    ordered = scores[[row_of[f] for f in sample_fnames]]
    df = pd.DataFrame(ordered, columns=list(classes))
    df.insert(0, FNAME_COLUMN, sample_fnames)
    validate_submission(df, sample_fnames, classes, file=path)

    from engine.atomic import atomic_write

    text = df.to_csv(index=False, float_format=None, lineterminator="\n")
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
    return path


def score_submission(path: Path | str, truth_csv: Path | str, classes: Sequence[str]) -> float:
    """LWLRAP of a submission CSV against a ``fname,labels`` ground-truth CSV.

    The submission needs ``fname`` first and exactly ``classes`` as columns in
    order, finite scores, and a row for every clip of the truth (rows for
    other clips are ignored, so a truth file may cover part of the test set).
    Unknown labels in the truth are DataErrors naming its line.
    """
    import pandas as pd

    path = Path(path)
    truth_fnames, truth = label_csv.parse_label_csv(Path(truth_csv), classes)
    if not path.is_file():
        raise DataError("submission file not found", file=path)
    try:
        df = pd.read_csv(path, dtype={FNAME_COLUMN: str}, **_exact_float_parsing(pd))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the submission as CSV ({exc})", file=path) from None
    columns = [str(c) for c in df.columns]
    _check_columns(columns, classes, path)
    fnames = [str(f) for f in df[FNAME_COLUMN].tolist()]
    row_of: dict[str, int] = {}
    for line, name in enumerate(fnames, start=2):
        if name in row_of:
            raise DataError(f"clip {name!r} appears twice (first on line {row_of[name] + 2})",
                            file=path, row=line, value=name)
        row_of[name] = line - 2
    missing = [f for f in truth_fnames if f not in row_of]
    if missing:
        raise DataError(f"no row for clip(s) of {Path(truth_csv).name}, {_some(missing)}",
                        file=path)
    values = _score_values(df, classes, fnames, path, unit_interval=False)
    return lwlrap(truth, values[[row_of[f] for f in truth_fnames]])
