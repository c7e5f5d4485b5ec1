"""Greedy answers from a chat model, for the demo's before/after samples."""
from __future__ import annotations

import torch


def answer_ids(model, generated: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The answer's tokens in one row of `generate`'s output: a decoder-only model returns
    prompt + answer, an encoder-decoder model only the decoder's tokens (all answer)."""
    from preftune.logps import unwrap

    return generated if getattr(unwrap(model).config, "is_encoder_decoder", False) else generated[prompt_len:]


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 48) -> list[str]:
    """One greedy answer per conversational prompt (a message list), special tokens removed."""
    was_training = model.training
    model.eval()
    answers = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = {k: v.to(model.device) for k, v in ids.items()}
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(answer_ids(model, out[0], ids["input_ids"].shape[1]), skip_special_tokens=True).strip())
    model.train(was_training)
    return answers
