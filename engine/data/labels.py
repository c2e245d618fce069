"""Class list and label CSVs in the FSDKaggle2019 format.

The class order everywhere in fsat-console is the column order of
``sample_submission.csv``. Label CSVs have the columns ``fname,labels``; a clip
with several labels lists them comma-separated inside one quoted field, e.g.
``abc.wav,"Bark,Walk_and_footsteps"``.

The CSVs are read with the ``csv`` module rather than pandas so that every
error can name the physical line of the file (the header is line 1).
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from engine.errors import DataError

FSD2019_CLASSES: tuple[str, ...] = (
    "Accelerating_and_revving_and_vroom", "Accordion", "Acoustic_guitar", "Applause", "Bark",
    "Bass_drum", "Bass_guitar", "Bathtub_(filling_or_washing)", "Bicycle_bell",
    "Burping_and_eructation", "Bus", "Buzz", "Car_passing_by", "Cheering",
    "Chewing_and_mastication", "Child_speech_and_kid_speaking", "Chink_and_clink",
    "Chirp_and_tweet", "Church_bell", "Clapping", "Computer_keyboard", "Crackle", "Cricket",
    "Crowd", "Cupboard_open_or_close", "Cutlery_and_silverware", "Dishes_and_pots_and_pans",
    "Drawer_open_or_close", "Drip", "Electric_guitar", "Fart", "Female_singing",
    "Female_speech_and_woman_speaking", "Fill_(with_liquid)", "Finger_snapping", "Frying_(food)",
    "Gasp", "Glockenspiel", "Gong", "Gurgling", "Harmonica", "Hi-hat", "Hiss", "Keys_jangling",
    "Knock", "Male_singing", "Male_speech_and_man_speaking", "Marimba_and_xylophone",
    "Mechanical_fan", "Meow", "Microwave_oven", "Motorcycle", "Printer", "Purr",
    "Race_car_and_auto_racing", "Raindrop", "Run", "Scissors", "Screaming", "Shatter", "Sigh",
    "Sink_(filling_or_washing)", "Skateboard", "Slam", "Sneeze", "Squeak", "Stream", "Strum",
    "Tap", "Tick-tock", "Toilet_flush", "Traffic_noise_and_roadway_noise",
    "Trickle_and_dribble", "Walk_and_footsteps", "Water_tap_and_faucet", "Waves_and_surf",
    "Whispering", "Writing", "Yell", "Zipper_(clothing)",
)
assert len(FSD2019_CLASSES) == 80 and len(set(FSD2019_CLASSES)) == 80

FNAME_COLUMN = "fname"
LABELS_COLUMN = "labels"


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (first physical line number, fields) for every non-blank CSV record.

    A quoted field may span lines, so the record's line is the one it starts on.
    Undecodable bytes and broken quoting become DataErrors naming the line.
    """
    if not path.is_file():
        raise DataError("file not found; check the dataset folder", file=path)
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            next_line = 1
            while True:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    # The parser gives up where it noticed, often at the end of the
                    # file; blame the line holding the quote that never closed.
                    open_quote = _unclosed_quote_line(path, next_line)
                    if open_quote is not None:
                        raise DataError("a quote opened on this line is never closed; close it or remove it",
                                        file=path, row=open_quote) from None
                    raise DataError(f"malformed CSV ({exc}); check the quoting on this line",
                                    file=path, row=next_line) from None
                line, next_line = next_line, reader.line_num + 1
                if not fields or all(not f.strip() for f in fields):
                    continue
                yield line, fields
    except UnicodeDecodeError:
        raise DataError("cannot read the CSV as UTF-8 text; save it as a UTF-8 CSV",
                        file=path, row=_first_undecodable_line(path)) from None
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror or exc})", file=path) from None


def _unclosed_quote_line(path: Path, start_line: int) -> int | None:
    """The line of the quote that is still open at the end of the file, reading from ``start_line``.

    Only quotes that open a field count (at the start of a field, as the CSV
    dialect reads them); a doubled quote inside a quoted field is an escape.
    """
    text = path.read_text(encoding="utf-8-sig")
    lines = text.split("\n")
    body = "\n".join(lines[start_line - 1:])
    line = start_line
    quoted_from: int | None = None
    at_field_start = True
    i = 0
    while i < len(body):
        ch = body[i]
        if quoted_from is not None:
            if ch == '"':
                if body[i + 1:i + 2] == '"':
                    i += 1  # an escaped quote
                else:
                    quoted_from = None
                    at_field_start = False
        elif ch == '"' and at_field_start:
            quoted_from = line
        else:
            at_field_start = ch in ",\n\r"
        if ch == "\n":
            line += 1
        i += 1
    return quoted_from


