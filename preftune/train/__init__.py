"""Training: configs, the trainers (each family owns its wiring), objectives, reference providers
(+ precompute, TR-DPO sync), the non-finite guard, checkpoints and parallel presets."""
