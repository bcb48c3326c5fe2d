"""Documents as records: each JSON Lines line's string field, each Parquet row's text column, with the
located errors a record can raise (a line that is not JSON, a field that is not a string, a column
that is not text). Read streamed: a JSON Lines file a line at a time (decompressed where it is
compressed), a Parquet file a row group at a time in batches of `_BATCH_ROWS` rows (pyarrow is
imported only then)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import BinaryIO

from hepc.data.compressed import open_data
from hepc.data.identity import (
    DataError,
    DataFile,
    open_regular,
    read_error,
)

# --------------------------------------------------------------------------- JSON Lines and Parquet

_BATCH_ROWS = 1024  # Parquet rows converted to Python strings at a time


def record_text(line: str, key: str) -> bytes | None:
    """The UTF-8 text of one JSON Lines line's `key` (None for a blank line); ValueError saying what is wrong."""
    text = record_field(line, key)
    return None if text is None else field_utf8(text, key)


def record_field(line: str, key: str) -> str | None:
    """The string field `key` of one JSON Lines line (None for a blank line); ValueError saying what is wrong.
    No copy of the line is made (a record can be hundreds of MB): JSON allows the line's end as whitespace."""
    if not line or line.isspace():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        column = min(e.pos, len(line.rstrip("\r\n"))) + 1  # a column inside the line, never past its end
        raise ValueError(f"not JSON ({e.msg}: column {column:,})") from None
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    except RecursionError:
        raise ValueError("is nested too deeply to read (arrays or objects inside each other thousands of levels deep)") from None
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object (it is {_json_kind(record)})")
    if key not in record:
        shown = ", ".join(sorted(record)[:8]) + (", ..." if len(record) > 8 else "")
        raise ValueError(f"has no field '{key}' (its fields: {shown or 'none'})")
    text = record[key]
    if not isinstance(text, str):
        raise ValueError(f"field '{key}' is not a string (it is {_json_kind(text)})")
    return text


def field_utf8(text: str, key: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"field '{key}' is not text: {e.reason} at character {e.start:,}") from None


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "an array" if isinstance(value, list) else "an object"


def jsonl_records(file: DataFile, key: str, encoding: str, field: str) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, UTF-8 text of field `key`) of every non-blank line of a JSON Lines file.

    A line that is not a JSON object with a string `key` is a DataError naming the file and the line,
    located at the `paths` entry that listed the file; one that does not decode, at `encoding`."""
    n = 0
    try:
        with open_data(file.path) as f:
            lines = io.TextIOWrapper(f, encoding=encoding, errors="strict", newline="\n")  # lines end at \n only
            try:
                while True:
                    try:
                        line = lines.readline()
                    except UnicodeError as e:
                        reason = e.reason if isinstance(e, UnicodeDecodeError) else str(e)
                        what = f"{f.compression}-decompressed " if f.compression else ""
                        raise DataError(f"cannot decode {what}'{file.name}' as {encoding}: {reason} in line {n + 1:,}",
                                        f"{field}.encoding") from None
                    if not line:
                        return
                    n += 1
                    try:  # one record at a time, each copy dropped before the next is made (line, field, bytes)
                        field_text = record_field(line, key)
                        line = None
                        text = None if field_text is None else field_utf8(field_text, key)
                        field_text = None
                    except ValueError as e:
                        raise DataError(f"'{file.name}' line {n:,}: {e}", file.where) from None
                    if text is not None:
                        yield n, text
            finally:
                lines.detach()  # `f` is closed by its own `with`
    except OSError as e:
        raise read_error(file, e) from None


def parquet_file(file: DataFile, f: BinaryIO, column: str):
    """The open `pyarrow.parquet.ParquetFile` of `f`, checked to hold a string column `column`; else a DataError
    naming the file, located at the `paths` entry that listed it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"'{file.name}' is not a Parquet file ({_first_line(e)})", file.where) from None
    schema = pf.schema_arrow
    if column not in schema.names:
        shown = ", ".join(schema.names[:8]) + (", ..." if len(schema.names) > 8 else "")
        raise DataError(f"'{file.name}' has no column '{column}' (its columns: {shown or 'none'})", file.where)
    kind = schema.field(column).type
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not (pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_string_view(value)):
        raise DataError(f"'{file.name}' column '{column}' is not a string column (it holds {kind})", file.where)
    return pf


def parquet_rows(file: DataFile, column: str) -> Iterator[tuple[int, bytes]]:
    """(row number from 0, UTF-8 text) of every row of a Parquet file's string `column`, a row group at a
    time in batches of `_BATCH_ROWS` rows (never the whole file in memory). A null is a DataError naming
    the file, the row group and the row; so is a file that is not Parquet or lacks the column."""
    import pyarrow as pa

    row = 0
    try:
        with open_regular(file.path) as f:
            check_not_compressed(file, f)
            pf = parquet_file(file, f, column)
            for group in range(pf.num_row_groups):
                try:
                    batches = pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=[group], columns=[column])
                    for batch in batches:
                        values = batch.column(0)
                        if pa.types.is_dictionary(values.type):
                            values = values.dictionary_decode()
                        if values.null_count:
                            first = row + values.is_null().to_pylist().index(True)
                            raise DataError(f"'{file.name}' row group {group}, row {first:,}: column '{column}' is null", file.where)
                        for text in values.to_pylist():
                            yield row, text.encode("utf-8")
                            row += 1
                except (pa.ArrowException, ValueError) as e:
                    raise DataError(f"'{file.name}' row group {group}: cannot read column '{column}' ({_first_line(e)})", file.where) from None
    except OSError as e:
        raise read_error(file, e) from None


def check_not_compressed(file: DataFile, f: BinaryIO) -> None:
    """A DataError for a Parquet file compressed whole (Parquet is read as it is: it compresses its own pages)."""
    from hepc.data.compressed import sniff_file

    compression = sniff_file(f)
    if compression is not None:
        raise DataError(f"'{file.name}' is a {compression}-compressed file: Parquet files are read as they are (Parquet "
                        "compresses its own pages); decompress it first", file.where)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
