"""Loaded rows and where each came from; the row checks that report a bad row there.

`LoadedData` (what `preftune.data.sources.load_sources` returns) holds the data set
and, per source, a `SourcePart` that can say where row r came from: ``row 7 (line 8)``
for a single JSONL file, ``row 7 of prefs.jsonl (line 8)`` when several sets are
mixed. Every row is checked (`SourcePart.check_rows`, which normalises it with
`preftune.data.formats.to_preference_pair`) when the data is loaded; by default the
first bad row stops the run, with a count; ``skip_bad_rows`` drops bad rows and
counts them for `LoadedData.skipped_summary`. The pairs of the rows kept travel
with the data (`LoadedData.pairs`), so that no row is normalised twice.

List data (several scored answers per prompt, `preftune.data.lists`): a part whose columns
hold lists (`is_list_columns`) is checked with `to_scored_list` instead, and its rows travel
as `ScoredList` items (`LoadedData.pairs` then holds lists, and `LoadedData.is_lists` is True);
a pair row in list data is a list of two.

Decisions:

- Row numbers count from 0 in the order the file (or hub split) holds the rows;
  line numbers count from 1.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from preftune.data.formats import to_preference_pair
from preftune.data.lists import ScoredList, is_list_columns, to_scored_list
from preftune.data.pairs import PreferencePair
from preftune.data.specs import SourceSpec
from preftune.errors import DataError

_N_SHOWN = 3  # bad rows quoted in a skip summary


@dataclass
class CheckedRows:
    """What `SourcePart.check_rows` found: the rows that make a usable pair (or list), and those pairs."""

    kept: list[int]  # positions into the rows checked
    pairs: list[PreferencePair] | list[ScoredList]  # one per kept row, in the same order (lists: ScoredList items)


@dataclass
class SourcePart:
    """One loaded source: its rows, and how to say where row r came from."""

    spec: SourceSpec
    dataset: Any
    split: str
    files: list[str] = field(default_factory=list)
    json_lines: bool = False
    skipped_lines: set = field(default_factory=set)  # (file, line) dropped as broken JSON
    n_bad_lines: int = 0
    n_bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)
    _lines: list | None = None

    def line_of(self, row: int) -> tuple[str, int] | None:
        if not self.json_lines:
            return None
        if self._lines is None:
            self._lines = []
            for path in self.files:
                with open(path, encoding="utf-8", errors="replace") as f:
                    for number, line in enumerate(f, 1):
                        if line.strip() and (path, number) not in self.skipped_lines:
                            self._lines.append((path, number))
        return self._lines[row] if 0 <= row < len(self._lines) else None

    def where(self, row: int, alone: bool) -> str:
        text = f"row {row}" if alone else f"row {row} of {self.spec.label}"
        located = self.line_of(row)
        if located:
            path, number = located
            text += f" (line {number})" if alone or len(self.files) == 1 else f" (line {number} of {os.path.basename(path)})"
        return text

    @property
    def holds_lists(self) -> bool:
        """Whether this part's columns hold list rows (`preftune.data.lists.is_list_columns`)."""
        return is_list_columns(self.dataset.column_names)

    def check_rows(self, rows: Sequence[int] | None, *, alone: bool, skip_bad_rows: bool,
                   lists: bool | None = None) -> CheckedRows:
        """Normalise every row (`rows`: which rows of this part, in order; None: all). Raises on a bad row,
        unless `skip_bad_rows`: then bad rows are left out and counted. `alone`: the only part.
        `lists`: normalise into `ScoredList` items (pair rows become lists of two); None: when this part's
        columns hold lists (`holds_lists`)."""
        normalise = to_scored_list if (self.holds_lists if lists is None else lists) else to_preference_pair
        order = list(rows) if rows is not None else None
        source = self.dataset.select(order) if order is not None and order != list(range(len(self.dataset))) else self.dataset
        kept, pairs, bad = [], [], []
        for pos, row in enumerate(iter_rows(source)):
            r = order[pos] if order is not None else pos
            try:
                pairs.append(normalise(row, r))
            except DataError as err:
                bad.append((r, str(err)))
                continue
            kept.append(pos)
        if bad:
            first = re.sub(r"^row (\d+)\b", lambda m: self.where(int(m.group(1)), alone), bad[0][1], count=1)
            if not skip_bad_rows:
                raise DataError(f"{first.rstrip('.')} ({len(bad)} of {len(source)} rows are bad; fix them, or pass --skip_bad_rows to drop them).")
            self.n_bad_rows += len(bad)
            self.bad_examples.append(first)
        return CheckedRows(kept, pairs)


@dataclass
class LoadedData:
    """A loaded (possibly mixed, sampled and split) data set and where its rows came from."""

    dataset: Any
    parts: list[SourcePart]
    origins: list[tuple[int, int]] | None = None  # final row -> (part, row in part); None: identity
    notes: list[str] = field(default_factory=list)
    # the rows as checked, one per row: prepare tokenizes these (never twice); ScoredList items when `is_lists`
    pairs: list[PreferencePair] | list[ScoredList] | None = None
    is_lists: bool = False  # the rows are list rows (several scored answers per prompt; pair rows as lists of two)

    @property
    def n_bad_skipped(self) -> int:
        return sum(p.n_bad_rows + p.n_bad_lines for p in self.parts)

    def describe_row(self, index: int) -> str:
        if self.origins is not None:
            if not 0 <= index < len(self.origins):
                return f"row {index}"
            part, row = self.origins[index]
        else:
            part, row = 0, index
        return self.parts[part].where(row, alone=len(self.parts) == 1)

    def relabel(self, message: str) -> str:
        """Rewrite a leading ``row N`` (an index into `dataset`) as where that row came from."""
        return re.sub(r"^row (\d+)\b", lambda m: self.describe_row(int(m.group(1))), message, count=1)

    def skipped_summary(self) -> str | None:
        lines = sum(p.n_bad_lines for p in self.parts)
        rows = sum(p.n_bad_rows for p in self.parts)
        if not lines and not rows:
            return None
        parts = []
        if rows:
            parts.append(f"{rows} bad {'row' if rows == 1 else 'rows'}")
        if lines:
            parts.append(f"{lines} broken JSON {'line' if lines == 1 else 'lines'}")
        examples = [e for p in self.parts for e in p.bad_examples][:_N_SHOWN]
        text = f"dropped {' and '.join(parts)} (--skip_bad_rows)"
        if examples:
            text += "; first: " + examples[0]
        return text

    def select(self, indices: Sequence[int]) -> "LoadedData":
        """These rows only (their pairs too, when the rows were checked)."""
        indices = list(indices)
        origins = [self.origins[i] for i in indices] if self.origins is not None else [(0, i) for i in indices]
        pairs = [self.pairs[i] for i in indices] if self.pairs is not None else None
        return LoadedData(self.dataset.select(indices), self.parts, origins, list(self.notes), pairs, self.is_lists)


# -------------------------------------------------------------------- row checks


def iter_rows(ds, batch_size: int = 1000):
    """The rows of a datasets.Dataset as plain dicts, without its ``images``/``image`` columns (never decoded just to
    check rows), read in batches."""
    cols = [c for c in ds.column_names if c not in ("images", "image")]
    view = ds.select_columns(cols) if len(cols) < len(ds.column_names) else ds
    if view.format["type"] is not None:
        view = view.with_format(None)
    for batch in view.iter(batch_size=batch_size):
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        for i in range(n):
            yield {k: batch[k][i] for k in keys}
