"""`preftune` command line: the subcommand table.

``preftune orpo|dpo ...`` trains (`preftune.cli.train`; flags in `preftune.cli.args`, resolved
into a `Run` by `preftune.cli.run`), ``preftune data inspect|list ...`` reports on data
(`preftune.cli.inspect`, over `preftune.data.inspect`), and
``preftune chat|merge|ui ...`` use a trained model (`preftune.apps`). User errors are
one `preftune: error:` line and exit status 2; a stopped run says how to resume.
"""
from __future__ import annotations

import difflib
import sys

from preftune.cli.run import Run, parse_run
from preftune.cli.train import TRAINERS, Stopped, train
from preftune.errors import UserError

__all__ = ["main", "parse_run", "Run"]


USAGE = """usage: preftune COMMAND [flags]

commands:
  orpo           train with ORPO (no reference model)
  dpo            train with DPO (a frozen reference model)
  cpo            train with CPO (no reference model; --loss_type sigmoid|hinge|ipo|simpo|alphapo)
  simpo          train with SimPO (= cpo --loss_type simpo; β 2.0, γ 1.0, no NLL term: cpo_alpha 0)
  kto            train with KTO on unpaired rows (prompt, completion, label; pairs are split)
  rlhf           ms-swift's form: preftune rlhf --rlhf_type TYPE [flags] runs the command TYPE
  data inspect   report on a preference data set before training (lengths, truncation, duplicates, bias)
  data list      the registry of well-known preference data sets
  chat PATH      talk to a trained model or adapter folder in the terminal
  merge          fold a LoRA adapter into its base model (--adapter DIR --output DIR)
  ui             a local web page: the trained model and the model it started from, side by side

`preftune orpo` (dpo, cpo, simpo) with no flags runs the offline demo on the bundled tiny model.
`preftune COMMAND --help` lists every flag. NPROC_PER_NODE=N runs N processes (torchrun)."""


# Commands that use a trained model: module whose `main(argv) -> int` runs them (UserError for bad input).
TOOLS = {"chat": "preftune.apps.chat", "merge": "preftune.apps.merge", "ui": "preftune.apps.ui"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "data":
            from preftune.cli.inspect import data_main

            return data_main(rest)
        if command == "rlhf":  # ms-swift: `swift rlhf --rlhf_type dpo ...` is `preftune dpo ...`
            command, rest = rlhf_command(rest)
            argv = [command, *rest]
        if command in TOOLS:
            import importlib

            return importlib.import_module(TOOLS[command]).main(rest)
        if command not in TRAINERS:
            near = difflib.get_close_matches(command, [*TRAINERS, "data", *TOOLS], n=1)
            raise UserError(f"unknown command {command!r}; choose {', '.join(TRAINERS)}, data, {', '.join(TOOLS)}{f' (did you mean {near[0]}?)' if near else ''}.")
        from preftune.cli.launch import relaunch

        code = relaunch(argv)
        if code is not None:
            return code
        return train(command, rest)
    except Stopped as err:
        print(f"\n{err}", file=sys.stderr)  # on a line of its own, after the progress bar
        return err.exit_code
    except UserError as err:
        print(f"preftune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preftune: interrupted", file=sys.stderr)
        return 130


def rlhf_command(argv: list[str]) -> tuple[str, list[str]]:
    """(command, the other flags) of ms-swift's `rlhf --rlhf_type TYPE ...` (also `--rlhf_type=TYPE`)."""
    for i, arg in enumerate(argv):
        if arg == "--rlhf_type" and i + 1 < len(argv):
            kind, rest = argv[i + 1], argv[:i] + argv[i + 2:]
            break
        if arg.startswith("--rlhf_type="):
            kind, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1:]
            break
    else:
        raise UserError(f"preftune rlhf needs --rlhf_type ({' or '.join(RLHF_TYPES)}), as ms-swift's `swift rlhf`.")
    if kind not in RLHF_TYPES:
        raise UserError(f"--rlhf_type {kind!r} is not one preftune trains; choose one of: {', '.join(RLHF_TYPES)}.")
    return kind, rest


# ms-swift's --rlhf_type values preftune trains: each is the preftune command of the same name.
RLHF_TYPES = tuple(TRAINERS)


if __name__ == "__main__":
    sys.exit(main())
