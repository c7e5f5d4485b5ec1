"""PreferencePair -> token ids, and truncation to length limits.

Tokenization
------------
Conversational pairs are rendered with the tokenizer's chat template::

    prompt_text = apply_chat_template(prompt, add_generation_prompt=True)
    chosen_text = apply_chat_template(prompt + chosen) minus prompt_text at its start

Every call gets the row's ``tools`` and ``chat_template_kwargs`` as TRL passes them:
``apply_chat_template(..., tools=tools, **chat_template_kwargs)``. For a
vision-language model's processor the pair first gets its image placeholders
(`preftune.data.images.with_image_placeholders`).

Standard pairs use their strings as they are. The three texts are tokenized
separately with ``add_special_tokens=False``, then:

- BOS: if the tokenizer adds a BOS by itself (``tokenizer("a").input_ids[0] ==
  bos_token_id``) and the prompt ids do not already start with it, it is put in
  front. It is never doubled (a Llama-3 template already writes
  ``<|begin_of_text|>``).
- EOS: each completion ends with EOS exactly once. If its ids hold EOS followed
  only by whitespace tokens (ChatML's ``<|im_end|>\\n``) they are cut after that
  EOS; otherwise EOS is appended unless it is already last.

Truncation (`truncate_pair`), decoder-only models
-------------------------------------------------
``max_completion_length`` (when set) first cuts each completion to its first N ids.
Then, with ``max_prompt_length`` None (the default; TRL 1.16 has no such field), the
ids TRL 1.16's DPO collator keeps (``sequence[:max_length]`` / ``[-max_length:]`` of
prompt + chosen and of prompt + rejected):

- ``keep_start`` (default): a pair whose prompt alone is ``max_length`` ids or more is
  dropped (TRL's ``_prepare_dataset`` filter; counted as ``n_dropped_long_prompt``);
  otherwise each completion keeps its first ``max_length - len(prompt)`` ids. Exactly
  TRL's tokens. TRL 1.16's experimental ORPO (prompt never cut, answers cut to
  ``max_length - len(prompt)``) gives the same ids, except that it keeps a pair left
  with an empty answer, which preftune drops.
- ``keep_end`` (deprecated in TRL 1.16): TRL cuts each of the two sequences to its
  last ``max_length`` ids separately; preftune has one prompt per pair (prefix
  sharing), so the prompt keeps its last ``max_length - max(len(chosen),
  len(rejected))`` ids: the LONGER sequence is exactly TRL's, the shorter one gets the
  same (shorter) prompt where TRL would keep more of it. The BOS goes with the rest of
  the prompt's start, as in TRL. A pair whose longer completion alone is ``max_length``
  ids or more (TRL would train it with no prompt at all) is dropped
  (``n_dropped_long_completion``). Example, ``max_length=6``, prompt ``p1..p6``,
  chosen ``c1 c2 c3``, rejected ``r1``: TRL trains ``p4 p5 p6 c1 c2 c3`` and
  ``p2 p3 p4 p5 p6 r1``; preftune ``p4 p5 p6 c1 c2 c3`` and ``p4 p5 p6 r1``.

With ``max_prompt_length`` set (older TRL scripts), the older rules:

1. If ``len(prompt) + max(len(chosen), len(rejected)) > max_length``: the prompt is
   cut to ``max_prompt_length`` ids (``keep_end`` drops its start, keeping a leading
   BOS; ``keep_start`` its end), then each completion keeps its first
   ``max_length - len(prompt)`` ids. ``max_prompt_length`` therefore only matters for
   pairs longer than ``max_length``, as in TRL 0.x's ORPO/DPO trainers.
2. A pair with an empty completion after this is dropped.

A prompt holding image tokens is never cut (``keep_prompt``), in every mode: only the
completions are, and a pair whose prompt leaves no room is dropped. A None limit means
no limit; a dropped pair makes `truncate_pair` return None and `drop_reason` says why.

Departures from TRL, and why:

- Completions are cut to ``max_length - len(prompt)`` (the room actually left),
  not TRL 0.8-0.11's ``max_length - max_prompt_length``.
- A completion that is cut loses its EOS and none is re-added: the model did not
  finish there, so teaching it to stop there would be wrong (TRL 1.16 does the same).
- Pairs whose completion would be empty are dropped instead of trained on.
- Chat-templated completions end at the template's own end-of-turn token when it
  is the EOS (ChatML), so the trailing newline after ``<|im_end|>`` is not trained.

Encoder-decoder models (T5, BART; ``is_encoder_decoder=True``)
--------------------------------------------------------------
The prompt is the encoder's input and each completion is a decoder target, two
separate sequences, so the same three columns hold different things:

- All three texts are tokenized WITH the tokenizer's own special tokens, as
  ``tokenizer(text)`` / ``tokenizer(text_target=...)`` do in seq2seq fine-tuning:
  T5 gives ``prompt </s>`` and ``completion </s>``; BART ``<s> prompt </s>`` and
  ``<s> completion </s>`` (BART generates with ``<s>`` forced first, so its targets
  start with it). A BOS doubled by a chat template that writes it is kept once.
  Each completion then ends with EOS exactly once (rule above). The model's
  ``decoder_start_token_id`` is never in the ids: it is put in front by the shift
  right of the targets (`preftune.logps.seq2seq`).
- Truncation (`truncate_pair(..., is_encoder_decoder=True)`), TRL's seq2seq
  semantics, with ``max_length`` kept as a cap on every sequence: the prompt is cut
  to ``max_prompt_length`` ids (or ``max_length`` when that is None) whatever the
  completions' length, keeping its leading BOS and closing EOS where the tokenizer
  added them (``keep_end`` drops the start of the text, ``keep_start`` its end);
  each completion keeps its first ``max_completion_length`` ids, and never more than
  ``max_length``. A cut completion loses its EOS (as above); a pair left with an
  empty completion is dropped.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from preftune.data.formats import PreferencePair
from preftune.data.images import is_vision_processor, with_image_placeholders
from preftune.errors import ConfigError, DataError

TRUNCATION_MODES = ("keep_end", "keep_start")


@dataclass(frozen=True)
class LengthLimits:
    """Token limits for one pair; None means no limit. Mirrors the config flags."""

    max_length: int | None = 1024
    max_prompt_length: int | None = None  # None: TRL 1.16's rules (no prompt limit); set: the older trainers' rules
    max_completion_length: int | None = None
    truncation_mode: str = "keep_start"

    def __post_init__(self) -> None:
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"--{name} must be a positive whole number of tokens or None (no limit), not {value!r}.")
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ConfigError(
                f"--truncation_mode must be 'keep_start' (keep the first --max_length tokens) or 'keep_end' (keep the last ones), not {self.truncation_mode!r}."
            )
        if self.max_length is not None and self.max_prompt_length is not None and self.max_prompt_length > self.max_length:
            raise ConfigError(
                f"--max_prompt_length ({self.max_prompt_length}) is larger than --max_length ({self.max_length}), so a cut prompt could leave no room for the completion; lower --max_prompt_length or raise --max_length."
            )


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair. `bos_token_id` is the tokenizer's BOS (or None), so
    that truncation can keep a leading BOS."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    bos_token_id: int | None = None
    eos_token_id: int | None = None  # encoder-decoder pairs: the EOS that closes the prompt, kept by truncation


# ------------------------------------------------------------------------ specials


@dataclass
class SpecialTokens:
    """What a tokenizer does with BOS and EOS (`special_tokens`), as the pair rules need it."""

    bos: int | None
    eos: int
    adds_bos: bool
    key: tuple
    whitespace: dict = field(default_factory=dict)  # token id -> bool
    adds_eos: bool = False  # the tokenizer appends EOS by itself (T5, BART)


_SPECIALS: "weakref.WeakKeyDictionary[Any, SpecialTokens]" = weakref.WeakKeyDictionary()


def text_tokenizer(tokenizer):
    """The text tokenizer inside a processor, or the tokenizer itself."""
    inner = getattr(tokenizer, "tokenizer", None)
    return inner if inner is not None and callable(inner) else tokenizer


def special_tokens(tokenizer) -> SpecialTokens:
    """BOS/EOS facts about a tokenizer, cached per tokenizer (re-read if its
    special tokens or vocabulary size change, e.g. after setup_chat_format).
    ConfigError when it has no EOS token."""
    tok = text_tokenizer(tokenizer)
    key = (tok.bos_token_id, tok.eos_token_id, len(tok))
    try:
        cached = _SPECIALS.get(tok)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None and cached.key == key:
        return cached
    bos, eos = tok.bos_token_id, tok.eos_token_id
    if eos is None:
        raise ConfigError("The tokenizer has no eos_token, so completions cannot be ended; set tokenizer.eos_token (e.g. to the model's end-of-turn token).")
    ids = tok("a")["input_ids"]
    specials = SpecialTokens(bos, eos, bos is not None and len(ids) > 0 and ids[0] == bos, key,
                         adds_eos=len(ids) > 0 and ids[-1] == eos)
    try:
        _SPECIALS[tok] = specials
    except TypeError:
        pass
    return specials


def _is_whitespace(tok, specials: SpecialTokens, token_id: int) -> bool:
    cached = specials.whitespace.get(token_id)
    if cached is None:
        text = tok.decode([token_id])
        cached = specials.whitespace[token_id] = bool(text) and text.isspace()
    return cached


def _end_with_eos(ids: list[int], tok, specials: SpecialTokens) -> list[int]:
    eos = specials.eos
    last = len(ids) - 1
    while last >= 0 and ids[last] != eos:
        last -= 1
    if last >= 0 and all(_is_whitespace(tok, specials, t) for t in ids[last + 1:]):
        return ids[: last + 1]
    return ids + [eos]


def finish_ids(prompt_ids: list[int], completions: list[list[int]], tok, specials: SpecialTokens) -> tuple[list[int], list[list[int]]]:
    """Decoder-only ids (tokenized without specials) finished by the BOS/EOS rules (module docstring): the prompt
    with BOS once where the tokenizer uses one, each completion ending with EOS exactly once. Any number of
    completions: a pair's two, or a list row's N (`preftune.data.list_prepare`)."""
    if specials.adds_bos and (not prompt_ids or prompt_ids[0] != specials.bos):
        prompt_ids = [specials.bos] + prompt_ids
    return list(prompt_ids), [_end_with_eos(list(ids), tok, specials) for ids in completions]


def _finish(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], tok, specials: SpecialTokens) -> TokenizedPair:
    prompt_ids, (chosen_ids, rejected_ids) = finish_ids(prompt_ids, [chosen_ids, rejected_ids], tok, specials)
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, specials.bos)


def _finish_encoder_decoder(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int], tok,
                            specials: SpecialTokens) -> TokenizedPair:
    """Encoder-decoder pair from ids tokenized WITH special tokens (see the module docstring)."""
    prompt_ids = list(prompt_ids)
    if specials.bos is not None and prompt_ids[:2] == [specials.bos, specials.bos]:
        prompt_ids = prompt_ids[1:]  # a chat template wrote the BOS the tokenizer adds too
    if prompt_ids[-2:] == [specials.eos, specials.eos]:
        prompt_ids = prompt_ids[:-1]  # the text ended with the EOS the tokenizer appends too

    def target(ids: list[int]) -> list[int]:
        ids = list(ids)
        if specials.adds_eos and ids and ids[-1] == specials.eos:
            ids = ids[:-1]  # the tokenizer's own EOS; the rule below puts exactly one back
        return _end_with_eos(ids, tok, specials)

    return TokenizedPair(
        prompt_ids,
        target(chosen_ids),
        target(rejected_ids),
        specials.bos if specials.adds_bos else None,
        specials.eos if specials.adds_eos else None,
    )


def finish_pair(prompt_ids, chosen_ids, rejected_ids, tok, specials: SpecialTokens, *,
                is_encoder_decoder: bool = False) -> TokenizedPair:
    """`_finish` for decoder-only ids (tokenized without specials), `_finish_encoder_decoder` otherwise."""
    finish = _finish_encoder_decoder if is_encoder_decoder else _finish
    return finish(prompt_ids, chosen_ids, rejected_ids, tok, specials)


def finished_pair(prompt_ids, chosen_ids, rejected_ids, specials: SpecialTokens, *,
                  is_encoder_decoder: bool = False) -> TokenizedPair:
    """A `TokenizedPair` of ids `finish_pair` already finished (a prepared data set's row), with the
    BOS/EOS it records, so that `truncate_pair` cuts it as it did when the data was prepared."""
    if is_encoder_decoder:
        return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, specials.bos if specials.adds_bos else None,
                             specials.eos if specials.adds_eos else None)
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids, specials.bos)


# ----------------------------------------------------------------------- rendering


def _where(index: int | None) -> str:
    return "this row" if index is None else f"row {index}"


def _apply_template(tokenizer, messages: list, index: int | None, **kwargs) -> str:
    try:
        from jinja2 import TemplateError
    except ImportError:  # pragma: no cover - jinja2 comes with transformers
        TemplateError = Exception  # noqa: N806
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except TypeError as e:  # a chat_template_kwargs key the call does not take
        raise DataError(f"{_where(index)}: apply_chat_template refused the row's chat_template_kwargs ({e}); fix or drop them.") from None
    except TemplateError as e:
        raise DataError(f"{_where(index)}: the chat template rejected the messages ({e}); fix the conversation (e.g. roles must alternate) or drop the row.") from None
    if not isinstance(text, str):  # pragma: no cover - defensive
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    return text


def render_pair(pair: PreferencePair, tokenizer, *, index: int | None = None) -> tuple[str, str, str]:
    """The ``(prompt, chosen, rejected)`` texts to tokenize; conversational pairs
    go through the chat template, with the row's ``tools`` and ``chat_template_kwargs``
    (see the module docstring). A vision-language model's processor first gets the
    image placeholders it needs (`preftune.data.images.with_image_placeholders`)."""
    if is_vision_processor(tokenizer):
        pair = with_image_placeholders(pair, tokenizer)
    if not pair.is_conversational:
        return pair.prompt, pair.chosen, pair.rejected
    prompt_text, (chosen, rejected) = render_conversation(
        pair.prompt, [("chosen", pair.chosen), ("rejected", pair.rejected)], pair.chat_template_kwargs(), tokenizer,
        index=index)
    return prompt_text, chosen, rejected


def render_conversation(prompt, completions: list[tuple[str, list]], kwargs: dict, tokenizer, *,
                        index: int | None = None) -> tuple[str, list[str]]:
    """A conversational prompt and its completions (``(name, messages)``, the name for messages) rendered with
    the chat template: the prompt text (with the generation prompt) and each completion's text after it.
    `kwargs`: the row's chat-template keywords (TRL: ``{"tools": tools, **chat_template_kwargs}``, for every
    call alike). Shared by pairs (`render_pair`) and list rows (`preftune.data.list_prepare`)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "The data is conversational (message lists, or strings with a 'system' column) but the tokenizer has no chat template; set one, e.g. with preftune.setup_chat_format(model, tokenizer), or use a model that ships one."
        )
    prompt = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    prompt_text = _apply_template(tokenizer, prompt, index, **{**kwargs, "add_generation_prompt": True})
    texts = []
    for name, completion in completions:
        full = _apply_template(tokenizer, prompt + list(completion), index, **kwargs)
        if not full.startswith(prompt_text):
            raise DataError(
                f"{_where(index)}: the chat template renders the prompt differently with and without the {name} reply, so the reply cannot be cut out of the text; use a template whose generation prompt is a prefix of the rendered conversation, or pass plain-string pairs."
            )
        texts.append(full[len(prompt_text):])
    return prompt_text, texts