def _first_undecodable_line(path: Path) -> int | None:
    """Return the 1-based line holding the first byte that is not valid UTF-8."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return raw[:exc.start].count(b"\n") + 1
    return None


def _class_header(path: Path, rows: Iterator[tuple[int, list[str]]]) -> list[str]:
    """Validate the header of a sample submission and return its class columns."""
    try:
        _, header = next(rows)
    except StopIteration:
        raise DataError("the CSV is empty; expected a header 'fname,<class 1>,<class 2>,...'",
                        file=path, row=1) from None
    header = [h.strip() for h in header]
    if header[0] != FNAME_COLUMN:
        raise DataError(f"the first column must be '{FNAME_COLUMN}', found {header[0]!r}; "
                        "use the sample_submission.csv of the dataset", file=path, row=1)
    classes = header[1:]
    if not classes:
        raise DataError("no class columns after 'fname'", file=path, row=1)
    seen: set[str] = set()
    for position, name in enumerate(classes, start=2):
        if not name:
            raise DataError(f"column {position} has an empty class name", file=path, row=1)
        if name in seen:
            raise DataError(f"class {name!r} appears twice in the header", file=path, row=1)
        seen.add(name)
    return classes


def read_classes(sample_submission_csv: Path) -> list[str]:
    """Return the class names of a ``sample_submission.csv``: its columns after ``fname``.

    A missing or empty file, a first column other than ``fname``, and empty or
    duplicate class names are DataErrors naming the file.
    """
    path = Path(sample_submission_csv)
    rows = _rows(path)
    try:
        return _class_header(path, rows)
    finally:
        rows.close()


def read_sample_submission(path: Path) -> tuple[list[str], list[str], list[int]]:
    """Read ``sample_submission.csv``: return (classes in column order, test fnames, their lines).

    Besides the header checks of :func:`read_classes`, empty or duplicate
    fnames are DataErrors naming the line. The score columns are not read:
    a sample submission holds placeholders only.
    """
    path = Path(path)
    rows = _rows(path)
    classes = _class_header(path, rows)
    fnames: list[str] = []
    lines: list[int] = []
    first_line: dict[str, int] = {}
    for line, fields in rows:
        fname = fields[0].strip()
        if not fname:
            raise DataError("empty fname", file=path, row=line)
        if fname in first_line:
            raise DataError(f"fname {fname!r} already listed on line {first_line[fname]}",
                            file=path, row=line)
        first_line[fname] = line
        fnames.append(fname)
        lines.append(line)
    return classes, fnames, lines


def parse_label_rows(path: Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray, list[int]]:
    """Like :func:`parse_label_csv`, and also return the file line of every clip.

    The line numbers let callers point at the CSV row of a clip whose audio
    turns out to be missing or corrupt.
    """
    path = Path(path)
    index = {name: i for i, name in enumerate(classes)}
    rows = _rows(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise DataError("the CSV is empty; expected a header 'fname,labels' and one row per clip",
                        file=path, row=1) from None
    header = [h.strip() for h in header]
    missing = [c for c in (FNAME_COLUMN, LABELS_COLUMN) if c not in header]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; the header must be "
                        f"'fname,labels' (found {','.join(header)!r})", file=path, row=1)
    fname_at, labels_at = header.index(FNAME_COLUMN), header.index(LABELS_COLUMN)
    width = len(header)

    fnames: list[str] = []
    lines: list[int] = []
    hot_rows: list[int] = []
    hot_cols: list[int] = []
    first_line: dict[str, int] = {}
    for line, fields in rows:
        if len(fields) > width:
            raise DataError(f"{len(fields)} fields where the header has {width}; a clip with "
                            'several labels needs them quoted: abc.wav,"Bark,Walk_and_footsteps"',
                            file=path, row=line)
        if len(fields) < width:
            raise DataError(f"{len(fields)} field(s) where the header has {width}; "
                            "each row needs a fname and its labels", file=path, row=line)
        fname = fields[fname_at].strip()
        if not fname:
            raise DataError("empty fname", file=path, row=line)
        if fname in first_line:
            raise DataError(f"fname {fname!r} already listed on line {first_line[fname]}",
                            file=path, row=line)
        text = fields[labels_at].strip()
        if not text:
            raise DataError(f"clip {fname!r} has no labels; every clip needs at least one",
                            file=path, row=line)
        row_index = len(fnames)
        for label in (part.strip() for part in text.split(",")):
            if not label:
                raise DataError(f"empty label in {text!r} (a doubled or trailing comma)",
                                file=path, row=line)
            column = index.get(label)
            if column is None:
                close = difflib.get_close_matches(label, list(classes), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise DataError(f"unknown label {label!r}: not one of the {len(classes)} classes "
                                f"(the class list comes from the columns of "
                                f"sample_submission.csv).{hint}", file=path, row=line)
            hot_rows.append(row_index)
            hot_cols.append(column)
        first_line[fname] = line
        fnames.append(fname)
        lines.append(line)
    if not fnames:
        raise DataError("the CSV has a header but no clips", file=path, row=1)
    Y = np.zeros((len(fnames), len(classes)), dtype=np.float32)
    Y[hot_rows, hot_cols] = 1.0
    return fnames, Y, lines


def parse_label_csv(path: Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Read a ``fname,labels`` CSV into fnames and a float32 multi-hot matrix [n, C].

    Columns of the matrix follow ``classes``. Unknown or empty labels,
    duplicate fnames, rows with too many or too few fields, an empty file and
    an unreadable file are DataErrors naming the file and the 1-based line
    (header = line 1). Extra named header columns (such as ``usage``) are ignored.
    """
    fnames, Y, _ = parse_label_rows(path, classes)
    return fnames, Y


def labels_to_text(y: np.ndarray, classes: Sequence[str]) -> str:
    """Format one multi-hot row as the comma-separated label field of a label CSV."""
    return ",".join(classes[i] for i in np.flatnonzero(np.asarray(y) > 0.5))
