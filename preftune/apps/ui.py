"""`preftune ui PATH`: a local web page to chat with a trained model and, side by side,
the model it started from, so the effect of preference training is visible.

Every prompt goes to both models; each column keeps its own conversation and answers
through its own `preftune.apps.chat.ChatSession` (chat's template, context and
dropped-turn rules; `preftune.apps.generate` decodes). The model
it started from is, for a LoRA adapter folder, the same weights with the adapter
switched off (no second copy in memory); for a full model folder, ``--base`` or the
model recorded in the run's ``preftune_command.json``; with neither, the page shows
the trained model alone and says why.

The page is served by gradio on 127.0.0.1 unless ``--host`` says otherwise. Another
host without a password is allowed, with a warning; ``--password`` (or the
``PREFTUNE_UI_PASSWORD`` environment variable) puts a login in front of the page.
There is no public share link. Gradio's analytics and version check are off, and the
page loads nothing from outside this machine.
"""
from __future__ import annotations

import argparse
import inspect
import ipaddress
import os
import sys
import threading

from preftune.apps.chat import ChatSession
from preftune.apps.sides import Side, load_models, settings
from preftune.errors import ConfigError, UserError

# Set before gradio is imported anywhere in this process: no telemetry, no version check.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_USER = "preftune"
PASSWORD_ENV = "PREFTUNE_UI_PASSWORD"


# ------------------------------------------------------------------ answering


def answer(model, tokenizer, history_messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0) -> str:
    """The model's next assistant turn for a conversation (a list of role/content messages, the last one the user's).

    A `ChatSession`'s reply, so exactly what `preftune chat` answers: the tokenizer's chat
    template, greedy decoding at temperature 0 (as `preftune.apps.generate.generate_answers`),
    sampling above; special tokens removed, whitespace stripped; when the conversation would
    not fit the model's context, the oldest turns are dropped (`preftune.apps.chat.drop_oldest_turn`).
    """
    return ChatSession(model, tokenizer, settings(max_new_tokens, temperature)).reply(list(history_messages)).text


# ------------------------------------------------------------------------ page


def _gradio():
    try:
        import gradio as gr
    except ImportError:
        raise UserError("preftune ui needs gradio, which is not installed; pip install 'preftune[ui]'.") from None
    return gr


def build_app(trained, tokenizer, base=None, base_tokenizer=None, *, trained_label: str = "trained",
              base_label: str = "started from", notes: list[str] | tuple = (), max_new_tokens: int = 256,
              temperature: float = 0.0, title: str = "preftune ui"):
    """The page as a `gr.Blocks` (not launched): a prompt box, Send and Clear, one chat column per model.

    `base` is the model to compare with: another model (with `base_tokenizer`, default
    `tokenizer`), or `trained` itself when it is a PEFT model, meaning the same weights
    with the adapter disabled; None shows the trained model alone. Each column is a
    `ChatSession` (answers as `answer(...)` gives them, with `max_new_tokens` and
    `temperature`); one generation runs at a time.
    """
    from preftune.models import is_peft_model

    trained_side = Side(trained, tokenizer, trained_label)
    base_side = None
    if base is not None:
        adapter_off = base is trained
        if adapter_off and not is_peft_model(trained):
            raise ConfigError("base is the trained model itself, which has no adapter to switch off; pass the starting model.")
        base_side = Side(base, base_tokenizer if base_tokenizer is not None else tokenizer, base_label, adapter_off)
    return _build_page(trained_side, base_side, list(notes), max_new_tokens, temperature, title)