def tokenize_pair(pair: PreferencePair, tokenizer, *, index: int | None = None,
                  is_encoder_decoder: bool = False) -> TokenizedPair:
    """Token ids for one pair: BOS once at the start of the prompt (if the tokenizer
    uses one), EOS exactly once at the end of each completion. No truncation.

    With `is_encoder_decoder`, the prompt (encoder input) and the completions
    (decoder targets) carry the tokenizer's own special tokens; see the module docstring."""
    specials = special_tokens(tokenizer)
    texts = render_pair(pair, tokenizer, index=index)
    tok = text_tokenizer(tokenizer)
    ids = tok(list(texts), add_special_tokens=is_encoder_decoder)["input_ids"]
    return finish_pair(ids[0], ids[1], ids[2], tok, specials, is_encoder_decoder=is_encoder_decoder)


# ---------------------------------------------------------------------- truncation


def _smallest(*values: int | None) -> int | None:
    given = [v for v in values if v is not None]
    return min(given) if given else None


def _cut_encoder_prompt(tp: TokenizedPair, keep: int | None, mode: str) -> list[int]:
    """The prompt cut to `keep` ids, its tokenizer-added leading BOS and closing EOS kept."""
    prompt = tp.prompt_ids
    if keep is None or len(prompt) <= keep:
        return prompt
    head = int(tp.bos_token_id is not None and prompt[0] == tp.bos_token_id)
    tail = int(tp.eos_token_id is not None and len(prompt) > head and prompt[-1] == tp.eos_token_id)
    if keep < head + tail:  # room for one special only: the end the mode keeps
        return prompt[:keep] if mode == "keep_start" else prompt[len(prompt) - keep:]
    body, room = prompt[head: len(prompt) - tail], keep - head - tail
    body = body[:room] if mode == "keep_start" else body[len(body) - room:]
    return prompt[:head] + body + prompt[len(prompt) - tail:]


