"""Row normalisation: any supported row shape -> `PreferencePair`.

A row is a mapping from column names to values. `to_preference_pair` renames
columns (`columns=`), finds the first entry of `SHAPES` whose columns the row has,
converts it, and validates the result. Standard pairs hold strings; conversational
pairs hold lists of ``{"role": ..., "content": ...}`` messages.

Shapes, first match wins (add new ones to `SHAPES`):

=================  ==================================================  ==============
shape              columns                                              result
=================  ==================================================  ==============
explicit prompt    prompt, chosen, rejected                             as given
alpaca             instruction, chosen, rejected [, input]              standard
sharegpt           conversations, chosen, rejected                      conversational
implicit prompt    chosen, rejected                                     prompt extracted
shareai emoji      question, answer_zh, answer_en (no chosen/rejected)  conversational
query/response     query, response, rejected_response [, history]      conversational
messages           messages, rejected_response                          conversational
=================  ==================================================  ==============

Every shape also takes these optional columns (`COMMON_OPTIONAL`):

- ``system``: a system message put first in the prompt;
- ``images`` (a list of images) or ``image`` (one image), TRL's vision columns: kept as
  a tuple; a vision-language model's processor expands them (`preftune.data.images`);
- ``tools``: a list of JSON-schema tool dicts, or that list as a JSON string, given
  to the chat template as ``tools=`` (TRL's ``tools`` column);
- ``chat_template_kwargs``: a dict of extra keywords for this row's chat template
  calls (TRL: ``apply_chat_template(..., tools=tools, **chat_template_kwargs)``).

``tools`` and ``chat_template_kwargs`` only matter for conversational pairs (TRL
ignores them for plain strings too).

Decisions, where TRL or ms-swift differ or say nothing:

- Implicit prompt (strings and message lists): see `preftune.data.pairs`, which
  holds `PreferencePair`, the value checks and `extract_prompt`.
- Explicit prompt with message-list completions that repeat the prompt messages:
  the repeated messages are stripped. With string completions that both start with
  the prompt string, the prompt string is stripped too.
- Explicit string prompt whose text is not a prefix of the completions but appears
  inside their common beginning, as whole words followed by more shared text
  (completions rendered with a chat template, as in the ORPO tutorial that calls
  ``apply_chat_template`` on chosen/rejected but keeps the raw prompt column): the
  prompt is extracted from the completions as in the implicit case, because the
  completions already contain it (TRL would train on the prompt twice). Likewise a string prompt with message-list
  completions (TRL does the same: it ignores the prompt column then).
- A message-list prompt with string completions: each completion becomes one
  assistant message.
- A ``system`` column (even when empty) makes the pair conversational: a string
  prompt becomes ``[system, user]`` and string completions assistant messages, so
  that every row of a data set is formatted the same way. An empty system value
  adds no system message. Map it away with ``columns={"system": None}``.
- The shareai emoji set is conversational, as in ms-swift (it maps it to
  query/response/rejected_response); Alpaca rows stay plain strings.
- ``columns`` maps a user's column to a canonical one; the mapped column wins over
  a column that already has the canonical name. Mapping to None ignores a column.
- An empty prompt is an error in every shape, not just the implicit one.

This module imports the standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from preftune.data.pairs import (
    FIX_OR_DROP,
    Message,
    PreferencePair,
    RowProblem,
    Text,
    assistant_reply,
    common_prefix_len,
    completion,
    describe_value,
    extract_prompt,
    image_tuple,
    is_blank,
    message_list,
    required_string,
    split_prompt,
    system_string,
    with_system,
)
from preftune.errors import ConfigError, DataError

__all__ = [
    "COMMON_OPTIONAL",
    "LIST_COLUMNS",
    "SHAPES",
    "Message",
    "PreferencePair",
    "RowShape",
    "Text",
    "accepted_shapes",
    "check_columns",
    "describe_shape",
    "extract_prompt",
    "match_shape",
    "rename_columns",
    "row_images",
    "row_template_kwargs",
    "row_tools",
    "to_preference_pair",
]


# --------------------------------------------------------------------------- shapes


def _explicit(row: Mapping) -> tuple:
    prompt = row["prompt"]
    chosen, rejected = completion(row["chosen"], "chosen"), completion(row["rejected"], "rejected")
    if prompt is None:
        raise RowProblem("prompt", "is None", "fill it in or drop the row")
    if isinstance(prompt, Mapping):
        prompt = [prompt]
    if isinstance(prompt, (list, tuple)):
        prompt = message_list(list(prompt), "prompt")
        chosen = assistant_reply(chosen) if isinstance(chosen, str) else chosen
        rejected = assistant_reply(rejected) if isinstance(rejected, str) else rejected
        n = len(prompt)
        if n and chosen[:n] == prompt:
            chosen = chosen[n:]
        if n and rejected[:n] == prompt:
            rejected = rejected[n:]
        return prompt, chosen, rejected
    if not isinstance(prompt, str):
        raise RowProblem("prompt", f"is {describe_value(prompt)}", "expected a string or a list of {'role', 'content'} messages")
    if not isinstance(chosen, str) and not isinstance(rejected, str):
        return split_prompt(chosen, rejected)  # the completions hold the whole conversation
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise RowProblem("rejected", "is a different kind of value than chosen (one is a string, the other a message list)", "use two strings or two message lists")
    if prompt and chosen.startswith(prompt) and rejected.startswith(prompt):
        return prompt, chosen[len(prompt):], rejected[len(prompt):]
    if chosen != rejected and _renders_prompt(prompt.strip(), chosen[: common_prefix_len(chosen, rejected)]):
        return split_prompt(chosen, rejected)  # the completions already hold the prompt
    return prompt, chosen, rejected


def _renders_prompt(needle: str, head: str) -> bool:
    """Whether `head` (the shared beginning of two completions) holds the prompt
    text as whole words, followed by more shared non-whitespace text (a chat
    template's end of turn and assistant header)."""
    pos = head.find(needle) if needle else -1
    while pos != -1:
        end = pos + len(needle)
        bounded = (pos == 0 or not head[pos - 1].isalnum()) and (end == len(head) or not head[end].isalnum())
        if bounded and head[end:].strip():
            return True
        pos = head.find(needle, pos + 1)
    return False


def _alpaca(row: Mapping) -> tuple:
    instruction = required_string(row["instruction"], "instruction")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise RowProblem("input", f"is {describe_value(extra)}", "expected a string")
    prompt = instruction + "\n\n" + extra if extra else instruction
    return prompt, completion(row["chosen"], "chosen"), completion(row["rejected"], "rejected")


def _sharegpt(row: Mapping) -> tuple:
    conv = row["conversations"]
    if not isinstance(conv, (list, tuple)):
        raise RowProblem("conversations", f"is {describe_value(conv)}", "expected a list of {'from', 'value'} messages")
    prompt = message_list(list(conv), "conversations")
    chosen, rejected = completion(row["chosen"], "chosen"), completion(row["rejected"], "rejected")
    chosen = assistant_reply(chosen) if isinstance(chosen, str) else chosen
    rejected = assistant_reply(rejected) if isinstance(rejected, str) else rejected
    return prompt, chosen, rejected


def _implicit(row: Mapping) -> tuple:
    return split_prompt(completion(row["chosen"], "chosen"), completion(row["rejected"], "rejected"))


def _emoji(row: Mapping) -> tuple:
    return (
        [{"role": "user", "content": required_string(row["question"], "question")}],
        assistant_reply(required_string(row["answer_zh"], "answer_zh")),
        assistant_reply(required_string(row["answer_en"], "answer_en")),
    )


def _query_response(row: Mapping) -> tuple:
    prompt = []
    history = row.get("history")
    if history is not None:
        if not isinstance(history, (list, tuple)):
            raise RowProblem("history", f"is {describe_value(history)}", "expected a list of [query, response] pairs")
        for turn in history:
            if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
                raise RowProblem("history", f"holds {describe_value(turn)}", "expected a list of [query, response] string pairs")
            prompt += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt.append({"role": "user", "content": required_string(row["query"], "query")})
    return prompt, assistant_reply(required_string(row["response"], "response")), assistant_reply(required_string(row["rejected_response"], "rejected_response"))


def _messages_shape(row: Mapping) -> tuple:
    msgs = row["messages"]
    if not isinstance(msgs, (list, tuple)):
        raise RowProblem("messages", f"is {describe_value(msgs)}", "expected a list of {'role', 'content'} messages")
    msgs = message_list(list(msgs), "messages")
    if not msgs or msgs[-1]["role"] != "assistant":
        raise RowProblem("messages", "does not end with an assistant message (the chosen reply)", "end each conversation with the chosen assistant reply")
    return msgs[:-1], msgs[-1:], assistant_reply(required_string(row["rejected_response"], "rejected_response"))


@dataclass(frozen=True)
class RowShape:
    """One accepted row shape: the columns it needs and how to convert it.

    `convert(row)` returns ``(prompt, chosen, rejected)``; the ``system`` and
    ``images`` columns are handled for every shape by `to_preference_pair`.
    """

    name: str
    required: tuple[str, ...]
    convert: Callable[[Mapping], tuple]
    optional: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()

    def matches(self, columns: Iterable[str]) -> bool:
        cols = set(columns)
        return set(self.required) <= cols and not (set(self.forbidden) & cols)

    def describe(self) -> str:
        """e.g. ``alpaca {instruction, chosen, rejected, input?}``"""
        return f"{self.name} {{{', '.join([*self.required, *(c + '?' for c in self.optional)])}}}"


SHAPES: tuple[RowShape, ...] = (
    RowShape("explicit prompt", ("prompt", "chosen", "rejected"), _explicit),
    RowShape("alpaca", ("instruction", "chosen", "rejected"), _alpaca, optional=("input",)),
    RowShape("sharegpt", ("conversations", "chosen", "rejected"), _sharegpt),
    RowShape("implicit prompt", ("chosen", "rejected"), _implicit),
    RowShape("shareai emoji", ("question", "answer_zh", "answer_en"), _emoji, forbidden=("chosen", "rejected")),
    RowShape("query/response", ("query", "response", "rejected_response"), _query_response, optional=("history",)),
    RowShape("messages", ("messages", "rejected_response"), _messages_shape),
)
COMMON_OPTIONAL = ("system", "images", "image", "tools", "chat_template_kwargs")
# the columns of list rows (several scored answers per prompt, `preftune.data.lists`), also valid --columns targets
LIST_COLUMNS = ("completions", "scores", "ranking")


def _canonical_names() -> set[str]:
    names = set(COMMON_OPTIONAL) | set(LIST_COLUMNS)
    for shape in SHAPES:
        names.update(shape.required, shape.optional)
    return names


def accepted_shapes() -> str:
    """The accepted shapes, as one line for messages."""
    return ", ".join(s.describe() for s in SHAPES) + " (each may add " + ", ".join(COMMON_OPTIONAL) + ")"


def match_shape(columns: Iterable[str]) -> RowShape | None:
    """The first shape in `SHAPES` whose columns are all present, or None."""
    cols = set(columns)
    for shape in SHAPES:
        if shape.matches(cols):
            return shape
    return None


def check_columns(columns: Mapping[str, str | None]) -> None:
    """Raise ConfigError if `columns` maps a column to a name no shape uses."""
    known = _canonical_names()
    for source, target in columns.items():
        if target is not None and target not in known:
            raise ConfigError(
                f"--columns maps '{source}' to '{target}', which no row shape uses; map it to one of {', '.join(sorted(known))} (or to None to ignore it)."
            )


def rename_columns(columns: Iterable[str], mapping: Mapping[str, str | None]) -> dict[str, str]:
    """Canonical name -> source name, for every column that is used (`columns`: a row's column names,
    `mapping`: the ``columns=`` / ``--columns`` renaming)."""
    targets = {t for t in mapping.values() if t is not None}
    out = {c: c for c in columns if c not in mapping and c not in targets}
    for source, target in mapping.items():
        if target is not None and source in columns:
            out[target] = source
    return out


def describe_shape(columns: Iterable[str], mapping: Mapping[str, str | None] | None = None) -> str:
    """Say which shape a set of column names maps to, e.g. for ``preftune data inspect``.

    `mapping` is the same as `to_preference_pair`'s ``columns``.

    >>> describe_shape(["prompt", "chosen", "rejected", "source"])
    'explicit prompt {prompt, chosen, rejected}; ignored: source'
    """
    cols = list(columns)
    names = rename_columns(cols, mapping or {})
    shape = match_shape(names)
    if shape is None:
        return f"no known shape for columns {', '.join(cols) or '(none)'}; accepted shapes: {accepted_shapes()}"
    extras = [c for c in (*shape.optional, *COMMON_OPTIONAL) if c in names]
    used = [*shape.required, *extras]
    text = shape.describe()
    if extras:
        text += "; also used: " + ", ".join(extras)
    renamed = [f"{names[c]} -> {c}" for c in used if names[c] != c]
    if renamed:
        text += "; renamed: " + ", ".join(renamed)
    ignored = [c for c in cols if c not in {names[u] for u in used}]
    if ignored:
        text += "; ignored: " + ", ".join(ignored)
    return text


# ------------------------------------------------------------------------ the entry


def _add_system(system: Any, prompt: Text, chosen: Text, rejected: Text) -> tuple:
    system = system_string(system)
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    chosen = assistant_reply(chosen) if isinstance(chosen, str) else chosen
    rejected = assistant_reply(rejected) if isinstance(rejected, str) else rejected
    return with_system(prompt, system), chosen, rejected


def row_tools(value: Any) -> list | None:
    """A row's ``tools`` value: a list of tool dicts, or that list as a JSON string (as TRL reads it)."""
    if value is None:
        return None
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError as e:
            raise RowProblem("tools", f"is a string that is not JSON ({e})", "give a list of JSON-schema tool dicts or that list as a JSON string") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, Mapping) for t in value):
        raise RowProblem("tools", f"is {describe_value(value)}", "expected a list of JSON-schema tool dicts (or that list as a JSON string)")
    return list(value)