def _build_page(trained: Side, base: Side | None, notes: list[str], max_new_tokens: int, temperature: float, title: str):
    gr = _gradio()
    lock = threading.Lock()  # one generation at a time: the adapter switch is model-wide state
    chat_params = inspect.signature(gr.Chatbot.__init__).parameters
    chat_kwargs = {"type": "messages"} if "type" in chat_params else {}  # gradio 5; gradio 6 has only messages
    if "buttons" in chat_params:  # no "share to the Hugging Face Hub" button: nothing leaves this machine
        chat_kwargs["buttons"] = ["copy", "copy_all"]
    elif "show_share_button" in chat_params:
        chat_kwargs["show_share_button"] = False
    decoding = "greedy decoding" if temperature <= 0 else f"sampling at temperature {temperature:g}"
    blocks_kwargs = {}
    if "theme" not in inspect.signature(gr.Blocks.launch).parameters:
        # gradio 5's default theme takes its font from fonts.googleapis.com, and the page waits for it: where
        # the network drops packets it never renders. The same font ships inside gradio; use that copy.
        from gradio.themes.utils.fonts import LocalFont

        font = [LocalFont("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"]
        blocks_kwargs["theme"] = gr.themes.Default(font=font)
    with gr.Blocks(title=title, analytics_enabled=False, **blocks_kwargs) as app:
        gr.Markdown(f"## {title}\nThe same prompt goes to both models; each column keeps its own conversation "
                    f"({decoding}, at most {max_new_tokens} new tokens).")
        for note in notes:
            gr.Markdown(f"**Note:** {note}", elem_classes=["preftune-note"])
        with gr.Row():
            with gr.Column():
                trained_chat = gr.Chatbot(value=[], label=trained.label, show_label=True, elem_id="trained-chat",
                                          height=460, **chat_kwargs)
            if base is not None:
                with gr.Column():
                    base_chat = gr.Chatbot(value=[], label=base.label, show_label=True, elem_id="base-chat",
                                           height=460, **chat_kwargs)
        # lines=1 (growing to max_lines): gradio sends on Enter and adds a line on Shift+Enter, as chat pages do
        # (with lines > 1 it is the other way round).
        prompt = gr.Textbox(label="Prompt", placeholder="Ask both models something; Enter sends, Shift+Enter adds a line.",
                            lines=1, max_lines=8, elem_id="prompt")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            clear = gr.Button("Clear", elem_id="clear")
        trained_state = gr.State([])
        base_state = gr.State([])
        for side in (trained, base):  # a column's session, made now: a bad setting fails before the page is up
            if side is not None:
                side.session(max_new_tokens, temperature)

        def turn(side: Side, history: list[dict]) -> list[dict]:
            """`history` (ending with the user's message) with the side's answer; without that message when it
            cannot be sent (too long for the model's context), with a warning on the page."""
            try:
                with lock:
                    reply = side.reply(history, max_new_tokens, temperature)
            except UserError as err:
                gr.Warning(f"{side.label}: not sent: {err}")
                return history[:-1]
            return [*history, {"role": "assistant", "content": reply}]

        def respond(message, trained_history, base_history):
            message = (message or "").strip()
            if not message:
                yield gr.update(), trained_history, base_history, trained_history, base_history
                return
            asked = {"role": "user", "content": message}
            trained_history = [*trained_history, asked]
            base_history = [*base_history, asked]
            yield "", trained_history, base_history, trained_history, base_history
            trained_history = turn(trained, trained_history)
            yield "", trained_history, base_history, trained_history, base_history
            if base is not None:
                base_history = turn(base, base_history)
                yield "", trained_history, base_history, trained_history, base_history

        def reset():
            return "", [], [], [], []

        chats = [trained_chat, base_chat] if base is not None else [trained_chat, gr.State([])]
        outputs = [prompt, *chats, trained_state, base_state]
        for event in (send.click, prompt.submit):
            event(respond, inputs=[prompt, trained_state, base_state], outputs=outputs)
        clear.click(reset, outputs=outputs)
        for chat in [trained_chat] + ([base_chat] if base is not None else []):
            chat.clear(reset, outputs=outputs)  # a column's own trash icon clears both conversations too
    return app


def launch(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, user: str = DEFAULT_USER,
           password: str | None = None, block: bool = True, quiet: bool = False):
    """Serve the page on host:port (login `user`/`password` when a password is given); returns the local URL.

    With `block`, waits until Ctrl+C and closes the server; otherwise returns at once
    (close it with `app.close()`).
    """
    # A proxy in the environment must not catch the server's own check of its loopback URL.
    for name in ("NO_PROXY", "no_proxy"):
        have = [h for h in os.environ.get(name, "").split(",") if h]
        os.environ[name] = ",".join(have + [h for h in ("127.0.0.1", "localhost", "::1") if h not in have])
    auth = (user, password) if password else None
    extra = {}
    if "run_history" in inspect.signature(app.launch).parameters:
        # gradio 6 records runs in the browser and offers to upload them to a Hugging Face bucket: off.
        extra["run_history"] = False
    try:
        _, local_url, _ = app.launch(server_name=host, server_port=port, auth=auth, share=False, inbrowser=False,
                                     prevent_thread_lock=True, quiet=True, ssr_mode=False, show_error=True,
                                     auth_message=f"preftune ui: log in as {user}." if auth else None, **extra)
    except OSError:
        raise ConfigError(f"--port {port} on --host {host} cannot be served (in use, or the address is not this "
                          f"machine's); pick another --port or --host.") from None
    if not quiet:
        print(f"preftune ui: serving {local_url} " + ("(login required) " if auth else "") + "- Ctrl+C to stop", flush=True)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return local_url


# ------------------------------------------------------------------ command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(f"{message} (see preftune ui --help).")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is below 0")
    return value


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="preftune ui", allow_abbrev=False,
                description="A local web page: chat with a trained model and, side by side, the model it started from.")
    p.add_argument("path", metavar="PATH", help="A run's output folder: a full model or a LoRA adapter.")
    p.add_argument("--base", help="The model it started from (hub id or folder). For an adapter, the base to load it on "
                                  "(default: from adapter_config.json); for a full model, the model to compare with "
                                  "(default: the model recorded in PATH/preftune_command.json).")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"Address to serve on (default {DEFAULT_HOST}: this machine only).")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"Port to serve on (default {DEFAULT_PORT}).")
    p.add_argument("--password", help=f"Require a login with this password (default: ${PASSWORD_ENV}, if set). "
                                      f"Prefer the environment variable: flags show up in the process list.")
    p.add_argument("--user", default=DEFAULT_USER, help=f"User name for the login (default {DEFAULT_USER}).")
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=_positive_int, default=256,
                   help="Longest answer, in tokens (default 256).")
    p.add_argument("--temperature", type=_temperature, default=0.0,
                   help="0 (default) answers greedily; above 0 samples at that temperature.")
    p.add_argument("--dtype", help="Load the models in this dtype (auto, bf16, fp16, fp32).")
    p.add_argument("--device", help="Put the models on this device (e.g. cuda, cpu).")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    argv = list(argv)
    if any(a == "--share" or a.startswith("--share=") for a in argv):
        raise ConfigError("--share is not offered: preftune ui serves only on --host (127.0.0.1 by default); "
                          "to reach it from elsewhere use --host 0.0.0.0 with --password, or an SSH tunnel.")
    args = make_parser().parse_args(argv)
    if args.password is None:
        args.password = os.environ.get(PASSWORD_ENV) or None
    if args.password == "":
        raise ConfigError("--password is empty; give a password, or leave the flag out.")
    if not args.user:
        raise ConfigError("--user is empty; give a user name for the login.")
    return args


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: list[str]) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    if not os.path.isdir(os.path.expanduser(args.path)):
        raise ConfigError(f"PATH {args.path!r} is not a folder; pass a run's output folder (a trained model or LoRA adapter).")
    _gradio()  # fail on a missing gradio before any model is loaded
    if not is_loopback(args.host) and not args.password:
        print(f"preftune ui: warning: --host {args.host} serves the page beyond this machine and no password is set; "
              f"anyone who can reach port {args.port} can use the models (set --password or ${PASSWORD_ENV}).",
              file=sys.stderr, flush=True)
    loaded = load_models(args.path, base=args.base, dtype=args.dtype, device=args.device)
    for note in loaded.notes:
        print(f"preftune ui: note: {note}", file=sys.stderr, flush=True)
    base = loaded.base
    app = _build_page(loaded.trained, base, loaded.notes, args.max_new_tokens, args.temperature, "preftune ui")
    launch(app, host=args.host, port=args.port, user=args.user, password=args.password, block=True)
    return 0
