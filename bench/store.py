"""The results store: JSON Lines, one object per case, appended atomically, loaded into pandas.

A row is written with a single `os.write` of one whole line to a file opened with O_APPEND,
then fsync'ed, so a `kill -9` at any moment leaves either the whole row or none of it. Should a
line ever be torn anyway (a full disk), `load` skips it and the next `append` starts on a new
line, so the rows after it stay readable.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import warnings
from pathlib import Path

import pandas as pd

DEFAULT_PATH = Path("results") / "results.jsonl"

STATUSES = ("ok", "disagrees", "error", "timeout", "oom", "not_applicable", "skipped")

# The columns every row has, in this order (reports and asv rely on the names). `tags`: the
# strategy's registry tags, a sorted list (absent from files written before they existed:
# reports derive them from the registry). `features`: the problem's n, m, B, P, W that
# torch.auto's cost model reads (strategies.cost_model), so that `calibrate` can learn from
# rows of a user's model it cannot rebuild.
CASE_COLUMNS = ("run_id", "case_id", "quantity", "problem", "family", "size", "mode", "scale",
                "sizes", "params", "strategy", "framework", "exact", "tags", "features",
                "device", "dtype")
MEASURE_COLUMNS = ("status", "median_s", "iqr_s", "runs", "first_call_s", "forward_s",
                   "peak_mem_bytes", "max_error", "tolerance", "noise_floor", "reference",
                   "message",
                   # issue 16: how median_s was timed ("paired": side by side with the
                   # problem's other ok strategies, bench.paired; "isolated": alone), the
                   # isolated timing kept beside it, the paired rounds and the ratio to the
                   # problem's fastest with its 95% interval; the forward pass forward_s is of
                   # (forward_kind); the first call's peak memory apart from the steady state's.
                   "timing", "isolated_median_s", "isolated_iqr_s", "rounds",
                   "ratio_to_fastest", "ratio_ci_low", "ratio_ci_high", "tied_with_fastest",
                   "fastest", "forward_kind", "first_peak_mem_bytes")
ENV_COLUMNS = ("torch_version", "jax_version", "numpy_version", "python_version", "cpu", "gpu",
               "threads", "commit", "timestamp", "hostname")
COLUMNS = CASE_COLUMNS + MEASURE_COLUMNS + ENV_COLUMNS


def case_id(quantity: str, problem_id: str, strategy: str, device: str, dtype: str) -> str:
    """A case's identity: what `--resume` compares."""
    return "|".join((quantity, problem_id, strategy, device, dtype))


def _clean(value):
    # NaN has no JSON spelling: it becomes null. An infinite error (a NaN in a result) stays
    # Infinity, which Python's json reads back.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return _clean(value.item())
    return value


def encode(row: dict) -> bytes:
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown result columns {sorted(unknown)}; known: {', '.join(COLUMNS)}")
    if row.get("status") not in STATUSES:
        raise ValueError(f"status {row.get('status')!r} is not one of {', '.join(STATUSES)}")
    full = {c: _clean(row.get(c)) for c in COLUMNS}
    return (json.dumps(full, separators=(",", ":")) + "\n").encode()


def append(path, row: dict) -> None:
    """Append one row atomically: one write of one line with O_APPEND, then fsync."""
    append_rows(path, [row])


