"""Rows from where data lives (parquet, CSV/TSV, JSON(L), a Hugging Face dataset) as Examples.

Readers, and why each: parquet through pyarrow directly (`ParquetFile.iter_batches` streams row groups,
where `datasets` would first copy the file into its arrow cache); CSV/TSV through the stdlib `csv` module
(every cell stays the text it is: a loader that infers types turns "42" into a number and an empty cell
into NaN, which then fail the string check); `hf:` sources through `datasets`, streaming, so a large
split is converted as it arrives. Rows are numbered from 1 (a CSV's header is not a row); JSONL keeps
its line numbers. A `--map` names, per target field, the source column that fills it.
"""

from __future__ import annotations

import csv
import importlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

from tunesmith.data.formats import FORMATS, META_KEYS, Example, Problem, parse_record, type_name
from tunesmith.data.reader import BOM, MAX_LINE_BYTES, iter_raw, looks_like_json_array, open_checked
from tunesmith.errors import DataError, FormatError, UsageError, one_line

HF = "hf:"
EXTRA = "tunesmith[data]"
PARQUET_MAGIC = b"PAR1"
DELIMITERS = {".csv": ",", ".tsv": "\t"}

#: per format a --map can fill: its fields, the required ones first
MAP_FIELDS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "output", "input", "system"),
    "prompt_completion": ("prompt", "completion", "system"),
    "messages": ("user", "assistant", "system"),
}
REQUIRED = {"instruction": ("instruction", "output"), "prompt_completion": ("prompt", "completion"),
            "messages": ("user", "assistant")}
MAP_EXAMPLE = "--map instruction=question,output=answer"
#: column names that usually hold a prompt or an answer, for the --map a user is offered
_PROMPTISH = ("instruction", "question", "prompt", "query", "input", "problem", "text", "source")
_ANSWERISH = ("output", "answer", "response", "completion", "solution", "target", "label")


@dataclass(frozen=True)
class ColumnMap:
    format: str
    fields: dict[str, str]  # target field -> source column


@dataclass
class Table:
    label: str  # the source as the user named it
    columns: list[str]
    rows: Iterator[tuple[int, dict[str, Any] | Problem]]  # a Problem where a line is no row at all
    unit: str = "row"  # what a problem's number counts: "row", or "line" for JSONL


def is_table(source: str) -> bool:
    """Whether `source` is read as a table (not as the JSONL convert has always read)."""
    if source.startswith(HF):
        return True
    path = Path(source)
    if path.suffix.lower() in DELIMITERS or path.suffix.lower() in (".parquet", ".pq"):
        return True
    if not path.is_file():
        return False  # a stream is read once, and only as JSONL
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == PARQUET_MAGIC
    except OSError:
        return False  # the JSONL reader says what is wrong with it


def parse_map(text: str) -> ColumnMap:
    """`instruction=question,output=answer` as a ColumnMap, or a UsageError that says what to write."""
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        field, eq, column = (s.strip() for s in item.partition("="))
        if not eq or not field or not column:
            raise UsageError(f"--map: {item!r} is not FIELD=COLUMN",
                             f"write it as {MAP_EXAMPLE}: format fields on the left, your columns on the right")
        if field in pairs:
            raise UsageError(f"--map names {field!r} twice", f"give each field one column, as in {MAP_EXAMPLE}")
        pairs[field] = column
    fits = [fmt for fmt, fields in MAP_FIELDS.items() if set(pairs) <= set(fields)]
    known = {f for fields in MAP_FIELDS.values() for f in fields}
    if unknown := [f for f in pairs if f not in known]:
        raise UsageError(f"--map: {', '.join(map(repr, unknown))} is not a field of any format", _fields_hint())
    fmt = next((f for f in fits if set(REQUIRED[f]) <= set(pairs)), None)
    if fmt is None:
        if not fits:
            raise UsageError(f"--map mixes fields of different formats ({', '.join(pairs)})", _fields_hint())
        missing = [f for f in REQUIRED[fits[0]] if f not in pairs]
        raise UsageError(f"--map for the {fits[0]} format needs {' and '.join(missing)}",
                         f"add {','.join(f + '=COLUMN' for f in missing)}; " + _fields_hint())
    return ColumnMap(fmt, pairs)


def _fields_hint() -> str:
    return "the fields are " + "; ".join(f"{', '.join(fields)} ({fmt})" for fmt, fields in MAP_FIELDS.items())


