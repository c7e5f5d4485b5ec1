"""A registry of well-known preference data sets: hub id, splits and a preprocessor.

``--dataset NAME`` looks NAME up here first (by registry name, alias or hub id), so
``--dataset Anthropic/hh-rlhf`` and ``--dataset hh-rlhf`` both load the hub set and
run its preprocessor. A preprocessor turns one raw row into a row of a shape that
`preftune.data.formats` accepts (prompt/chosen/rejected, possibly with ``system``),
and nothing more: it never drops or validates rows, so a bad row still reaches the
usual checks and is reported with its number.

Each preprocessor was written against the row format the set's card documents:

==================================================  ===========================================================
set                                                 raw row
==================================================  ===========================================================
shareAI/DPO-zh-en-emoji                             question, answer_zh (chosen), answer_en (rejected)
trl-lib/ultrafeedback_binarized                     chosen, rejected (full conversations), score_chosen/_rejected
mlabonne/orpo-dpo-mix-40k                           source, prompt, question (strings), chosen, rejected (conversations)
Anthropic/hh-rlhf                                   chosen, rejected: "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts
argilla/distilabel-capybara-dpo-7k-binarized        conversation, prompt, chosen, rejected (conversations), ratings, ...
argilla/distilabel-intel-orca-dpo-pairs             system, input, chosen, rejected (strings), status, chosen_score, ...
argilla/ultrafeedback-binarized-preferences-cleaned source, prompt, chosen, rejected (conversations), chosen-rating, ...
jondurbin/truthy-dpo-v0.1                           id, source, system, prompt, chosen, rejected (strings)
HuggingFaceH4/ultrafeedback_binarized               prompt, prompt_id, chosen, rejected, messages, scores; splits train_prefs/test_prefs
Intel/orca_dpo_pairs                                system, question, chosen, rejected (strings)
openbmb/UltraFeedback                               source, instruction, models, completions: [{model, response,
                                                    annotations, fine-grained_score, overall_score, ...}]
==================================================  ===========================================================

openbmb/UltraFeedback is UltraFeedback as published, before binarization: one prompt with (usually) four rated
completions. Its preprocessor (`ultrafeedback_row`) makes a list row (`preftune.data.lists`): ``instruction`` ->
``prompt``, each completion's ``response`` -> ``completions``, and as its score the completion's
``fine-grained_score`` (the mean of its four aspect ratings: helpfulness, honesty, instruction following,
truthfulness; HuggingFaceH4/ultrafeedback_binarized scores with the same mean since its overall_score fix), or
its ``overall_score`` where the fine-grained one is missing. A completion with neither keeps None, which the
row check reports (row and answer); so does a row whose answers all got the same score (no pair to learn from).

Decisions:

- Sets whose chosen/rejected already hold the whole conversation keep only those two
  columns (implicit prompt: everything before the final assistant reply), even when
  they also carry a string ``prompt``: the string duplicates the first user turn.
- Sets with a ``system`` column keep it, which makes their pairs conversational
  (the model's chat template is applied), as the recipes published with them do.
- No quality filters are applied (e.g. argilla's suggested ``status != "tie"``,
  ``chosen_score >= 8``): the set is used as published; filter it yourself if wanted.
- shareAI/DPO-zh-en-emoji holds several JSONL files on the hub; the four
  ``*_dpo_*.jsonl`` files are the question/answer_zh/answer_en rows that ms-swift's
  copy (``hjh0119/shareAI-Llama3-DPO-zh-en-emoji``) merges; the ``merged_*_for_firefly``
  file is another format and is not loaded.

This module imports the standard library only.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["RegistryEntry", "REGISTRY", "lookup", "names", "hh_transcript_to_messages", "suggest", "ultrafeedback_row",
           "ultrafeedback_score"]


@dataclass(frozen=True)
class RegistryEntry:
    """One well-known preference set."""

    name: str
    hub_id: str
    description: str
    preprocess: Callable[[Mapping[str, Any]], dict]
    raw_columns: tuple[str, ...]
    config: str | None = None
    data_files: tuple[str, ...] | None = None
    train_split: str = "train"
    test_split: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def keys(self) -> tuple[str, ...]:
        return (self.name, self.hub_id, *self.aliases)


# ----------------------------------------------------------------- preprocessors


def _user(content: Any) -> list[dict]:
    return [{"role": "user", "content": content}]


def _assistant(content: Any) -> list[dict]:
    return [{"role": "assistant", "content": content}]


def _shareai_emoji(row: Mapping[str, Any]) -> dict:
    return {"prompt": _user(row.get("question")), "chosen": _assistant(row.get("answer_zh")),
            "rejected": _assistant(row.get("answer_en"))}


def _conversations(row: Mapping[str, Any]) -> dict:
    """chosen/rejected already hold the whole conversation (implicit prompt)."""
    return {"chosen": row.get("chosen"), "rejected": row.get("rejected")}


def _system_prompt(prompt_column: str) -> Callable[[Mapping[str, Any]], dict]:
    def convert(row: Mapping[str, Any]) -> dict:
        system = row.get("system")
        return {"system": system if system is not None else "", "prompt": row.get(prompt_column),
                "chosen": row.get("chosen"), "rejected": row.get("rejected")}

    convert.__name__ = f"_system_{prompt_column}"
    return convert


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_transcript_to_messages(text: Any) -> Any:
    """An Anthropic HH transcript ``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> messages.

    A turn starts at a blank line followed by ``Human:`` or ``Assistant:``; anything
    else (including a blank line inside a turn) belongs to the turn before. Text
    before the first marker, if any, is kept as a first user turn. Values that are
    not strings are returned unchanged so that the row check reports them.
    """
    if not isinstance(text, str):
        return text
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")
    parts = _HH_TURN.split(text)
    messages = []
    if parts[0].strip():
        messages.append({"role": "user", "content": parts[0].strip()})
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": _HH_ROLES[role], "content": content.strip()})
    return messages


def _hh_rlhf(row: Mapping[str, Any]) -> dict:
    return {"chosen": hh_transcript_to_messages(row.get("chosen")),
            "rejected": hh_transcript_to_messages(row.get("rejected"))}


def _number(value: Any) -> float | None:
    """A rating as a float, or None when it is missing or not a finite number (UltraFeedback writes "N/A")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and value == value and value not in (float("inf"), float("-inf")):
        return float(value)
    return None


