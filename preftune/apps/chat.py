"""``preftune chat PATH``: talk to a trained model (or LoRA adapter folder) in the terminal.

The point is a quick look at what training did, with the same prompt format the model
trained on: every turn renders the whole conversation so far through the tokenizer's
chat template (the one saved with the run), so the model sees its own earlier answers
exactly as it would in a chat application. Answers stream word by word.

`ChatSession` holds the conversation and does one turn per `send` (`reply` answers a
conversation without keeping it: `preftune ui` runs one session per column); it knows
nothing about terminals, so tests and notebooks use it directly. Answers come from
`preftune.apps.generate`, the one generation path. `run_chat` is the terminal
loop around it (prompt, commands, Ctrl-C); `main` parses the flags and loads the model.

Decoding is greedy unless sampling is asked for (``--do_sample`` or ``--temperature``
above 0): after preference training one wants to see the model's most likely answer,
which also makes a session reproducible. When the conversation grows past the model's
context, the oldest turns are dropped (and a note says so) instead of failing mid-chat.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from preftune.apps.generate import GenerationSettings, chat_prompt_ids, generate_answer
from preftune.errors import ConfigError, UserError

PROMPT = "you> "
ANSWER_PREFIX = "model> "
COMMANDS = """commands:
  /clear   forget the conversation (the --system message stays)
  /help    this list
  /exit    leave (also /quit, Ctrl-D; Ctrl-C stops an answer, or leaves at the prompt)"""


# ------------------------------------------------------------- context, streaming


def context_limit(model, tokenizer) -> int | None:
    """How many tokens (prompt + answer) the model can attend to, or None when nothing says.

    The smallest of the config's position limit and the tokenizer's `model_max_length`
    (tokenizers without one report a huge placeholder, which is ignored).
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    limits = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 10**8]
    return min(limits) if limits else None


def _echo_streamer(tokenizer, stream, prefix: str):
    """A TextStreamer that writes `prefix` as soon as generation starts, then the answer as it forms."""
    from transformers import TextStreamer

    class Echo(TextStreamer):
        started = False
        text_seen = False

        def put(self, value):
            if not self.started:  # the first call carries the prompt: generation has begun
                self.started = True
                stream.write(prefix)
                stream.flush()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if not self.text_seen:  # the stored answer is stripped; show it the same way
                text = text.lstrip()
                self.text_seen = bool(text)
            stream.write(text + ("\n" if stream_end else ""))
            stream.flush()

    return Echo(tokenizer, skip_prompt=True, skip_special_tokens=True)


# ---------------------------------------------------------------------- session