def _truncate_encoder_decoder(tp: TokenizedPair, limits: LengthLimits) -> TokenizedPair | None:
    prompt = _cut_encoder_prompt(tp, _smallest(limits.max_prompt_length, limits.max_length), limits.truncation_mode)
    keep = _smallest(limits.max_completion_length, limits.max_length)
    chosen, rejected = tp.chosen_ids, tp.rejected_ids
    if keep is not None:
        chosen, rejected = chosen[:keep], rejected[:keep]
    if not chosen or not rejected:
        return None
    if prompt is tp.prompt_ids and len(chosen) == len(tp.chosen_ids) and len(rejected) == len(tp.rejected_ids):
        return tp
    return TokenizedPair(list(prompt), list(chosen), list(rejected), tp.bos_token_id, tp.eos_token_id)


# Why `truncate_pair` dropped a pair (`drop_reason`).
PROMPT_FILLS_MAX_LENGTH = "prompt"  # the prompt alone is max_length tokens or more
COMPLETION_FILLS_MAX_LENGTH = "completion"  # keep_end: the longer completion alone is max_length tokens or more
EMPTY_COMPLETION = "empty"  # any other pair left with an empty completion


def _trl_truncate(prompt: list[int], completions: list[list[int]], limits: LengthLimits,
                  keep_prompt: bool) -> tuple | None:
    """TRL 1.16's truncation (`max_prompt_length` None; see the module docstring)."""
    max_length = limits.max_length
    longest = max(len(c) for c in completions)
    if len(prompt) + longest <= max_length:
        return prompt, completions
    if limits.truncation_mode == "keep_start" or keep_prompt:
        room = max_length - len(prompt)  # each sequence keeps its first max_length ids: the prompt whole
        if room <= 0:
            return None
        return prompt, [c[:room] for c in completions]
    keep = max_length - longest  # keep_end: the longest sequence keeps its last max_length ids, as in TRL
    if keep <= 0:
        return None
    return prompt[len(prompt) - keep:], completions


