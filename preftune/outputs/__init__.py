"""What a run leaves behind besides the model: the metric history (`history`), the training curves
(`curves`), the model card (`card`, with `loading` for how each kind of model is loaded), the redaction
of secrets and paths from anything shared (`redact`), answers to fixed eval prompts (`generations`),
atomic file writes (`files`), and `report`, which writes a finished run's files."""