class ChatSession:
    """A conversation with a chat model: `send` a user message, get the answer; `clear` to start over.

    The history is a list of messages (`messages`), rendered in full through the
    tokenizer's chat template at every turn, so the answer to a message is exactly
    what ``generate`` gives for that conversation. `max_context` (default: the
    model's, see `context_limit`) bounds prompt + ``max_new_tokens``; older turns are
    dropped to stay within it, and `dropped_turns` says how many the last `send` dropped.
    """

    def __init__(self, model, tokenizer, settings: GenerationSettings | None = None, system: str | None = None,
                 max_context: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        self.system = system
        self.max_context = max_context if max_context is not None else context_limit(model, tokenizer)
        self.messages: list[dict] = []
        self.dropped_turns = 0
        self._check_template()
        if self.max_context is not None and self.settings.max_new_tokens >= self.max_context:
            raise ConfigError(f"--max_new_tokens {self.settings.max_new_tokens} leaves no room for a prompt in the "
                              f"model's {self.max_context}-token context; lower it.")
        self.clear()

    def _check_template(self) -> None:
        """Fail at start, in words, rather than at the first message."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError("the tokenizer has no chat template, so a conversation cannot be formatted; chat with a "
                              "model trained in a chat format (e.g. preftune.setup_chat_format for a base model), or "
                              "one that ships a template.")
        probe = ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": "hi"}]
        try:
            self.tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # jinja2 raises its own errors, e.g. for a role the template rejects
            what = "a system message (drop --system)" if self.system else "a user message"
            raise ConfigError(f"the tokenizer's chat template cannot render {what}: {err}") from None

    def clear(self) -> None:
        """Forget every turn; the system message, if any, stays."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.dropped_turns = 0

    def prompt_ids(self, text: str | None = None, messages: list[dict] | None = None) -> list[int]:
        """Token ids the model is given for the conversation (plus `text` as the next user message)."""
        messages = list(self.messages if messages is None else messages)
        if text is not None:
            messages.append({"role": "user", "content": text})
        return chat_prompt_ids(self.tokenizer, messages)

    def fit(self, messages: list[dict]) -> tuple[list[dict], list[int], int]:
        """`messages` (ending with the new user message), the oldest turns dropped (`drop_oldest_turn`) until
        prompt + answer fit the context: (messages kept, their prompt ids, turns dropped). A UserError when
        even the last message alone does not fit."""
        ids = self.prompt_ids(messages=messages)
        dropped = 0
        room = None if self.max_context is None else self.max_context - self.settings.max_new_tokens
        while room is not None and len(ids) > room:
            shorter = drop_oldest_turn(messages)
            if shorter is None:
                raise UserError(f"the message is {len(ids)} tokens with its template, more than the {room} the model's "
                                f"{self.max_context}-token context leaves after --max_new_tokens "
                                f"{self.settings.max_new_tokens}; shorten it or lower --max_new_tokens.")
            messages, dropped = shorter, dropped + 1
            ids = self.prompt_ids(messages=messages)
        return messages, ids, dropped

    def reply(self, messages: list[dict], stream=None, prefix: str = "") -> Reply:
        """The model's answer to a conversation ending with a user message, fitted to the context as `fit`
        does; the session's own history is left alone (`send` keeps it). With `stream`, `prefix` and then
        the answer are written to it as they are generated."""
        kept, ids, dropped = self.fit(list(messages))
        streamer = _echo_streamer(self.tokenizer, stream, prefix) if stream is not None else None
        answer = generate_answer(self.model, self.tokenizer, ids, self.settings, streamer=streamer)
        return Reply(answer, kept + [{"role": "assistant", "content": answer}], dropped)

    def send(self, text: str, stream=None, prefix: str = "") -> str:
        """One turn: the model's answer to `text`, given the conversation so far.

        With `stream` (a text file such as sys.stdout), `prefix` and then the answer are
        written to it as they are generated. The turn joins the history only once the
        answer is complete, so an interrupted answer (Ctrl-C) leaves the history as it was.
        """
        reply = self.reply(self.messages + [{"role": "user", "content": text}], stream=stream, prefix=prefix)
        self.messages = reply.messages
        self.dropped_turns = reply.dropped_turns
        return reply.text


@dataclass
class Reply:
    """An answer (`text`), the conversation it ends (`messages`, oldest turns dropped to fit, the answer last),
    and how many turns were dropped (`dropped_turns`)."""

    text: str
    messages: list[dict]
    dropped_turns: int


def drop_oldest_turn(messages: list[dict]) -> list[dict] | None:
    """`messages` without its oldest user turn and the answers to it; None when only the last message is left.

    System messages stay: they set up the whole conversation. The one rule of `preftune chat` and
    `preftune ui` for a conversation grown past the model's context.
    """
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
    if first is None or first == len(messages) - 1:
        return None
    end = next((i for i in range(first + 1, len(messages)) if messages[i]["role"] == "user"), len(messages) - 1)
    return messages[:first] + messages[end:]


# --------------------------------------------------------------------- terminal


def run_chat(session: ChatSession, read=input, out=None) -> int:
    """The terminal loop: read a line, run a command or one turn, until /exit, EOF or Ctrl-C at the prompt.

    `read(prompt) -> str` is `input` in a terminal (with line editing when readline is
    there); tests pass their own. Returns the exit status (0).
    """
    out = out or sys.stdout
    while True:
        try:
            line = read(PROMPT)
        except (EOFError, KeyboardInterrupt):  # Ctrl-D / Ctrl-C at the prompt: leave, on a fresh line
            out.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if _command(text, session, out):
                return 0
            continue
        _turn(session, text, out)


def _command(text: str, session: ChatSession, out) -> bool:
    """Run a /command; True when it ends the chat."""
    name = text.split()[0].lower()
    if name in ("/exit", "/quit"):
        return True
    if name == "/clear":
        session.clear()
        out.write("(conversation cleared)\n")
    elif name == "/help":
        out.write(COMMANDS + "\n")
    else:
        out.write(f"(unknown command {name}; /help lists the commands)\n")
    out.flush()
    return False


def _turn(session: ChatSession, text: str, out) -> None:
    try:
        session.send(text, stream=out, prefix=ANSWER_PREFIX)
    except KeyboardInterrupt:
        out.write("\n(stopped; this turn is not kept)\n")
    except UserError as err:
        out.write(f"(not sent: {err})\n")
    else:
        if session.dropped_turns:
            n = session.dropped_turns
            out.write(f"(note: the oldest {n} turn{'s' if n > 1 else ''} {'were' if n > 1 else 'was'} dropped to fit "
                      f"the model's {session.max_context}-token context)\n")
    out.flush()


# ------------------------------------------------------------------ command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence through cli.main, no usage dump
        raise ConfigError(f"{message} (see {self.prog} --help).")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="preftune chat", allow_abbrev=False,
                description="Talk to a trained model or LoRA adapter folder (a run's output_dir) in the terminal.",
                epilog=COMMANDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="A run's output folder: a full model, or a LoRA adapter (loaded on its base model).")
    p.add_argument("--base", help="Base model for an adapter folder (default: the one in its adapter_config.json).")
    p.add_argument("--max_new_tokens", type=int, default=256, help="Longest answer, in tokens (default: 256).")
    p.add_argument("--temperature", type=float, help="Sampling temperature; above 0 turns sampling on (default: greedy).")
    p.add_argument("--top_p", type=float, help="Nucleus sampling: keep the smallest token set with this much probability.")
    p.add_argument("--top_k", type=int, help="Sample among the k likeliest tokens only (0: off).")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--do_sample", action="store_true", default=None, help="Sample answers (default: greedy).")
    mode.add_argument("--greedy", dest="do_sample", action="store_false", help="Always the likeliest token (the default).")
    p.add_argument("--repetition_penalty", type=float, help="Above 1 discourages repeating tokens (default: the model's, usually none).")
    p.add_argument("--system", help="A system message that starts the conversation (kept by /clear).")
    p.add_argument("--device", help="Where to run: cpu, cuda, cuda:1, mps (default: cuda when available, else cpu).")
    p.add_argument("--dtype", choices=("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"),
                   help="Weights dtype (default: as saved).")
    return p


