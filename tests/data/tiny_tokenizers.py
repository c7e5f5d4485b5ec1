"""Tiny offline tokenizers with a fixed vocabulary, so tests can assert exact ids.

Every tokenizer shares `VOCAB` (a `tokenizers` WordLevel model, whitespace split),
so ``V["hello"]`` is the id of "hello" in all of them. Special tokens and the
newline are added tokens, matched inside text without surrounding spaces.

- ``plain``:  BOS "<s>" defined but NOT added by the tokenizer; EOS "</s>"; no chat template.
- ``llama3``: BOS "<|begin_of_text|>" added automatically (TemplateProcessing) and
  written by the chat template too ("{{ bos_token }}..."); EOS "<|eot_id|>".
- ``chatml``: no BOS; EOS "<|im_end|>"; each message ends with "<|im_end|>\\n".
- ``t5``:     T5-like, for encoder-decoder models: no BOS; appends EOS "</s>" by itself;
  pad "<pad>" (id 0, T5's decoder start).
- ``bart``:   BART-like: "<s> text </s>" added by itself (BOS "<s>", EOS "</s>"); pad "<pad>".
"""
from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIALS = [
    "<pad>", "<s>", "</s>", "<unk>",
    "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|im_start|>", "<|im_end|>",
]
NEWLINE = "\n"
WORDS = (
    "user assistant system Q: A: hello world how are you fine thanks good bad "
    "the cat sat on mat dog is answer yes no a b c d e f g h"
).split()
VOCAB = {token: i for i, token in enumerate([*SPECIALS, NEWLINE, *WORDS])}
V = VOCAB  # short name for tests

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|> "
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|> {% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _backend(auto_bos: str | None = None, auto_eos: str | None = None) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.add_tokens([AddedToken(NEWLINE, special=False, normalized=False)])
    if auto_bos is not None or auto_eos is not None:
        bos, eos = (f"{auto_bos} " if auto_bos else ""), (f" {auto_eos}" if auto_eos else "")
        specials = [(t, VOCAB[t]) for t in (auto_bos, auto_eos) if t is not None]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}$A{eos}", pair=f"{bos}$A{eos} $B:1{eos + ':1' if eos else ''}",
            special_tokens=specials,
        )
    return tok


def build(kind: str) -> PreTrainedTokenizerFast:
    if kind == "plain":
        return PreTrainedTokenizerFast(
            tokenizer_object=_backend(), bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
        )
    if kind == "llama3":
        tok = PreTrainedTokenizerFast(
            tokenizer_object=_backend("<|begin_of_text|>"),
            bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<pad>", unk_token="<unk>",
        )
        tok.chat_template = LLAMA3_TEMPLATE
        return tok
    if kind == "chatml":
        tok = PreTrainedTokenizerFast(
            tokenizer_object=_backend(), eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>"
        )
        tok.chat_template = CHATML_TEMPLATE
        return tok
    if kind == "t5":
        return PreTrainedTokenizerFast(
            tokenizer_object=_backend(auto_eos="</s>"), eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
        )
    if kind == "bart":
        return PreTrainedTokenizerFast(
            tokenizer_object=_backend("<s>", "</s>"), bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
        )
    raise ValueError(kind)


def save_and_load(tok, path):
    """Round-trip through disk: the same code path a hub id takes."""
    tok.save_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))
