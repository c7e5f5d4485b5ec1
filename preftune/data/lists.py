"""List rows: one prompt with N >= 2 scored answers -> `ScoredList`.

A list row holds several answers to one prompt and a score for each (higher is better). Row shapes:

=============  =================================================  =================================================
shape          columns                                            result
=============  =================================================  =================================================
scored list    prompt, completions [a1, ..., aN], scores [s1..sN]  as given
ranking        prompt, ranking [best, ..., worst]                 scores N-1, ..., 0
ultrafeedback  instruction, completions [{response,               scores: each completion's fine-grained_score,
               fine-grained_score, overall_score, ...}]           else overall_score (`registry.ultrafeedback_row`)
any pair       every shape `preftune.data.formats` accepts        completions [chosen, rejected], scores (1.0, 0.0)
=============  =================================================  =================================================

Pair rows and list rows mix in one data set: a JSON-lines file with both kinds reads as one table whose missing
columns datasets fills with None, so a row whose list columns (``completions``, ``scores``, ``ranking``) are all
None is a pair row, and a row whose pair columns (``chosen``, ``rejected``) are None is a list row.

Values are converted as a pair's are (`preftune.data.formats`): answers are strings or message lists (one
message is wrapped in a list; ShareGPT messages are read); a message-list prompt with string answers makes
each answer one assistant message; answers that repeat the prompt's messages have them stripped; a string
prompt with message-list answers becomes one user message; a ``system`` column (even empty) makes the row
conversational; ``tools`` and ``chat_template_kwargs`` are read as for pairs. The optional columns are those of
pairs (`formats.COMMON_OPTIONAL`) except images: list rows with images are refused (ConfigError).

A row that cannot be used raises DataError, one sentence naming the row and the field, as pairs do:
fewer than two answers; an answer that is empty (or whitespace) or not a string / message list, named by its
position; scores that are not a list, of another length than the answers, or holding a value that is not a
finite number (None, NaN, a string, a bool); fewer than two different scores (ties are allowed and never turned
into pairs, but a row needs at least two different scores to teach anything); two identical answers with
different scores (a contradiction: the pair check "rejected is identical to chosen" for lists). Identical answers
with the same score are allowed (a tie). A ranking that holds the same answer twice is that contradiction too
(its ranks differ), so it is a bad row.

This module imports the standard library only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from preftune.data.formats import (
    LIST_COLUMNS,
    check_columns,
    rename_columns,
    row_images,
    row_template_kwargs,
    row_tools,
    to_preference_pair,
)
from preftune.data.pairs import (
    FIX_OR_DROP,
    PreferencePair,
    RowProblem,
    Text,
    assistant_reply,
    completion,
    describe_value,
    is_blank,
    message_list,
    system_string,
    with_system,
)
from preftune.data.registry import ultrafeedback_row
from preftune.errors import ConfigError, DataError

__all__ = ["LIST_COLUMNS", "ScoredList", "is_list_columns", "list_shape", "pair_as_list", "to_scored_list"]

NO_IMAGES = ("list rows (several scored answers per prompt) do not support images; train this data as pairs, or drop "
             "the image column (columns={'images': None})")


@dataclass(frozen=True)
class ScoredList:
    """One prompt and N >= 2 answers, each with a score (higher is better), normalised.

    Standard lists hold strings, conversational ones message lists: `prompt` is every message before the
    answer, each answer the final assistant message(s). `tools` and `template_kwargs` as in `PreferencePair`."""

    prompt: Text
    completions: tuple
    scores: tuple[float, ...]
    tools: list | None = None
    template_kwargs: dict | None = None

    @property
    def is_conversational(self) -> bool:
        return isinstance(self.completions[0], list)

    def chat_template_kwargs(self) -> dict:
        """The keywords this list's chat-template calls get, as for a pair (`PreferencePair.chat_template_kwargs`)."""
        kwargs = {} if self.tools is None else {"tools": self.tools}
        kwargs.update(self.template_kwargs or {})
        return kwargs

    def as_conversational(self) -> "ScoredList":
        """This list with a string prompt as one user message and string answers as assistant messages."""
        prompt = self.prompt if isinstance(self.prompt, list) else [{"role": "user", "content": self.prompt}]
        answers = tuple(a if isinstance(a, list) else assistant_reply(a) for a in self.completions)
        return ScoredList(prompt, answers, self.scores, self.tools, self.template_kwargs)


