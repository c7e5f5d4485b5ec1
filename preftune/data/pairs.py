"""Preference pairs and the values inside them.

`PreferencePair` is the normalised form of one preference example: standard pairs
hold strings, conversational pairs hold lists of ``{"role": ..., "content": ...}``
messages. This module validates and normalises those values (messages, including
ShareGPT ``{"from", "value"}`` ones; strings; completions) and splits an
implicit-prompt pair into prompt and completions (`extract_prompt`). Which row
shapes are accepted, and how each becomes a pair, is `preftune.data.formats`.

The value checks are the vocabulary the row shapes of `preftune.data.formats` are
written in: `completion`, `message_list`, `required_string` check and normalise one
field; `assistant_reply`, `is_blank`, `common_prefix_len`, `split_prompt` build and
test pairs. A value that cannot be used raises `RowProblem` (field, what is wrong,
how to fix it, e.g. `FIX_OR_DROP`); `to_preference_pair` and `extract_prompt` turn it
into a one-sentence DataError that names the row.

Every row is normalised once. Loading with row checks (`preftune.data.sources`)
normalises each row to find the bad ones, and returns the pairs with the data set
(`LoadedData.pairs`); `preftune.data.prepare` tokenizes those pairs (its ``pairs``
argument) instead of normalising the rows again.

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

from dataclasses import dataclass, replace
from typing import Any, Mapping, Union

from preftune.errors import DataError

__all__ = [
    "FIX_OR_DROP", "Message", "PreferencePair", "RowProblem", "Text", "assistant_reply", "common_prefix_len",
    "completion", "describe_value", "extract_prompt", "image_tuple", "is_blank", "message_list", "required_string", "split_prompt",
]

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
    tools: list | None = None  # JSON-schema tool dicts, passed to the chat template as tools= (TRL's `tools` column)
    template_kwargs: dict | None = None  # this row's extra apply_chat_template keywords (`chat_template_kwargs`)

    @property
    def is_conversational(self) -> bool:
        return isinstance(self.chosen, list)

    def chat_template_kwargs(self) -> dict:
        """The keywords this pair's chat-template calls get, as TRL builds them:
        ``{"tools": tools, **chat_template_kwargs}`` (no ``tools`` key when the row has none)."""
        kwargs = {} if self.tools is None else {"tools": self.tools}
        kwargs.update(self.template_kwargs or {})
        return kwargs

    def with_images(self, images: Any) -> "PreferencePair":
        """This pair with a row's ``images`` value (None, one image, or a list of them)."""
        return replace(self, images=image_tuple(images))


def image_tuple(value: Any) -> tuple | None:
    """A row's ``images`` value as a tuple of images (None: the row has none)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,)


# --------------------------------------------------------------------------- errors


class RowProblem(Exception):
    """A problem in one field of a row (or the whole row: `field` None): what is wrong and how to fix
    it. `to_preference_pair` turns it into a DataError with `sentence`."""

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


FIX_OR_DROP = "fix or drop this row"  # the fix, when the data itself is wrong


def describe_value(value: Any) -> str:
    """A value's type and its (shortened) repr, for messages: ``int 7``, ``list [1, 2]``."""
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
        raise RowProblem(field, f"holds {describe_value(m)} at message {pos}, not a {{'role': ..., 'content': ...}} mapping", FIX_OR_DROP)
    role = m.get("role")
    if role is None and m.get("from") is not None:
        sharegpt_role = m["from"]
        role = _SHAREGPT_ROLES.get(sharegpt_role) if isinstance(sharegpt_role, str) else None
        if role is None:
            raise RowProblem(field, f"has message {pos} from {sharegpt_role!r}, which is not one of {', '.join(sorted(_SHAREGPT_ROLES))}", FIX_OR_DROP)
    content = m.get("content")
    if content is None:
        content = m.get("value")
    if role is not None and not isinstance(role, str):
        raise RowProblem(field, f"has message {pos} whose role is {describe_value(role)}", "a role is a string such as 'user' or 'assistant'")
    if not role:
        raise RowProblem(field, f"has message {pos} without a role", "give every message a 'role' (or ShareGPT 'from')")
    tool_calls = m.get("tool_calls")
    if content is None and not tool_calls:
        raise RowProblem(field, f"has message {pos} without content", "give every message a 'content' (or ShareGPT 'value'), or an assistant message its 'tool_calls'")
    if tool_calls is not None and not isinstance(tool_calls, (list, tuple)):
        raise RowProblem(field, f"has message {pos} whose tool_calls is {describe_value(tool_calls)}", "tool_calls must be a list of {'type': 'function', 'function': {...}} calls")
    if content is not None and not isinstance(content, (str, list)):
        raise RowProblem(field, f"has message {pos} whose content is {describe_value(content)}", "content must be a string or a list of content parts")
    # an assistant turn that only calls tools keeps content None, as a datasets row gives it to TRL's chat template
    out = {"role": role, "content": content}
    for key, value in m.items():
        if key not in ("role", "content", "from", "value") and value is not None:
            out[key] = value
    return out


