"""preftune: preference fine-tuning (ORPO, DPO and the DPO family) on the Hugging Face stack.

Drop-in for TRL's trainers: `from preftune import ORPOConfig, ORPOTrainer, DPOConfig,
DPOTrainer, setup_chat_format`. Heavy imports are deferred so `import preftune.losses`
stays light (it must not import transformers).
"""
__version__ = "0.1.0"

_LAZY = {
    "ORPOConfig": "train.config",
    "DPOConfig": "train.dpo_config",
    "PreferenceConfig": "train.config",
    "ORPOTrainer": "train.orpo",
    "CPOConfig": "train.cpo_config",
    "CPOTrainer": "train.cpo",
    "DPOTrainer": "train.dpo",
    "KTOConfig": "train.kto_config",
    "KTOTrainer": "train.kto",
    "PreferenceTrainer": "train.trainer",
    "setup_chat_format": "models",
    "UserError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'preftune' has no attribute {name!r}")