def pair_as_list(pair: PreferencePair) -> ScoredList:
    """A pair as a list of two: answers [chosen, rejected], scores (1.0, 0.0). ConfigError for a pair with images."""
    if pair.images:
        raise ConfigError(f"{NO_IMAGES}.")
    return ScoredList(pair.prompt, (pair.chosen, pair.rejected), (1.0, 0.0), pair.tools, pair.template_kwargs)


def is_list_columns(columns) -> bool:
    """Whether rows with these (canonical) column names hold lists: ``completions`` + ``scores``, ``ranking``,
    or UltraFeedback's raw ``instruction`` + ``completions``."""
    cols = set(columns)
    return {"completions", "scores"} <= cols or "ranking" in cols or {"instruction", "completions"} <= cols


def list_shape(columns) -> str | None:
    """The list shape these column names map to (None: not a list shape), e.g. ``scored list {prompt, completions,
    scores}``, for ``preftune data inspect``."""
    cols = set(columns)
    names = []
    if {"completions", "scores"} <= cols:
        names.append("scored list {prompt, completions, scores}")
    elif {"instruction", "completions"} <= cols:
        names.append("ultrafeedback {instruction, completions: [{response, fine-grained_score, ...}]}")
    if "ranking" in cols:
        names.append("ranking {prompt, ranking}")
    if not names:
        return None
    if {"chosen", "rejected"} <= cols:
        names.append("pairs {prompt, chosen, rejected} (a list of two)")
    return "; mixed with ".join(names)


# ------------------------------------------------------------------------- values


def _prompt(value: Any) -> Text:
    if value is None:
        raise RowProblem("prompt", "is None", "fill it in or drop the row")
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, (list, tuple)):
        return message_list(list(value), "prompt")
    if not isinstance(value, str):
        raise RowProblem("prompt", f"is {describe_value(value)}", "expected a string or a list of {'role', 'content'} messages")
    return value


