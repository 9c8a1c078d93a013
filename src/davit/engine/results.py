"""The result files of ``davit predict --out``: JSON lines or CSV, one image per line.

Each line is written and flushed as soon as its image is done, so that an interrupted run keeps
every finished result and ``--resume`` can carry on from the paths the file already holds.

``--resume`` counts only results as done: an image whose line is an error (it could not be read
last time) is classified again. Before appending, the file is rewritten without its error lines
(into a temporary file beside it, then renamed over it, so that a crash leaves either the old or
the new file whole). Appending the retry after the old error line instead would leave two lines
for one image and make every reader pick "the last one"; rewriting keeps the file's promise of
exactly one line per image.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from ..errors import InvalidArgumentError
from ..records import error_message

FORMATS = (".jsonl", ".csv")
CSV_COLUMNS = ("image", "pred_label", "pred_class", "pred_score", "topk_labels", "topk_scores",
               "error")
OLD_CSV_COLUMNS = ("path", *CSV_COLUMNS[1:])  # earlier versions named the first column "path"
CSV_SEPARATOR = ";"  # between the k labels (and scores) of one cell


class ResultSink(Protocol):
    """Where per-image prediction records (:mod:`davit.records`, with ``image``) go."""

    def write(self, record: dict) -> None: ...

    def close(self) -> None: ...


class ResultFile(ABC):
    """Writes each record as one line and flushes it. A fresh file replaces the old one only at
    the first record, so that a run that fails before any result leaves an earlier file intact."""

    header: str | None = None

    def __init__(self, file: IO[str], fresh: bool) -> None:
        self.file = file
        self.fresh = fresh

    def write(self, record: dict) -> None:
        line = self.line(record)
        try:
            if self.fresh:
                self.file.truncate(0)
                if self.header:
                    self.file.write(self.header)
                self.fresh = False
            self.file.write(line)
            self.file.flush()
        except OSError as error:  # a full disk, a removed mount: the lines written so far are whole
            raise InvalidArgumentError(f"cannot write to {self.file.name} ({error.strerror or error}); the results "
                                       "written so far are kept: free space and run the same command with "
                                       "--resume") from None

    @abstractmethod
    def line(self, record: dict) -> str:
        """The record as one line of the file, newline included."""

    def close(self) -> None:
        self.file.close()


class JsonLinesFile(ResultFile):
    """One JSON object per line."""

    def line(self, record: dict) -> str:
        return json.dumps(record) + "\n"


class CsvFile(ResultFile):
    """A header and one row per image; the top-k labels and scores are ``;``-joined in one cell
    each, and an error is its message."""

    header = ",".join(CSV_COLUMNS) + "\n"

    def line(self, record: dict) -> str:
        topk = record.get("topk", [])
        row = [record["image"], record.get("pred_label", ""), record.get("pred_class", ""),
               record.get("pred_score", ""), CSV_SEPARATOR.join(str(t["label"]) for t in topk),
               CSV_SEPARATOR.join(repr(t["score"]) for t in topk),
               error_message(record) if "error" in record else ""]
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(row)
        return text.getvalue()


def check_writable(folder: str | Path, option: str) -> None:
    """Refuse, before any work, an output folder that cannot be created or written (a read-only
    place, a file in the way), so that a long run never fails at its end and loses its results."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise InvalidArgumentError(f"{option}: cannot write in {folder} ({error.strerror or error}); give a "
                                   "writable location") from None


def check_format(out: str) -> None:
    """Refuse an output name whose suffix says neither JSON lines nor CSV."""
    if Path(out).suffix.lower() not in FORMATS:
        raise InvalidArgumentError(f"--out {out}: the name must end in .jsonl (JSON lines) or "
                                   ".csv")


def open_results(out: str, resume: bool) -> tuple[ResultSink, set[str]]:
    """The writer for ``out`` and the paths it already holds results for (with ``resume``, which
    drops the file's error lines, so that those images are classified again, and appends to the
    file) or an empty set (the file is started afresh). Fails here, before any model is
    built, when the file cannot be written."""
    check_format(out)
    path = Path(out)
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"--out {out}: the folder {path.parent} does not exist; "
                                   "create it first")
    done = _done_paths(path) if resume and path.is_file() else set()
    try:
        # the writer owns the file, and closes it when the run ends
        file = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as error:
        raise InvalidArgumentError(f"--out {out}: cannot write it ({error.strerror})") from None
    kind = CsvFile if path.suffix.lower() == ".csv" else JsonLinesFile
    return kind(file, fresh=not resume or file.tell() == 0), done