def message_list(value: list, field: str) -> list:
    """Every message of a list checked and normalised (ShareGPT ones too); RowProblem for a bad one."""
    return [_message(m, field, i) for i, m in enumerate(value)]


def completion(value: Any, field: str) -> Text:
    """A completion: a string, a message list, or one message (wrapped in a list)."""
    if value is None:
        raise RowProblem(field, "is None", "fill it in or drop the row")
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return [_message(value, field, 0)]
    if isinstance(value, (list, tuple)):
        return message_list(list(value), field)
    raise RowProblem(field, f"is {describe_value(value)}", "expected a string or a list of {'role', 'content'} messages")


def required_string(value: Any, field: str) -> str:
    """The value, which must be a string; RowProblem otherwise."""
    if value is None:
        raise RowProblem(field, "is None", "fill it in or drop the row")
    if not isinstance(value, str):
        raise RowProblem(field, f"is {describe_value(value)}", "expected a string")
    return value


def assistant_reply(text: str) -> list:
    """A string completion as one assistant message."""
    return [{"role": "assistant", "content": text}]


def system_string(system: Any) -> str | None:
    """A row's ``system`` value, checked: a string or None."""
    if system is not None and not isinstance(system, str):
        raise RowProblem("system", f"is {describe_value(system)}", "expected a string")
    return system


def with_system(prompt: list, system: str | None) -> list:
    """A message-list prompt opened by the row's system message (once: a prompt that already opens with a
    different one is an error; an empty system adds nothing)."""
    if not system:
        return prompt
    if prompt and prompt[0]["role"] == "system":
        if prompt[0]["content"] != system:
            raise RowProblem("system", "differs from the system message that already opens the prompt",
                             "keep only one of them")
        return prompt
    return [{"role": "system", "content": system}] + prompt


def is_blank(value: Text) -> bool:
    """An empty or whitespace string, or messages whose contents are all that (or empty lists)."""
    if isinstance(value, str):
        return not value.strip()
    return all((isinstance(m["content"], str) and not m["content"].strip() or m["content"] == [] or m["content"] is None)
               and not m.get("tool_calls") for m in value)


# ----------------------------------------------------------------- prompt extraction


def common_prefix_len(a, b) -> int:
    """How many leading items (characters, messages) two sequences share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def split_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """`extract_prompt` for normalised values, raising RowProblem (see the module docstring)."""
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise RowProblem("rejected", "is a different kind of value than chosen (one is a string, the other a message list)", "use two strings or two message lists")
    if chosen == rejected:
        raise RowProblem("rejected", "is identical to chosen", "a preference pair needs two different completions; drop the row")
    k = common_prefix_len(chosen, rejected)
    if isinstance(chosen, str):
        # Do not split a word: back up to just after the last whitespace.
        after = [s[k] for s in (chosen, rejected) if k < len(s)]
        if 0 < k and not chosen[k - 1].isspace() and (len(after) < 2 or any(not c.isspace() for c in after)):
            while k > 0 and not chosen[k - 1].isspace():
                k -= 1
        if k == 0:
            raise RowProblem("chosen", "shares no beginning with rejected, so no prompt can be extracted", "add a 'prompt' column")
    else:
        # The prompt must end right before an assistant message in both completions.
        while k > 0 and not (k < len(chosen) and k < len(rejected) and chosen[k]["role"] == "assistant" and rejected[k]["role"] == "assistant"):
            k -= 1
        if k == 0:
            raise RowProblem("chosen", "shares no messages with rejected before an assistant reply, so no prompt can be extracted", "add a 'prompt' column")
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
            chosen = completion(chosen, "chosen")
        if not isinstance(rejected, str):
            rejected = completion(rejected, "rejected")
        return split_prompt(chosen, rejected)
    except RowProblem as p:
        raise DataError(p.sentence(None, {})) from None
