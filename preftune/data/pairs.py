"""Preference pairs and the values inside them.

`PreferencePair` is the normalised form of one preference example: standard pairs
hold strings, conversational pairs hold lists of ``{"role": ..., "content": ...}``
messages. This module validates and normalises those values (messages, including
ShareGPT ``{"from", "value"}`` ones; strings; completions) and splits an
implicit-prompt pair into prompt and completions (`extract_prompt`). Which row
shapes are accepted, and how each becomes a pair, is `preftune.data.formats`.

Values that cannot be used raise `_Problem` (field, what is wrong, how to fix it);
`to_preference_pair` and `extract_prompt` turn it into a one-sentence DataError.

Decisions, where TRL says nothing or differs:

- Implicit prompt, strings: the prompt is the longest common prefix of chosen and
  rejected. If that prefix would split a word (its last character and the next
  character of either completion are not whitespace) it is backed up to just after
  its last whitespace, so "The answer is 4" / "The answer is 42" gives the prompt
  "The answer is " rather than "The answer is 4". TRL does not back up.
- Implicit prompt, messages: the prompt is the longest common prefix of messages,
  backed up so that it ends right before an assistant message in both completions.

This module imports the standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

from preftune.errors import DataError

Message = dict  # {"role": str, "content": str | list}
Text = Union[str, list]  # a plain string, or a list of chat messages


@dataclass(frozen=True)
class PreferencePair:
    """One preference example, normalised.

    Standard pairs hold strings; conversational pairs hold message lists:
    `prompt` is every message before the final assistant reply (system/user/
    earlier turns), `chosen` / `rejected` are the final assistant message(s).
    """

    prompt: Text
    chosen: Text
    rejected: Text
    images: tuple | None = None

    @property
    def is_conversational(self) -> bool:
        return isinstance(self.chosen, list)


# --------------------------------------------------------------------------- errors


class _Problem(Exception):
    """A problem in one row; `to_preference_pair` turns it into a DataError."""

    def __init__(self, field: str | None, what: str, fix: str):
        super().__init__(what)
        self.field, self.what, self.fix = field, what, fix

    def sentence(self, index: int | None, renamed: Mapping[str, str]) -> str:
        where = "this row" if index is None else f"row {index}"
        if self.field is None:
            subject = where
        else:
            source = renamed.get(self.field)
            name = f"'{source}' (used as '{self.field}')" if source else f"'{self.field}'"
            subject = f"{where}: field {name}"
        return f"{subject} {self.what}; {self.fix}."


_FIX_DATA = "fix or drop this row"


def _type_name(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


# ------------------------------------------------------------------------- messages

# ShareGPT "from" values -> chat roles.
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


def _message(m: Any, field: str, pos: int) -> dict:
    """Validate one message and return it as a plain {"role", "content", ...} dict.

    Accepts ShareGPT {"from", "value"} messages too. Keys that datasets fills with
    None (when rows of one column have different message keys) are dropped.
    """
    if not isinstance(m, Mapping):
        raise _Problem(field, f"holds {_type_name(m)} at message {pos}, not a {{'role': ..., 'content': ...}} mapping", _FIX_DATA)
    role = m.get("role")
    if role is None and m.get("from") is not None:
        sharegpt_role = m["from"]
        role = _SHAREGPT_ROLES.get(sharegpt_role) if isinstance(sharegpt_role, str) else None
        if role is None:
            raise _Problem(field, f"has message {pos} from {sharegpt_role!r}, which is not one of {', '.join(sorted(_SHAREGPT_ROLES))}", _FIX_DATA)
    content = m.get("content")
    if content is None:
        content = m.get("value")
    if role is not None and not isinstance(role, str):
        raise _Problem(field, f"has message {pos} whose role is {_type_name(role)}", "a role is a string such as 'user' or 'assistant'")
    if not role:
        raise _Problem(field, f"has message {pos} without a role", "give every message a 'role' (or ShareGPT 'from')")
    if content is None:
        raise _Problem(field, f"has message {pos} without content", "give every message a 'content' (or ShareGPT 'value')")
    if not isinstance(content, (str, list)):
        raise _Problem(field, f"has message {pos} whose content is {_type_name(content)}", "content must be a string or a list of content parts")
    out = {"role": role, "content": content}
    for key, value in m.items():
        if key not in ("role", "content", "from", "value") and value is not None:
            out[key] = value
    return out


def _messages(value: list, field: str) -> list:
    return [_message(m, field, i) for i, m in enumerate(value)]


def _completion(value: Any, field: str) -> Text:
    """A completion: a string, a message list, or one message (wrapped in a list)."""
    if value is None:
        raise _Problem(field, "is None", "fill it in or drop the row")
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return [_message(value, field, 0)]
    if isinstance(value, (list, tuple)):
        return _messages(list(value), field)
    raise _Problem(field, f"is {_type_name(value)}", "expected a string or a list of {'role', 'content'} messages")


def _string(value: Any, field: str) -> str:
    if value is None:
        raise _Problem(field, "is None", "fill it in or drop the row")
    if not isinstance(value, str):
        raise _Problem(field, f"is {_type_name(value)}", "expected a string")
    return value


def _assistant(text: str) -> list:
    return [{"role": "assistant", "content": text}]


def _is_empty(value: Text) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return all(isinstance(m["content"], str) and not m["content"].strip() or m["content"] == [] for m in value)


# ----------------------------------------------------------------- prompt extraction


def _common_prefix_len(a, b) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _extract(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise _Problem("rejected", "is a different kind of value than chosen (one is a string, the other a message list)", "use two strings or two message lists")
    if chosen == rejected:
        raise _Problem("rejected", "is identical to chosen", "a preference pair needs two different completions; drop the row")
    k = _common_prefix_len(chosen, rejected)
    if isinstance(chosen, str):
        # Do not split a word: back up to just after the last whitespace.
        after = [s[k] for s in (chosen, rejected) if k < len(s)]
        if 0 < k and not chosen[k - 1].isspace() and (len(after) < 2 or any(not c.isspace() for c in after)):
            while k > 0 and not chosen[k - 1].isspace():
                k -= 1
        if k == 0:
            raise _Problem("chosen", "shares no beginning with rejected, so no prompt can be extracted", "add a 'prompt' column")
    else:
        # The prompt must end right before an assistant message in both completions.
        while k > 0 and not (k < len(chosen) and k < len(rejected) and chosen[k]["role"] == "assistant" and rejected[k]["role"] == "assistant"):
            k -= 1
        if k == 0:
            raise _Problem("chosen", "shares no messages with rejected before an assistant reply, so no prompt can be extracted", "add a 'prompt' column")
    return chosen[:k], chosen[k:], rejected[k:]


def extract_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """Split an implicit-prompt pair into ``(prompt, chosen_completion, rejected_completion)``.

    Strings: the longest common prefix, backed up to a word boundary (see the module
    docstring). Message lists: the longest common prefix of messages that ends right
    before an assistant message; with multi-turn conversations that differ only in
    the last reply this is every message before it. Raises DataError when there is
    no common prompt or the two are identical.
    """
    try:
        if not isinstance(chosen, str):
            chosen = _completion(chosen, "chosen")
        if not isinstance(rejected, str):
            rejected = _completion(rejected, "rejected")
        return _extract(chosen, rejected)
    except _Problem as p:
        raise DataError(p.sentence(None, {})) from None