def writer_file(out: str | Path) -> Path:
    """The file beside ``out`` that records which model wrote it (a hidden ``.<name>.model``)."""
    out = Path(out)
    return out.with_name(f".{out.name}.model")


def record_writer(out: str | Path, identity: str, resume: bool) -> None:
    """Record that the model ``identity`` writes ``out``; resuming, refuse a file another model
    wrote (its results would be mixed with this one's in one file)."""
    marker = writer_file(out)
    if resume and marker.is_file():
        earlier = marker.read_text(encoding="utf-8").strip()
        if earlier and earlier != identity:
            raise InvalidArgumentError(f"--resume: {out} holds results of another model (fingerprint {earlier}, "
                                       f"this one is {identity}); resume with the model that wrote it, or "
                                       "give a new --out")
    try:
        marker.write_text(identity + "\n", encoding="utf-8")
    except OSError as error:
        raise InvalidArgumentError(f"--out {out}: cannot write {marker} ({error.strerror})") from None


def _done_paths(path: Path) -> set[str]:
    """The paths ``path`` holds results for. A last line cut short by a killed run is removed, so
    that appending starts on a line of its own, and error lines are removed (atomically, see the
    module's docstring), so that their images are retried and the file keeps one line per
    image."""
    read: Callable[[IO[str], Path], tuple[set[str], list[str], bool]] = \
        _csv_paths if path.suffix.lower() == ".csv" else _jsonl_paths
    try:
        _drop_partial_line(path)
        with open(path, encoding="utf-8", newline="") as file:
            done, kept, had_errors = read(file, path)
        if had_errors:
            _replace(path, kept)
        return done
    except OSError as error:
        raise InvalidArgumentError(f"--resume: cannot update {path} ({error.strerror})") from None


def _replace(path: Path, lines: list[str]) -> None:
    """Write ``lines`` to a temporary file beside ``path`` and rename it over ``path``."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.writelines(lines)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _drop_partial_line(path: Path) -> None:
    with open(path, "rb+") as file:
        data = file.read()
        if data and not data.endswith(b"\n"):
            file.truncate(data.rfind(b"\n") + 1)


def _jsonl_paths(file: IO[str], path: Path) -> tuple[set[str], list[str], bool]:
    """The paths with results, the lines to keep (the results) and whether any line was an
    error."""
    done = set()
    kept = []
    had_errors = False
    for number, line in enumerate(file, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        image = record.get("image", record.get("path")) if isinstance(record, dict) else None
        if not isinstance(image, str):
            raise InvalidArgumentError(f"--resume: {path} line {number} is not a davit predict "
                                       "result; pass the file an earlier run wrote, or drop "
                                       "--resume to start it afresh")
        if "error" in record:
            had_errors = True
        elif image not in done:
            done.add(image)
            kept.append(line)
    return done, kept, had_errors


def _csv_paths(file: IO[str], path: Path) -> tuple[set[str], list[str], bool]:
    """As :func:`_jsonl_paths`; the header is kept."""
    lines = file.readlines()
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return set(), [], False
    if tuple(header) not in (CSV_COLUMNS, OLD_CSV_COLUMNS):
        raise InvalidArgumentError(f"--resume: {path} does not have the columns davit predict "
                                   f"writes ({','.join(CSV_COLUMNS)}); pass the file an earlier "
                                   "run wrote, or drop --resume to start it afresh")
    error_column = CSV_COLUMNS.index("error")
    done: set[str] = set()
    kept = [lines[0]]
    had_errors = False
    for row in reader:
        if not row:
            continue
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow(row)
        if len(row) > error_column and row[error_column]:
            had_errors = True
        elif row[0] not in done:
            done.add(row[0])
            kept.append(text.getvalue())
    return done, kept, had_errors
