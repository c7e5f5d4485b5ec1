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


def tiny_seq2seq_lm(arch: str = "t5", vocab_size: int = 48, seed: int = 0):
    """A 2+2-layer random-init encoder-decoder LM: "t5" (pad 0 = decoder start, EOS 2, tied embeddings,
    so the decoder output is rescaled before the head) or "bart" (BOS 1, EOS 2 = decoder start, pad 0,
    with a non-zero final_logits_bias so tests see it used); "mt5" and "mbart" the same shapes in those
    families' classes. Ids match tests/data/tiny_tokenizers.py."""
    import transformers as tf

    torch.manual_seed(seed)
    if arch in ("t5", "mt5"):
        config_cls, model_cls = (tf.T5Config, tf.T5ForConditionalGeneration) if arch == "t5" else \
            (tf.MT5Config, tf.MT5ForConditionalGeneration)
        cfg = config_cls(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                         num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                         pad_token_id=0, eos_token_id=2, decoder_start_token_id=0,
                         tie_word_embeddings=arch == "t5")  # mT5 unties its head, as the released models do
        return model_cls(cfg)
    if arch in ("bart", "mbart"):
        config_cls, model_cls = (tf.BartConfig, tf.BartForConditionalGeneration) if arch == "bart" else \
            (tf.MBartConfig, tf.MBartForConditionalGeneration)
        cfg = config_cls(vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None)
        model = model_cls(cfg)
        with torch.no_grad():
            model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias) * 0.5)
        return model
    raise ValueError(arch)
