"""Tiny random-init models for tests, built offline."""
import torch


def tiny_causal_lm(arch: str = "llama", vocab_size: int = 96, seed: int = 0):
    """A 2-layer random-init causal LM of the given family."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    if arch == "llama":
        cfg = tf.LlamaConfig(intermediate_size=64, num_key_value_heads=2, **common)
        return tf.LlamaForCausalLM(cfg)
    if arch == "qwen2":
        cfg = tf.Qwen2Config(intermediate_size=64, num_key_value_heads=2, **common)
        return tf.Qwen2ForCausalLM(cfg)
    if arch == "mistral":
        cfg = tf.MistralConfig(intermediate_size=64, num_key_value_heads=2, **common)
        return tf.MistralForCausalLM(cfg)
    if arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256)
        return tf.GPT2LMHeadModel(cfg)
    raise ValueError(arch)
