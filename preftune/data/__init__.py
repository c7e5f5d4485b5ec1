"""Preference data: row shapes -> pairs -> token ids -> batches."""