def row_template_kwargs(value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RowProblem("chat_template_kwargs", f"is {describe_value(value)}", "expected a dict of apply_chat_template keywords, e.g. {'enable_thinking': False}")
    return dict(value)


def row_images(data: Mapping) -> Any:
    """A row's images: its ``images`` value, or else its ``image`` value (TRL's one-image column)."""
    images = data.get("images")
    return images if images is not None else data.get("image")


def to_preference_pair(
    row: Mapping,
    index: int | None = None,
    columns: Mapping[str, str | None] | None = None,
) -> PreferencePair:
    """Normalise one row of any supported shape (see `SHAPES`) into a `PreferencePair`.

    `index` (0-based) is used in error messages; `columns` maps the row's column
    names to canonical ones, e.g. ``{"question": "prompt", "good": "chosen"}``.
    Raises DataError (one sentence naming the row and field) for rows that cannot
    be used, ConfigError for a bad `columns` mapping.
    """
    mapping = dict(columns or {})
    if mapping:
        check_columns(mapping)
    names = rename_columns(list(row.keys()), mapping)
    renamed = {canon: src for canon, src in names.items() if canon != src}
    try:
        missing = [src for src, target in mapping.items() if target is not None and src not in row]
        if missing:
            raise RowProblem(
                None,
                f"has no column {', '.join(repr(m) for m in missing)} named in --columns (it has {', '.join(map(str, row.keys()))})",
                "fix the column mapping",
            )
        data = {canon: row[src] for canon, src in names.items()}
        shape = match_shape(data)
        if shape is None:
            raise RowProblem(
                None,
                f"has columns {', '.join(map(str, row.keys())) or '(none)'}, which match no accepted shape: {accepted_shapes()}",
                "rename columns with --columns (e.g. columns={'question': 'prompt'})",
            )
        prompt, chosen, rejected = shape.convert(data)
        # messages whose contents are all blank are an empty prompt too (unless images carry it)
        if not prompt or is_blank(prompt) and (isinstance(prompt, str) or not row_images(data)):
            raise RowProblem("prompt", "is empty", "every pair needs a prompt; fill it in or drop the row")
        for field, value in (("chosen", chosen), ("rejected", rejected)):
            if is_blank(value):
                raise RowProblem(field, "has an empty completion after the prompt is taken out", FIX_OR_DROP)
        if chosen == rejected:
            raise RowProblem("rejected", "is identical to chosen", "a preference pair needs two different completions; drop the row")
        if "system" in data:
            prompt, chosen, rejected = _add_system(data["system"], prompt, chosen, rejected)
        return PreferencePair(prompt, chosen, rejected, image_tuple(row_images(data)), row_tools(data.get("tools")),
                              row_template_kwargs(data.get("chat_template_kwargs")))
    except RowProblem as p:
        raise DataError(p.sentence(index, renamed)) from None