def truncate_ids(prompt: list[int], completions: list[list[int]], limits: LengthLimits, *,
                 bos_token_id: int | None = None, keep_prompt: bool = False) -> tuple[list[int], list[list[int]]] | None:
    """`truncate_pair`'s decoder-only rules for one prompt and any number of completions (a pair's two, a list
    row's N): ``(prompt, completions)``, or None when the row must be dropped (an empty completion; `drop_reason`).
    "The longer completion" of the pair rules is the longest of them all, so the prompt is cut once for all.
    A prompt or completion that is not cut is returned as the same list object."""
    if limits.max_completion_length is not None:
        completions = [c[: limits.max_completion_length] for c in completions]
    max_length = limits.max_length
    if max_length is not None and limits.max_prompt_length is None:
        cut = _trl_truncate(prompt, completions, limits, keep_prompt)
        if cut is None:
            return None
        prompt, completions = cut
    elif max_length is not None and len(prompt) + max(len(c) for c in completions) > max_length:
        keep = None if keep_prompt else limits.max_prompt_length
        if keep is not None and len(prompt) > keep:
            if limits.truncation_mode == "keep_start":
                prompt = prompt[:keep]
            elif bos_token_id is not None and prompt[0] == bos_token_id:
                prompt = prompt[:1] + prompt[len(prompt) - keep + 1:]  # keep BOS + the last keep-1
            else:
                prompt = prompt[len(prompt) - keep:]
        room = max(max_length - len(prompt), 0)
        completions = [c[:room] for c in completions]
    if not all(completions):
        return None
    return prompt, completions


