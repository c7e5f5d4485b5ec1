"""Per-sequence log-probabilities of preference batches, never the full (batch, seq, vocab) logits.

`dispatch` decides once per model which path computes them — `causal` (the chunked LM head
over the scored hidden states, `head` being a linear head's closed-form backward), `prefix`
(each pair's prompt run once), `seq2seq` (encoder-decoder models, the encoder run once per
pair), `packing` (padding_free: a batch's rows as one row) — and `base` holds what they share: the options, the objective's request, the result.
"""
from preftune.logps.base import LogpsOptions, LogpsRequest, SequenceLogps, unwrap
from preftune.logps.causal import plain_sequence_logps, sequence_logps
from preftune.logps.dispatch import LogpsPath, choose_logps_path, is_encoder_decoder_model, is_vision_model

__all__ = ["LogpsOptions", "LogpsRequest", "SequenceLogps", "LogpsPath", "choose_logps_path", "sequence_logps",
           "plain_sequence_logps", "unwrap", "is_encoder_decoder_model", "is_vision_model"]
