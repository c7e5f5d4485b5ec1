"""What this machine and its installed packages allow, checked when a config is built: bf16 and an
accelerator for pinned memory, precision flags in words (seed 000's V100 note), and the tracker
packages `report_to` names."""
from __future__ import annotations

import torch

from preftune.errors import ConfigError


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def accelerator_available() -> bool:
    """A device that pinned (page-locked) host memory speeds copies to: CUDA, XPU, MPS, ..."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def check_precision(args) -> None:
    """bf16 asked for where the hardware lacks it: say so in words (seed 000's V100 note)."""
    if not args.bf16:
        return
    if torch.cuda.is_available() and not args.use_cpu and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"bf16 needs a GPU with bf16 support (Ampere or newer), and {torch.cuda.get_device_name()} "
                          "has none; use --dtype fp16 (or --dtype AUTO, which picks it).")
    accelerators = [getattr(torch, name, None) for name in ("xpu", "mps", "npu")]
    has_other = any(a is not None and hasattr(a, "is_available") and a.is_available() for a in accelerators)
    if not torch.cuda.is_available() and not has_other and not args.use_cpu:
        raise ConfigError("bf16 was asked for but this machine has no GPU; pass --use_cpu true to train in bf16 on the "
                          "CPU (slow), or drop --bf16 / use --dtype fp32.")


# report_to name -> (modules any one of which must import, what to install)
TRACKERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet_ml"),
    "trackio": (("trackio",), "trackio"),
}


def check_trackers(report_to) -> None:
    """A tracker named in report_to whose package is missing fails here, not at the first log."""
    import importlib.util

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name in TRACKERS:
            modules, package = TRACKERS[name]
            if not any(importlib.util.find_spec(m) for m in modules):
                raise ConfigError(f"report_to={name!r} needs the {package} package, which is not installed; "
                                  f"pip install {package}, or pass --report_to none.")


