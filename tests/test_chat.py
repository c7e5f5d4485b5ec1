"""`preftune chat`: the session in-process (template, history, context limit), and the terminal as a person uses it (a pty)."""
import io
import json
import os
import re
import select
import subprocess
import sys
import time

import pytest
import torch

from preftune import cli
from preftune.assets import tiny_dataset_files, tiny_model_path
from preftune.apps.chat import ANSWER_PREFIX, PROMPT, ChatSession, GenerationSettings, _parser, run_chat, settings_from_args
from preftune.errors import ConfigError, UserError
from preftune.apps.generate import generate_answers
from preftune.models import load_trained

N_NEW = 24


@pytest.fixture(scope="module")
def tiny():
    return load_trained(tiny_model_path())


@pytest.fixture(scope="module")
def questions():
    with open(tiny_dataset_files()["test"]) as f:
        rows = [json.loads(line) for line in f][:3]
    return [r["prompt"][-1]["content"] for r in rows]


def user(text):
    return {"role": "user", "content": text}


def greedy(model, tok, messages):
    return generate_answers(model, tok, [messages], max_new_tokens=N_NEW)[0]


def session(tiny, **kwargs):
    model, tok = tiny
    return ChatSession(model, tok, GenerationSettings(max_new_tokens=N_NEW), **kwargs)


# ------------------------------------------------------------------ the session


def test_answers_are_greedy_generate_on_the_whole_conversation(tiny, questions):
    model, tok = tiny
    s = session(tiny)
    q1, q2 = questions[:2]
    a1 = s.send(q1)
    assert a1 and a1 == greedy(model, tok, [user(q1)])
    # the next prompt is the template applied to the history plus the new message
    history = [user(q1), {"role": "assistant", "content": a1}, user(q2)]
    expected = list(tok.apply_chat_template(history, add_generation_prompt=True, return_dict=True)["input_ids"])
    assert s.prompt_ids(q2) == expected
    answer_ids = tok(a1, add_special_tokens=False)["input_ids"]
    assert any(expected[i:i + len(answer_ids)] == answer_ids for i in range(len(expected)))
    a2 = s.send(q2)
    assert a2 == greedy(model, tok, history)
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
    s.clear()
    assert s.messages == [] and s.send(q2) == greedy(model, tok, [user(q2)])


def test_the_answer_streams_in_pieces_after_the_prefix(tiny, questions):
    class Recorder:
        def __init__(self):
            self.chunks = []

        def write(self, text):
            self.chunks.append(text)

        def flush(self):
            pass

    out = Recorder()
    answer = session(tiny).send(questions[0], stream=out, prefix="model> ")
    assert out.chunks[0] == "model> "
    assert len([c for c in out.chunks[1:] if c.strip()]) > 2  # word by word, not one block at the end
    assert "".join(out.chunks) == f"model> {answer}\n"


def test_system_message_leads_and_survives_clear(tiny, questions):
    model, tok = tiny
    s = session(tiny, system="Be brief.")
    answer = s.send(questions[0])
    assert answer == greedy(model, tok, [{"role": "system", "content": "Be brief."}, user(questions[0])])
    s.clear()
    assert s.messages == [{"role": "system", "content": "Be brief."}]


def test_oldest_turns_are_dropped_to_fit_the_context(tiny, questions):
    q1, q2, q3 = questions
    probe = session(tiny, system="Hi.")
    probe.send(q1)
    two_turns = len(probe.prompt_ids(q2))  # system, q1, a1, q2
    probe.send(q2)
    system, first, answer1, *later = probe.messages
    without_first = len(probe.prompt_ids(q3, messages=[system, *later]))  # system, q2, a2, q3
    # room for the second turn plus the third message, not for all three turns
    s = session(tiny, system="Hi.", max_context=max(two_turns, without_first) + N_NEW)
    s.send(q1)
    s.send(q2)
    assert s.dropped_turns == 0 and s.messages == probe.messages
    s.send(q3)
    assert s.dropped_turns == 1
    assert s.messages[:3] == [system, *later] and s.messages[3] == user(q3)


def test_a_message_longer_than_the_context_is_refused_and_not_kept(tiny, questions):
    s = session(tiny, max_context=N_NEW + 40)
    s.send("Hi")
    before = list(s.messages)
    with pytest.raises(UserError, match="shorten it or lower --max_new_tokens"):
        s.send(" ".join(["word"] * 200))
    assert s.messages == before


def test_max_new_tokens_must_leave_room_for_a_prompt(tiny):
    model, tok = tiny
    with pytest.raises(ConfigError, match="--max_new_tokens 600 leaves no room"):
        ChatSession(model, tok, GenerationSettings(max_new_tokens=600))


def test_a_tokenizer_without_chat_template_is_a_clear_error(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template.*setup_chat_format"):
        ChatSession(tiny[0], tok)


def test_an_adapter_folder_chats_through_its_base(tmp_path, questions):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path()),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_path()).save_pretrained(tmp_path)
    adapted = load_trained(str(tmp_path))
    answer = session(adapted).send(questions[0])
    assert answer == greedy(*adapted, [user(questions[0])])


# --------------------------------------------------------------------- settings


def settings(*flags):
    return settings_from_args(_parser().parse_args(["somewhere", *flags]))