def append_rows(path, rows: list[dict]) -> None:
    """Append `rows` atomically, all or none: one write of their lines with O_APPEND, then
    fsync (a cluster sweep appends a problem's rows together, so --resume after a crash
    finds each problem whole or absent)."""
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(encode(row) for row in rows)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # The lock keeps another writer from growing the file between the look at its last
        # byte and our write; the write itself is atomic either way. kill -9 releases it.
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a torn line before us: start a fresh one
        written = os.write(fd, data)
        if written != len(data):  # a full disk; the torn line is skipped by load
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path) -> list[dict]:
    """Every complete, parseable row in file order; torn or corrupt lines are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows, bad = [], 0
    # The last piece is b"" after a final newline, or a torn line without one.
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        if i == len(lines) - 1:
            bad += 1  # no newline: the write that made it never finished
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            bad += 1
    if bad:
        warnings.warn(f"{path}: skipped {bad} torn or corrupt line(s)", stacklevel=2)
    return rows


class BadResults(ValueError):
    """A file that is not a jacbench results file; the message is one line."""


# What makes a line a jacbench row: every results file since the first has these columns.
REQUIRED = ("case_id", "quantity", "status")


def check(path, must_exist: bool = True) -> None:
    """Raise BadResults, one line, unless `path` is a jacbench results file: JSON Lines whose
    first line is a row with the case columns (a torn or corrupt line later is skipped by
    `load`, as after a crash). A path that does not exist is fine unless `must_exist` (a
    sweep starts a new file there)."""
    path = Path(path)
    made = "make one with `python -m jacbench run`"
    if not path.exists():
        if must_exist:
            raise BadResults(f"results file {str(path)!r} does not exist; {made}")
        return
    if not path.is_file():
        kind = "folder" if path.is_dir() else "special file"
        raise BadResults(f"results file {str(path)!r} is a {kind}, not a file; give the "
                         ".jsonl file")
    with path.open("rb") as f:
        first = b""
        for line in f:
            if line.strip():
                first = line
                break
    if not first:
        raise BadResults(f"{str(path)!r} is empty: not a jacbench results file (it would hold "
                         f"one JSON row per case); {made}, or delete it")
    try:
        row = json.loads(first)
    except ValueError:
        text = first[:60].decode(errors="replace").strip()
        raise BadResults(f"{str(path)!r} is not a jacbench results file: its first line is not "
                         f"JSON ({text!r}{'...' if len(first) > 60 else ''}); results are JSON "
                         f"Lines written by `python -m jacbench run`") from None
    missing = [c for c in REQUIRED if not isinstance(row, dict) or c not in row]
    if missing:
        raise BadResults(f"{str(path)!r} is not a jacbench results file: its first row has no "
                         f"{', '.join(missing)} (a jacbench row has {', '.join(REQUIRED)}, "
                         "...); give a file written by `python -m jacbench run`")


def load(path=DEFAULT_PATH, latest: bool = True) -> pd.DataFrame:
    """The results as a DataFrame with the columns of `COLUMNS`.

    A sweep that runs again without --resume appends new rows for the same cases; with
    `latest` (the default) only the last row of each case_id is kept, `latest=False` keeps
    the whole history.
    """
    rows = read_rows(path)
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    if latest and len(df):
        df = df.drop_duplicates("case_id", keep="last").reset_index(drop=True)
    return df


def _tag_set(value) -> frozenset | None:
    if isinstance(value, (list, tuple, set, frozenset)):
        return frozenset(value)
    if isinstance(value, str):  # a CSV round trip: "dense,matrix-free"
        return frozenset(t for t in value.split(",") if t)
    return None  # missing: a row written before rows had tags


def with_tags(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with its `tags` column as frozensets. Rows without tags (files written before
    rows had them) get their strategy's tags from this checkout's registry, or none for a
    strategy it does not register."""
    df = df.copy()
    tags = [_tag_set(v) for v in (df["tags"] if "tags" in df else [None] * len(df))]
    if any(t is None for t in tags):
        from jacbench.strategies.registry import tags_of  # late: imports every strategy

        tags = [frozenset(tags_of(q, s)) if t is None else t
                for t, q, s in zip(tags, df["quantity"], df["strategy"])]
    df["tags"] = pd.Series(tags, index=df.index, dtype=object)
    return df


def has_tag(df: pd.DataFrame, tag: str) -> pd.Series:
    """Which rows of `with_tags(df)` carry `tag`."""
    return df["tags"].map(lambda t: tag in t).astype(bool)


def done_case_ids(path) -> set[str]:
    return {r["case_id"] for r in read_rows(path) if "case_id" in r}