def suggest_map(columns: list[str]) -> str:
    """An example --map built from the columns there: the likeliest prompt and answer columns."""
    def pick(names: tuple[str, ...], avoid: str | None) -> str | None:
        lower = {c.lower(): c for c in columns if c != avoid}
        return next((lower[n] for n in names if n in lower), None)

    prompt = pick(_PROMPTISH, None) or (columns[0] if columns else "COLUMN")
    rest = [c for c in columns if c != prompt]
    answer = pick(_ANSWERISH, prompt) or (rest[0] if rest else "COLUMN")
    return f"--map instruction={prompt},output={answer}"


def table_examples(source: str, column_map: str | None, split: str) -> Table:
    """The source's rows as a Table whose rows are not read yet, after the checks that need no rows:
    the map names columns that exist, there is at least one row, and without a map the columns are a format's."""
    cmap = parse_map(column_map) if column_map is not None else None
    table = _open(source, split)
    first = next(table.rows, None)
    if first is None:
        where = f" (columns: {', '.join(table.columns)})" if table.columns else ""
        raise FormatError(f"{table.label}: has no rows{where}", "check that this is the file you meant; nothing was written")
    table.rows = itertools.chain([first], table.rows)
    if not table.columns and isinstance(first[1], dict):  # a stream that does not declare its features: the first row's keys
        table.columns = list(first[1])
    if cmap is not None:
        if missing := [c for c in cmap.fields.values() if c not in table.columns]:
            raise UsageError(f"--map: {table.label} has no column {', '.join(map(repr, missing))}",
                             f"columns there: {', '.join(table.columns)}")
    elif not any(f.matches(dict.fromkeys(table.columns)) for f in FORMATS.values()):
        raise FormatError(f"{table.label}: no column is a format's field (columns: {', '.join(table.columns)})",
                          f"map them with --map, e.g. {suggest_map(table.columns)}")
    return Table(table.label, table.columns, _examples(table, cmap), table.unit)


def _examples(table: Table, cmap: ColumnMap | None) -> Iterator[Example]:
    for n, row in table.rows:
        if isinstance(row, Problem):
            yield Example(n, "?", [], 0, [row])
        elif cmap is None:
            yield parse_record(row, n)
        else:
            record, problems = mapped_record(cmap, row)
            yield Example(n, "?", [], 0, problems) if problems else parse_record(record, n)


def mapped_record(cmap: ColumnMap, row: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """The record in cmap's format that the row's mapped columns make, or the problems of its values."""
    values: dict[str, str] = {}
    problems: list[Problem] = []
    for field, column in cmap.fields.items():
        value = row.get(column)
        if value is None and field not in REQUIRED[cmap.format]:
            continue  # an optional field (input, system) may be empty
        if not isinstance(value, str):
            what = "has no value" if value is None else f"is {type_name(value)}"
            problems.append(Problem("content_type", f"column {column!r} ({field}) {what}; it must be a string", column))
            continue
        values[field] = value
    meta = {k: row[k] for k in META_KEYS if row.get(k) is not None and k not in cmap.fields.values()}
    if cmap.format != "messages":
        return {**values, **meta}, problems
    turns = [{"role": role, "content": values[role]} for role in ("system", "user", "assistant")
             if role in values and (role != "system" or values[role].strip())]  # a blank system means none
    return {"messages": turns, **meta}, problems


# --- opening each kind of source -------------------------------------------------------------------------------

def _need(module: str, what: str) -> ModuleType:
    package = module.partition(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"reading {what} needs the {package} package, which is not installed",
                        f"pip install '{EXTRA}' (or pip install {package})") from None


def _open(source: str, split: str) -> Table:
    if source.startswith(HF):
        return _hf(source, split)
    path = Path(source)
    if path.suffix.lower() in DELIMITERS:
        return _csv(open_checked(path), source, DELIMITERS[path.suffix.lower()])
    if is_table(source):
        return _parquet(path, source)
    return _jsonl(open_checked(path), source)


def _parquet(path: Path, label: str) -> Table:
    pq = _need("pyarrow.parquet", "parquet")
    if not path.is_file():
        open_checked(path)  # a missing file or a directory: the usual message
        raise DataError(f"{label}: parquet cannot be read from a stream", "save it to a file first")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid or OSError for a file it cannot read
        raise DataError(f"{label}: not a readable parquet file ({one_line(exc)})",
                        "convert it from its source again, or export it as CSV or JSONL") from None

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        n = itertools.count(1)
        for batch in pf.iter_batches(batch_size=512):  # one batch in memory at a time
            for row in batch.to_pylist():
                yield next(n), row

    return Table(label, list(pf.schema_arrow.names), rows())


def _csv(path: Path, label: str, delimiter: str) -> Table:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))  # an answer can be longer than 128 KB
    fh = open(path, "rb")
    reader = csv.reader(_text_lines(fh, label), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader, [])]
    except (DataError, csv.Error) as exc:
        fh.close()
        raise _csv_error(label, reader.line_num, exc) from None

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        with fh:
            n = 0
            try:
                for cells in reader:
                    if not any(c.strip() for c in cells):
                        continue  # a blank line
                    n += 1
                    if len(cells) > len(header):  # an unquoted delimiter inside a cell: the text would shift
                        yield n, Problem("csv_cells", f"{len(cells)} cells, the header has {len(header)} "
                                         f"(CSV line {reader.line_num})",
                                         hint="quote cells that contain the delimiter (a spreadsheet's CSV export does)")
                        continue
                    yield n, dict(itertools.zip_longest(header, cells))
            except csv.Error as exc:
                raise _csv_error(label, reader.line_num, exc) from None

    return Table(label, header, rows())


