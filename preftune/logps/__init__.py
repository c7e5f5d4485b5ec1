"""Per-sequence log-probabilities of preference batches, never the full (batch, seq, vocab) logits.

`causal` (chunked LM head over the scored hidden states), `head` (a linear head's closed-form
backward), `prefix` (each pair's prompt run once), `seq2seq` (encoder-decoder models, the
encoder run once per pair) and the dispatch that picks one of them for a model.
"""
from preftune.logps.causal import LogpsOptions, SequenceLogps, plain_sequence_logps, sequence_logps

__all__ = ["LogpsOptions", "SequenceLogps", "sequence_logps", "plain_sequence_logps"]
