"""``NPROC_PER_NODE=N preftune orpo ...``: re-run the same command in N processes through torchrun.

As ms-swift does: the environment says how many processes (``NPROC_PER_NODE``) and,
for several machines, ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.
preftune then runs ``torchrun --nproc_per_node N -m preftune ARGS...`` (as
``python -m torch.distributed.run``, so that it is the same Python and the same
torch) with those variables removed, so the children train instead of launching
again. Each child is an ordinary data-parallel process (accelerate picks NCCL on
GPUs, gloo on CPUs); we never write our own distributed engine.

On one machine torchrun runs with ``--standalone`` (a free rendezvous port, so
two runs on one machine do not collide) unless ``MASTER_PORT`` is set. On a machine
without a CUDA GPU the children get ``ACCELERATE_USE_CPU=true`` (what ``accelerate
launch --cpu`` sets): without it, transformers would run N independent copies of
the whole training instead of one data-parallel run over gloo.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Mapping, Sequence

from preftune.errors import ConfigError

LAUNCH_VARIABLES = ("NPROC_PER_NODE", "NNODES", "NODE_RANK")
_TORCHRUN_WORDS = ("auto", "cpu", "gpu")  # also accepted by torchrun's --nproc_per_node


def under_torchrun(env: Mapping[str, str]) -> bool:
    """Whether this process was itself started by torchrun (or another launcher)."""
    return "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env


def _positive_int(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name, default)
    if value is None or not value.strip().isdigit() or int(value) < 1:
        raise ConfigError(f"{name}={value!r} must be a positive whole number of {'processes' if name == 'NPROC_PER_NODE' else 'nodes'}.")
    return str(int(value))


def torchrun_command(argv: Sequence[str], env: Mapping[str, str] | None = None,
                     cuda_available: bool | None = None) -> tuple[list[str], dict[str, str]] | None:
    """The torchrun command line and the children's environment, or None when no
    relaunch is wanted (no NPROC_PER_NODE, or already under torchrun)."""
    env = dict(os.environ if env is None else env)
    nproc = env.get("NPROC_PER_NODE", "").strip()
    if not nproc or under_torchrun(env):
        return None
    if nproc.lower() not in _TORCHRUN_WORDS:
        nproc = _positive_int(env, "NPROC_PER_NODE")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", nproc]
    nnodes = int(_positive_int(env, "NNODES", "1"))
    if nnodes > 1:
        addr = env.get("MASTER_ADDR")
        if not addr:
            raise ConfigError(f"NNODES={nnodes} needs MASTER_ADDR (the address of node 0) and NODE_RANK (this node's number) in the environment.")
        rank = env.get("NODE_RANK", "")
        if not rank.strip().isdigit() or int(rank) >= nnodes:
            raise ConfigError(f"NODE_RANK={rank!r} must be a whole number from 0 to {nnodes - 1} when NNODES={nnodes}.")
        cmd += ["--nnodes", str(nnodes), "--node_rank", str(int(rank)), "--master_addr", addr,
                "--master_port", env.get("MASTER_PORT", "29500")]
    elif env.get("MASTER_PORT"):
        cmd += ["--master_addr", env.get("MASTER_ADDR", "127.0.0.1"), "--master_port", env["MASTER_PORT"]]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", "preftune", *argv]
    child_env = {k: v for k, v in env.items() if k not in LAUNCH_VARIABLES}
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        child_env.setdefault("ACCELERATE_USE_CPU", "true")
    return cmd, child_env


def relaunch(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int | None:
    """Run `argv` under torchrun when NPROC_PER_NODE asks for it; the exit status, or None."""
    built = torchrun_command(argv, env)
    if built is None:
        return None
    cmd, child_env = built
    shown = " ".join(["torchrun", *cmd[3:]])
    print(f"preftune: NPROC_PER_NODE={cmd[4]}: {shown}", flush=True)
    try:
        return subprocess.call(cmd, env=child_env)
    except KeyboardInterrupt:
        return 130