def settings_from_args(args: argparse.Namespace) -> tuple[GenerationSettings, list[str]]:
    """Flags -> GenerationSettings, and notes on flags that will have no effect."""
    if args.do_sample is False and args.temperature:
        raise ConfigError(f"--greedy contradicts --temperature {args.temperature}; drop one of them.")
    do_sample = args.do_sample if args.do_sample is not None else bool(args.temperature)
    notes = []
    unused = [flag for flag in ("top_p", "top_k") if getattr(args, flag) is not None]
    if unused and not do_sample:
        verb = "act" if len(unused) > 1 else "acts"
        notes.append(f"{' and '.join('--' + f for f in unused)} only {verb} when sampling; add --do_sample or a --temperature above 0.")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=do_sample, temperature=args.temperature,
                                  top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty)
    return settings, notes


def _device(name: str | None) -> str:
    """--device, checked before the model loads; default cuda when there is one."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} needs a CUDA GPU, which this machine lacks; use --device cpu.")
    return name


def _describe(path: str, base: str | None, settings: GenerationSettings) -> str:
    from preftune.models import adapter_base, is_adapter_folder

    what = f"{path} (LoRA adapter on {base or adapter_base(path)})" if is_adapter_folder(path) else path
    decoding = "sampling" if settings.do_sample else "greedy"
    return (f"preftune chat: {what}; {decoding}, up to {settings.max_new_tokens} new tokens. "
            f"/help lists the commands, /exit or Ctrl-D leaves.")


def _reader():
    """`input`, with line editing and history (arrow keys) when the terminal has readline."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (importing it is what turns it on for input())
        except ImportError:
            pass
    return input


def main(argv: list[str]) -> int:
    """``preftune chat PATH [flags]``: load, then chat until /exit or EOF."""
    args = _parser().parse_args(argv)
    settings, notes = settings_from_args(args)
    device = _device(args.device)
    if not os.path.isdir(os.path.expanduser(args.path)):  # before the loading line: one line of error, nothing else
        raise ConfigError(f"{args.path!r} is not a folder; pass a trained model or adapter folder (a run's output_dir).")
    from preftune.models import load_trained

    print(f"preftune chat: loading {args.path} ...", file=sys.stderr, flush=True)
    model, tokenizer = load_trained(args.path, base=args.base, dtype=args.dtype, device=device)
    session = ChatSession(model, tokenizer, settings, system=args.system)
    for note in notes:
        print(f"preftune: note: {note}")
    print(_describe(args.path, args.base, settings), flush=True)
    return run_chat(session, read=_reader())