def test_greedy_unless_sampling_is_asked_for(tiny):
    assert settings()[0].do_sample is False and settings()[0].max_new_tokens == 256
    assert settings("--temperature", "0.7")[0].do_sample is True
    assert settings("--do_sample")[0].do_sample is True
    assert settings("--temperature", "0", "--top_k", "5")[1] == [
        "--top_k only acts when sampling; add --do_sample or a --temperature above 0."]
    with pytest.raises(ConfigError, match="--greedy contradicts --temperature"):
        settings("--greedy", "--temperature", "0.7")
    with pytest.raises(ConfigError, match="--top_p must be in"):
        settings("--do_sample", "--top_p", "1.5")
    with pytest.raises(ConfigError, match="not allowed with argument"):
        settings("--greedy", "--do_sample")
    model, tok = tiny
    config = settings("--top_p", "0.5")[0].generation_config(model, tok)
    assert (config.do_sample, config.top_p, config.temperature) == (False, None, None)
    config = settings("--temperature", "0.7", "--top_p", "0.5")[0].generation_config(model, tok)
    assert (config.do_sample, config.top_p, config.temperature) == (True, 0.5, 0.7)
    assert tok.eos_token_id in config.eos_token_id


# --------------------------------------------------------------------- terminal


def test_loop_commands_with_scripted_input(tiny, questions):
    model, tok = tiny
    lines = iter(["/help", "   ", questions[0], "/bogus", "/clear", questions[1]])
    prompts = []

    def read(prompt):
        prompts.append(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    s, out = session(tiny), io.StringIO()
    assert run_chat(s, read=read, out=out) == 0
    text = out.getvalue()
    assert "/clear" in text and "/exit" in text  # the help
    assert f"{ANSWER_PREFIX}{greedy(model, tok, [user(questions[0])])}\n" in text
    assert "(unknown command /bogus; /help lists the commands)" in text
    assert "(conversation cleared)" in text
    assert s.messages[0] == user(questions[1])  # history restarted at /clear
    assert prompts == [PROMPT] * 7 and text.endswith("\n")
    assert run_chat(session(tiny), read=lambda p: "/quit", out=io.StringIO()) == 0


def test_ctrl_c_stops_an_answer_or_leaves_at_the_prompt(tiny, questions):
    s, out = session(tiny), io.StringIO()

    def interrupted(text, stream=None, prefix=""):
        stream.write(prefix + "Ooh")
        raise KeyboardInterrupt

    s.send = interrupted
    answers = iter([questions[0]])

    def read(prompt):
        for line in answers:
            return line
        raise KeyboardInterrupt

    assert run_chat(s, read=read, out=out) == 0
    assert out.getvalue() == f"{ANSWER_PREFIX}Ooh\n(stopped; this turn is not kept)\n\n"
    assert s.messages == []


ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[=>])")


class Terminal:
    """`preftune chat` in a pseudo-terminal: what a person types and sees."""

    def __init__(self, *args):
        import pty

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "dumb", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "2"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become preftune
            os.execve(sys.executable, [sys.executable, "-m", "preftune", *args], env)
        self.seen = b""

    def screen(self) -> str:
        return ANSI.sub("", self.seen.decode("utf-8", "replace")).replace("\r", "")

    def read_until(self, marker: str, timeout: float = 120) -> str:
        """Everything shown up to `marker` (which is consumed)."""
        deadline = time.monotonic() + timeout
        while marker not in self.screen():
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no {marker!r} on the screen after {timeout}s:\n{self.screen()}")
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the chat ended before showing {marker!r}:\n{self.screen()}")
            self.seen += chunk
        shown, _, rest = self.screen().partition(marker)
        self.seen = rest.encode()
        return shown

    def type(self, line: str) -> None:
        os.write(self.fd, (line + "\r").encode())

    def exit_code(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # drain, so the child never blocks on a full terminal
                if select.select([self.fd], [], [], 0.1)[0]:
                    os.read(self.fd, 4096)
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError("the chat did not exit")


def test_terminal_chat_as_a_person_uses_it(tiny, questions):
    model, tok = tiny
    q1, q2 = questions[:2]
    a1 = greedy(model, tok, [user(q1)])
    a2 = greedy(model, tok, [user(q1), {"role": "assistant", "content": a1}, user(q2)])
    term = Terminal("chat", tiny_model_path(), "--max_new_tokens", str(N_NEW))
    try:
        banner = term.read_until(PROMPT)
        assert "greedy, up to 24 new tokens" in banner and "/help" in banner
        term.type(q1)
        shown = term.read_until(PROMPT)
        assert shown.startswith(q1)  # the typed line is echoed
        assert shown.split(ANSWER_PREFIX, 1)[1].strip() == a1
        term.type(q2)  # the second answer is the one for the whole conversation
        assert term.read_until(PROMPT).split(ANSWER_PREFIX, 1)[1].strip() == a2
        term.type("/clear")
        assert "(conversation cleared)" in term.read_until(PROMPT)
        term.type("/exit")
    finally:
        code = term.exit_code()
    assert code == 0


def test_missing_path_is_one_line_and_exit_2(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    assert cli.main(["chat", missing]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("preftune: error: ") and "is not a folder" in err[-1]
    proc = subprocess.run([sys.executable, "-m", "preftune", "chat", missing], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("preftune: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert cli.main(["chat", missing, "--max_new_tokens", "many"]) == 2
    assert "argument --max_new_tokens: invalid int value" in capsys.readouterr().err