def _text_lines(fh: BinaryIO, label: str) -> Iterator[str]:
    """Decoded line by line, so a bad byte is named by its line (a text file's decoder reads ahead in chunks)."""
    for n, raw in enumerate(fh, start=1):
        try:
            yield (raw.removeprefix(BOM) if n == 1 else raw).decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{label}:{n}: not UTF-8 text", "re-save the file as UTF-8 (a spreadsheet's CSV UTF-8 export)") from None


def _csv_error(label: str, line: int, exc: Exception) -> DataError:
    if isinstance(exc, DataError):
        return exc
    return DataError(f"{label}:{line}: {exc}", "check the quoting near that line; every quoted cell needs its closing quote")


def _jsonl(path: Path, label: str) -> Table:
    """JSONL (or one JSON array) with --map: its columns are the keys any object row has."""
    if looks_like_json_array(path):
        try:
            items = json.loads(path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            items = None
        if isinstance(items, list):
            return _keyed(label, list(enumerate(items, start=1)), "row")
    rows = [(r.line, r.value if r.error is None else Problem(*r.error, hint=r.hint)) for r in iter_raw(path)]
    return _keyed(label, rows, "line")


def _keyed(label: str, items: list[tuple[int, Any]], unit: str) -> Table:
    columns = list(dict.fromkeys(k for _, v in items if isinstance(v, dict) for k in v))

    def rows() -> Iterator[tuple[int, dict[str, Any] | Problem]]:
        for n, value in items:
            if isinstance(value, (dict, Problem)):
                yield n, value
            else:
                yield n, Problem("not_an_object", f"{unit} is a JSON {type(value).__name__}, expected an object")

    return Table(label, columns, rows(), unit)


def parse_hf(source: str) -> tuple[str, str | None]:
    """hf:ORG/NAME[:CONFIG] as (ORG/NAME, CONFIG)."""
    name, _, config = source[len(HF):].partition(":")
    if not name.strip("/") or name.count("/") > 1 or " " in name:
        raise UsageError(f"{source!r} is not hf:ORG/NAME[:CONFIG]", "name a dataset as on the Hub, e.g. hf:tatsu-lab/alpaca")
    return name, config or None


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the Hub's clients raise when there is no network: the builtin's, httpx's, huggingface_hub's offline mode."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:
        pass
    try:
        from huggingface_hub.errors import OfflineModeIsEnabled

        errors.append(OfflineModeIsEnabled)
    except ImportError:
        pass
    return tuple(errors)


def _hf(source: str, split: str) -> Table:
    name, config = parse_hf(source)
    datasets = _need("datasets", "hf: datasets")
    unreachable = _network_errors()
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except unreachable:
        raise DataError(f"{source}: the Hugging Face Hub is unreachable (offline, or no network)",
                        "download the dataset's parquet, CSV or JSONL file where there is network, "
                        "then convert it here: tunesmith convert FILE -o data.jsonl") from None
    except datasets.exceptions.DatasetNotFoundError as exc:
        raise DataError(f"{source}: {one_line(exc)}", "check the name on the Hub; a gated dataset needs `hf auth login`") from None
    except ValueError as exc:  # an unknown split or config: datasets lists the ones there are
        raise UsageError(f"{source}: {one_line(exc)}", "pass one of the splits (--split) or configs (hf:ORG/NAME:CONFIG) it names") from None

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        n = 0
        try:
            for n, row in enumerate(ds, start=1):
                yield n, row
        except unreachable:
            raise DataError(f"{source}: the Hugging Face Hub stopped answering after row {n}",
                            "run it again, or download the dataset's file and convert it locally") from None

    return Table(source, list(ds.column_names or []), rows())