def _answers(value: Any, field: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise RowProblem(field, f"is {describe_value(value)}", "expected a list of answers (strings or message lists)")
    if len(value) < 2:
        raise RowProblem(field, f"has {len(value)} answer{'' if len(value) == 1 else 's'}",
                         "a list row needs at least two answers; add answers or drop the row")
    out = []
    for i, answer in enumerate(value):
        try:
            out.append(completion(answer, field))
        except RowProblem as p:
            raise RowProblem(field, f"has answer {i} that {p.what}", p.fix) from None
    return out


def _scores(value: Any, n: int) -> list[float]:
    if not isinstance(value, (list, tuple)):
        raise RowProblem("scores", f"is {describe_value(value)}", "expected a list of numbers, one per answer")
    if len(value) != n:
        raise RowProblem("scores", f"has {len(value)} score{'' if len(value) == 1 else 's'} for {n} answers", "give one score per answer")
    out = []
    for i, score in enumerate(value):
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise RowProblem("scores", f"holds {describe_value(score)} at position {i}, not a finite number",
                             "give every answer a number (higher is better), or drop the row")
        out.append(float(score))
    return out


def _conversational(prompt: Text, answers: list, has_system: bool, system: Any) -> tuple[Text, list]:
    """The conversion rules of the module docstring: one kind for prompt and answers, the system message first.
    `has_system`: the row has a ``system`` column (even None: as for pairs, it makes the row conversational)."""
    system = system_string(system)
    if isinstance(prompt, str) and (has_system or any(isinstance(a, list) for a in answers)):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        n = len(prompt)
        answers = [assistant_reply(a) if isinstance(a, str) else (a[n:] if n and a[:n] == prompt else a) for a in answers]
        prompt = with_system(prompt, system)
    return prompt, answers


def _check(prompt: Text, answers: list, scores: list[float], field: str) -> None:
    if not prompt or is_blank(prompt):
        raise RowProblem("prompt", "is empty", "every list row needs a prompt; fill it in or drop the row")
    for i, answer in enumerate(answers):
        if is_blank(answer):
            raise RowProblem(field, f"has an empty answer at position {i}", FIX_OR_DROP)
    if len(set(scores)) < 2:
        raise RowProblem("scores", f"has one distinct score ({scores[0]:g}) for all {len(scores)} answers",
                         "ties are allowed but a row needs at least two different scores; fix or drop this row")
    for i in range(len(answers)):
        for j in range(i + 1, len(answers)):
            if answers[i] == answers[j] and scores[i] != scores[j]:
                what = (f"holds the same answer at positions {i} and {j}" if field == "ranking" else
                        f"has answers {i} and {j} identical but scored differently ({scores[i]:g}, {scores[j]:g})")
                raise RowProblem(field, what, "an answer cannot be better than itself; drop one of them or the row")


# ------------------------------------------------------------------------ the entry


def _present(data: Mapping, name: str) -> bool:
    return data.get(name) is not None


def to_scored_list(row: Mapping, index: int | None = None,
                   columns: Mapping[str, str | None] | None = None) -> ScoredList:
    """Normalise one row (a list row, or any pair row: a list of two) into a `ScoredList` (module docstring).

    `index` (0-based) names the row in errors; `columns` maps the row's column names to canonical ones, as for
    `preftune.data.formats.to_preference_pair`. Raises DataError (one sentence naming the row and the field) for
    a row that cannot be used, ConfigError for a bad `columns` mapping or a row with images."""
    mapping = dict(columns or {})
    if mapping:
        check_columns(mapping)
    names = rename_columns(list(row.keys()), mapping)
    renamed = {canon: src for canon, src in names.items() if canon != src}
    data = {canon: row[src] for canon, src in names.items() if src in row}
    where = "this row" if index is None else f"row {index}"
    if row_images(data) not in (None, [], ()):
        raise ConfigError(f"{where} has images, but {NO_IMAGES}.")
    is_list = any(_present(data, c) for c in LIST_COLUMNS)
    if not is_list:  # a pair row (its list columns None, as datasets fills them in a mixed file)
        sources = {names[c] for c in LIST_COLUMNS if c in names}
        pair_row = {k: v for k, v in row.items() if k not in sources}
        pair_mapping = {k: v for k, v in mapping.items() if k not in sources}
        return pair_as_list(to_preference_pair(pair_row, index, pair_mapping))
    try:
        if _present(data, "chosen") or _present(data, "rejected"):
            raise RowProblem(None, "has both list columns (completions/scores or ranking) and pair columns (chosen/rejected)",
                             "give each row one kind: a list or a pair")
        if _present(data, "ranking"):
            if _present(data, "completions") or _present(data, "scores"):
                raise RowProblem("ranking", "is given together with completions/scores", "give either a ranking or scored completions")
            field = "ranking"
            prompt = _prompt(data.get("prompt")) if "prompt" in data else None
            answers = _answers(data["ranking"], field)
            scores = [float(len(answers) - 1 - i) for i in range(len(answers))]
        else:
            field = "completions"
            raw = not _present(data, "prompt") and "instruction" in data and _present(data, "completions")
            if raw:  # UltraFeedback's raw row, read without the registry
                data = {**data, **ultrafeedback_row(data)}
            prompt = _prompt(data.get("prompt")) if "prompt" in data else None
            if not _present(data, "completions"):
                raise RowProblem("completions", "is None", "a scored list row needs its answers; fill it in or drop the row")
            answers = _answers(data["completions"], field)
            try:
                scores = _scores(data.get("scores"), len(answers))
            except RowProblem as p:
                if raw:
                    p.fix = "that UltraFeedback completion has neither a fine-grained_score nor an overall_score; fix or drop the row"
                raise
        if prompt is None:
            raise RowProblem(None, f"has {field} but no 'prompt' column", "add the prompt (or map a column to it with --columns)")
        prompt, answers = _conversational(prompt, answers, "system" in data, data.get("system"))
        _check(prompt, answers, scores, field)
        return ScoredList(prompt, tuple(answers), tuple(scores), row_tools(data.get("tools")),
                          row_template_kwargs(data.get("chat_template_kwargs")))
    except RowProblem as p:
        raise DataError(p.sentence(index, renamed)) from None