def truncate_pair(tp: TokenizedPair, limits: LengthLimits, *, is_encoder_decoder: bool = False,
                  keep_prompt: bool = False) -> TokenizedPair | None:
    """Apply `limits` (see the module docstring). Returns `tp` itself when nothing
    is cut, and None when the pair must be dropped (`drop_reason` says why; the caller
    counts it). `is_encoder_decoder`: the encoder-decoder rules (prompt and
    completions limited separately). `keep_prompt`: the prompt is never cut (it holds
    image tokens, see `preftune.data.images`); only the completions are, and a pair
    whose prompt leaves no room for them is dropped (None)."""
    if is_encoder_decoder:
        return _truncate_encoder_decoder(tp, limits)
    cut = truncate_ids(tp.prompt_ids, [tp.chosen_ids, tp.rejected_ids], limits, bos_token_id=tp.bos_token_id,
                       keep_prompt=keep_prompt)
    if cut is None:
        return None
    prompt, (chosen, rejected) = cut
    if prompt is tp.prompt_ids and len(chosen) == len(tp.chosen_ids) and len(rejected) == len(tp.rejected_ids):
        return tp
    return TokenizedPair(list(prompt), list(chosen), list(rejected), tp.bos_token_id)


def drop_reason(tp: TokenizedPair, limits: LengthLimits, *, is_encoder_decoder: bool = False,
                keep_prompt: bool = False) -> str:
    """Why `truncate_pair` returned None for `tp`: `PROMPT_FILLS_MAX_LENGTH` (decoder-only pairs whose
    prompt alone is max_length ids or more, dropped as TRL 1.16 drops them), `COMPLETION_FILLS_MAX_LENGTH`
    (keep_end without max_prompt_length: the longer completion alone fills max_length), or
    `EMPTY_COMPLETION`."""
    if is_encoder_decoder:
        return EMPTY_COMPLETION
    return ids_drop_reason(len(tp.prompt_ids), limits, keep_prompt=keep_prompt)


def ids_drop_reason(n_prompt_ids: int, limits: LengthLimits, *, keep_prompt: bool = False) -> str:
    """`drop_reason` for decoder-only ids that `truncate_ids` dropped, from the prompt's length."""
    if limits.max_length is None or limits.max_prompt_length is not None:
        return EMPTY_COMPLETION
    if limits.truncation_mode == "keep_end" and not keep_prompt:
        return COMPLETION_FILLS_MAX_LENGTH
    return PROMPT_FILLS_MAX_LENGTH if n_prompt_ids >= limits.max_length else EMPTY_COMPLETION