def ultrafeedback_score(answer: Any) -> float | None:
    """One openbmb/UltraFeedback completion's score: its ``fine-grained_score``, else its ``overall_score``,
    else None (the row check reports it)."""
    if not isinstance(answer, Mapping):
        return None
    for key in ("fine-grained_score", "overall_score"):
        score = _number(answer.get(key))
        if score is not None:
            return score
    return None


def ultrafeedback_row(row: Mapping[str, Any]) -> dict:
    """A raw openbmb/UltraFeedback row -> a list row ``{"prompt", "completions", "scores"}`` (see the module
    docstring). Values it cannot read are passed on as they are (a completion that is not a dict: as itself; a
    missing score: None), so that the row check names the row and the answer."""
    answers = row.get("completions")
    if not isinstance(answers, (list, tuple)):
        return {"prompt": row.get("instruction"), "completions": answers, "scores": None}
    return {"prompt": row.get("instruction"),
            "completions": [a.get("response") if isinstance(a, Mapping) else a for a in answers],
            "scores": [ultrafeedback_score(a) for a in answers]}


# ----------------------------------------------------------------------- the table

_ENTRIES = (
    RegistryEntry(
        "shareai-llama3-dpo-zh-en-emoji", "shareAI/DPO-zh-en-emoji",
        "Chinese questions; chosen: a Chinese answer with emoji, rejected: an English one (ms-swift's ORPO best practice).",
        _shareai_emoji, ("question", "answer_zh", "answer_en"),
        data_files=("0_dpo_loji.jsonl", "1_dpo_zhihu_1.jsonl", "1_dpo_zhihu_2.jsonl", "2_dpo_ruozhiba.jsonl"),
        aliases=("hjh0119/shareAI-Llama3-DPO-zh-en-emoji",),
    ),
    RegistryEntry(
        "ultrafeedback-binarized", "trl-lib/ultrafeedback_binarized",
        "UltraFeedback pairs as conversations (TRL's quick-start set).",
        _conversations, ("chosen", "rejected", "score_chosen", "score_rejected"), test_split="test",
    ),
    RegistryEntry(
        "orpo-dpo-mix-40k", "mlabonne/orpo-dpo-mix-40k",
        "A mix of 8 preference sets, as conversations (the ORPO Llama 3 tutorial's set).",
        _conversations, ("source", "prompt", "question", "chosen", "rejected"),
    ),
    RegistryEntry(
        "hh-rlhf", "Anthropic/hh-rlhf",
        "Anthropic's helpful/harmless dialogues; Human/Assistant transcripts become conversations.",
        _hh_rlhf, ("chosen", "rejected"), test_split="test",
    ),
    RegistryEntry(
        "capybara-dpo-7k", "argilla/distilabel-capybara-dpo-7k-binarized",
        "Multi-turn Capybara conversations with a chosen and a rejected last reply.",
        _conversations, ("source", "conversation", "prompt", "chosen", "rejected", "rating_chosen", "rating_rejected"),
    ),
    RegistryEntry(
        "distilabel-intel-orca-dpo-pairs", "argilla/distilabel-intel-orca-dpo-pairs",
        "Orca DPO pairs re-rated by distilabel: system + input, chosen/rejected strings.",
        _system_prompt("input"), ("system", "input", "chosen", "rejected", "status", "chosen_score", "in_gsm8k_train"),
    ),
    RegistryEntry(
        "ultrafeedback-binarized-cleaned", "argilla/ultrafeedback-binarized-preferences-cleaned",
        "UltraFeedback with argilla's mean-rating binarization and TruthfulQA decontamination.",
        _conversations, ("source", "prompt", "chosen", "chosen-rating", "chosen-model", "rejected", "rejected-rating", "rejected-model"),
    ),
    RegistryEntry(
        "truthy-dpo", "jondurbin/truthy-dpo-v0.1",
        "Truthfulness pairs with a system prompt: system, prompt, chosen/rejected strings.",
        _system_prompt("prompt"), ("id", "source", "system", "prompt", "chosen", "rejected"),
    ),
    RegistryEntry(
        "ultrafeedback-binarized-h4", "HuggingFaceH4/ultrafeedback_binarized",
        "Zephyr's UltraFeedback pairs (splits train_prefs / test_prefs).",
        _conversations, ("prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"),
        train_split="train_prefs", test_split="test_prefs",
    ),
    RegistryEntry(
        "orca-dpo-pairs", "Intel/orca_dpo_pairs",
        "Intel's Orca DPO pairs: system + question, chosen (GPT-4) / rejected (Llama-2-13B) strings.",
        _system_prompt("question"), ("system", "question", "chosen", "rejected"),
    ),
    RegistryEntry(
        "ultrafeedback", "openbmb/UltraFeedback",
        "UltraFeedback as published: each prompt with its (usually 4) rated completions, as a list row.",
        ultrafeedback_row, ("source", "instruction", "models", "completions", "correct_answers", "incorrect_answers"),
    ),
)

REGISTRY: dict[str, RegistryEntry] = {e.name: e for e in _ENTRIES}
_BY_KEY: dict[str, RegistryEntry] = {k.lower(): e for e in _ENTRIES for k in e.keys()}


def lookup(name: str) -> RegistryEntry | None:
    """The entry for a registry name, alias or hub id (case-insensitive), or None."""
    return _BY_KEY.get(name.lower())


def names() -> list[str]:
    return list(REGISTRY)


def suggest(name: str, n: int = 3) -> list[str]:
    """Registry names or hub ids close to `name`, for 'did you mean' messages."""
    keys = [k for e in _ENTRIES for k in (e.name, e.hub_id)]
    return difflib.get_close_matches(name, keys, n=n, cutoff=0.6)
