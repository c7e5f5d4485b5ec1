"""The one generation path: how preftune gets an answer out of a model, wherever it asks.

`preftune chat`, `preftune ui`, the answers logged at each evaluation (`generate_during_eval`)
and the demo's before/after samples all call `generate_answer`:

- decoding settings (`GenerationSettings`): greedy unless sampling is asked for, on top of
  the model's own generation config, always stopping at the tokenizer's EOS;
- prompts of a conversation go through the tokenizer's chat template (`chat_prompt_ids`);
- the answer is the part of `generate`'s output after the prompt for a decoder-only model,
  all of it for an encoder-decoder model (`answer_ids`), decoded without special tokens.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from preftune.errors import ConfigError


@dataclass
class GenerationSettings:
    """How each answer is decoded. `temperature` / `top_p` / `top_k` only act when sampling."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None

    def __post_init__(self):
        """Reject values generate() would reject later, mid-conversation, with a traceback."""
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max_new_tokens must be at least 1, not {self.max_new_tokens}.")
        if self.temperature is not None and self.temperature < 0:
            raise ConfigError(f"--temperature must be 0 (greedy) or more, not {self.temperature}.")
        if self.do_sample and self.temperature == 0:
            raise ConfigError("--temperature 0 means greedy decoding, which contradicts --do_sample; drop one of them.")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"--top_p must be in (0, 1], not {self.top_p}.")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"--top_k must be 0 (off) or more, not {self.top_k}.")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ConfigError(f"--repetition_penalty must be above 0 (1 means none), not {self.repetition_penalty}.")

    def generation_config(self, model, tokenizer):
        """The model's own generation config with these settings on top.

        Starting from the model's config keeps what its authors set (e.g. extra stop
        tokens); the sampling knobs are cleared in greedy mode so transformers does not
        warn that they are unused. The tokenizer's EOS is always a stop token: a run that
        switched the chat format (setup_chat_format) changed the EOS in the tokenizer,
        while an adapter folder keeps the base model's old generation config.
        """
        from transformers import GenerationConfig

        config = copy.deepcopy(getattr(model, "generation_config", None) or GenerationConfig())
        config.max_new_tokens = self.max_new_tokens
        config.max_length = None
        config.do_sample = self.do_sample
        if self.do_sample:
            for name in ("temperature", "top_p", "top_k"):
                if getattr(self, name) is not None:
                    setattr(config, name, getattr(self, name))
        else:
            config.temperature = config.top_p = config.top_k = None
        if self.repetition_penalty is not None:
            config.repetition_penalty = self.repetition_penalty
        config.eos_token_id = _stop_ids(config.eos_token_id, tokenizer.eos_token_id)
        if tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id
        return config


def _stop_ids(configured, tokenizer_eos) -> list[int]:
    ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    if tokenizer_eos is not None and tokenizer_eos not in ids:
        ids.append(tokenizer_eos)
    return ids


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template, ending where the assistant answers."""
    encoded = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_dict=True)
    return list(encoded["input_ids"])


def answer_ids(model, generated: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The answer's tokens in one row of `generate`'s output: a decoder-only model returns
    prompt + answer, an encoder-decoder model only the decoder's tokens (all answer)."""
    from preftune.logps import unwrap

    return generated if getattr(unwrap(model).config, "is_encoder_decoder", False) else generated[prompt_len:]


@torch.no_grad()
def generate_answer(model, tokenizer, prompt_ids: list[int], settings: GenerationSettings | None = None,
                    streamer=None) -> str:
    """One answer to a prompt given as token ids (chat template already applied), special tokens removed and
    surrounding whitespace stripped. The model is in eval mode while it generates (no dropout), then back in
    the mode it was in; `streamer` (a transformers streamer) sees the tokens as they come."""
    settings = settings or GenerationSettings()
    was_training = model.training
    model.eval()
    input_ids = torch.tensor([list(prompt_ids)], device=next(model.parameters()).device)
    try:
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             generation_config=settings.generation_config(model, tokenizer), streamer=streamer)
    finally:
        model.train(was_training)
    return tokenizer.decode(answer_ids(model, out[0], len(prompt_ids)), skip_special_tokens=True).strip()


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 48) -> list[str]:
    """One greedy answer per conversational prompt (a message list), special tokens removed."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    return [generate_answer(model, tokenizer, chat_prompt_ids(tokenizer, messages), settings) for messages in prompts]
