"""`preftune ui`: answers, argument handling, and the page itself in a real headless Chromium.

The browser tests drive Debian's /usr/bin/chromium through Playwright (scripts/install.sh
installs both); they are skipped only where one of them is not installed.
"""
import json
import os
import shutil
import socket

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from preftune import cli

from preftune.apps import sides, ui
from preftune.assets import tiny_dataset_files, tiny_model_path
from preftune.errors import ConfigError, UserError
from preftune.apps.chat import drop_oldest_turn
from preftune.apps.generate import generate_answers

MAX_NEW = 32
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated):DeprecationWarning",
                                        "ignore:.*(no_silent_downcasting|copy keyword is deprecated)")  # gradio's use of pandas 3
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def tiny():
    return AutoModelForCausalLM.from_pretrained(tiny_model_path()).eval(), AutoTokenizer.from_pretrained(tiny_model_path())


def bundled_prompts(n=3):
    with open(tiny_dataset_files()["test"]) as f:
        return [json.loads(line)["prompt"] for line in f.readlines()[:n]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------------- answering


def test_answer_is_generate_answers_for_the_same_messages():
    model, tok = tiny()
    prompts = bundled_prompts()
    expected = generate_answers(model, tok, prompts, max_new_tokens=MAX_NEW)
    assert [ui.answer(model, tok, p, MAX_NEW, 0.0) for p in prompts] == expected
    assert all(expected)


def test_answer_continues_a_conversation_and_samples_above_temperature_zero():
    model, tok = tiny()
    first = bundled_prompts(1)[0]
    history = first + [{"role": "assistant", "content": ui.answer(model, tok, first, MAX_NEW)},
                       {"role": "user", "content": "And why?"}]
    assert isinstance(ui.answer(model, tok, history, MAX_NEW), str)
    torch.manual_seed(0)
    assert isinstance(ui.answer(model, tok, first, 8, temperature=1.5), str)


def test_a_conversation_too_long_for_the_context_drops_its_oldest_turns(monkeypatch):
    model, tok = tiny()
    last = [{"role": "user", "content": "What is the job of a farmer?"}]
    history = [{"role": "system", "content": "Be brief."}]
    for _ in range(2):
        history += [{"role": "user", "content": "tell me more " * 20}, {"role": "assistant", "content": "more " * 20}]
    expected = ui.answer(model, tok, history[:1] + last, MAX_NEW)
    fits = len(tok.apply_chat_template(history[:1] + last, add_generation_prompt=True)["input_ids"]) + MAX_NEW
    monkeypatch.setattr(model.config, "max_position_embeddings", fits)  # room for the system message and the last turn only
    assert ui.answer(model, tok, history + last, MAX_NEW) == expected
    assert drop_oldest_turn(history + last) == history[:1] + history[3:] + last
    # chat's rule, one for both: a last message that cannot fit even alone is refused in words, not cut
    monkeypatch.setattr(model.config, "max_position_embeddings", fits - 1)
    with pytest.raises(UserError, match="shorten it or lower --max_new_tokens"):
        ui.answer(model, tok, history + last, MAX_NEW)


# ------------------------------------------------------------------ command line


def test_defaults_serve_loopback_only_without_share():
    args = ui.parse_args(["out"])
    assert (args.host, args.port, args.user, args.max_new_tokens, args.temperature) == ("127.0.0.1", 7860, "preftune", 256, 0.0)
    assert args.password is None and args.base is None
    assert ui.is_loopback(args.host) and ui.is_loopback("localhost") and ui.is_loopback("::1")
    assert not ui.is_loopback("0.0.0.0") and not ui.is_loopback("192.168.1.5")
    with pytest.raises(ConfigError, match="--share"):
        ui.parse_args(["out", "--share"])


def test_password_comes_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.setenv("PREFTUNE_UI_PASSWORD", "from-env")
    assert ui.parse_args(["out"]).password == "from-env"
    assert ui.parse_args(["out", "--password", "flag"]).password == "flag"
    monkeypatch.delenv("PREFTUNE_UI_PASSWORD")
    assert ui.parse_args(["out", "--password", "pw", "--user", "me"]).user == "me"


@pytest.mark.parametrize("argv, flag", [
    (["/no/such/dir"], "/no/such/dir"),
    (["out", "--port", "99999"], "--port"),
    (["out", "--max_new_tokens", "0"], "--max_new_tokens"),
    (["out", "--temperature", "-1"], "--temperature"),
    (["out", "--share"], "--share"),
    (["out", "--bogus"], "--bogus"),
    ([], "PATH"),
])
def test_bad_input_is_one_line_and_exit_2(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    assert cli.main(["ui", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("preftune: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert flag in err


def test_a_folder_with_no_model_is_a_config_error(tmp_path, capsys):
    assert cli.main(["ui", str(tmp_path)]) == 2
    assert "neither a model" in capsys.readouterr().err


def test_non_loopback_host_without_password_warns(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PREFTUNE_UI_PASSWORD", raising=False)
    assert cli.main(["ui", str(tmp_path), "--host", "0.0.0.0"]) == 2  # the empty folder fails after the warning
    assert "warning: --host 0.0.0.0" in capsys.readouterr().err
    assert cli.main(["ui", str(tmp_path), "--host", "0.0.0.0", "--password", "pw"]) == 2
    assert "warning" not in capsys.readouterr().err


def test_a_port_in_use_is_a_config_error():
    model, tok = tiny()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--port {port}"):
            ui.launch(ui.build_app(model, tok), port=port, block=False, quiet=True)


# ---------------------------------------------------------------- what to compare


def test_the_starting_model_of_a_full_model_folder(tmp_path):
    (tmp_path / "preftune_command.json").write_text(json.dumps({"command": "orpo", "model": tiny_model_path()}))
    assert sides.recorded_base(str(tmp_path)) == tiny_model_path()
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    assert sides.recorded_base(str(checkpoint)) == tiny_model_path()  # a checkpoint reads its run's record
    assert sides.recorded_base(tiny_model_path()) is None

    run = tmp_path / "run"  # a full model folder whose run recorded where it started
    shutil.copytree(tiny_model_path(), run)
    (run / "preftune_command.json").write_text(json.dumps({"command": "orpo", "model": tiny_model_path()}))
    recorded = sides.load_models(str(run))
    assert recorded.base.label == f"started from ({tiny_model_path()})" and recorded.notes == []
    (run / "preftune_command.json").write_text(json.dumps({"command": "orpo", "model": str(tmp_path / "gone")}))
    missing = sides.load_models(str(run))  # a recorded start that cannot be loaded: a note, not a failure
    assert missing.base is None and "could not be loaded" in missing.notes[0]
    with pytest.raises(ConfigError, match="--base"):  # one asked for by name must load
        sides.load_models(str(run), base=str(tmp_path / "gone"))

    alone = sides.load_models(tiny_model_path())  # a full model with no record: shown alone, with a note
    assert alone.base is None and "--base" in alone.notes[0]
    pair = sides.load_models(tiny_model_path(), base=tiny_model_path())
    assert pair.base is not None and not pair.base.adapter_off and pair.base.model is not pair.trained.model
    assert pair.trained.label == f"trained ({tiny_model_path()})"
    assert pair.base.label == f"started from ({tiny_model_path()})"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A LoRA adapter on the tiny model whose B weights are perturbed, so it answers differently."""
    from peft import LoraConfig, get_peft_model

    model, tok = tiny()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    folder = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def adapter_pair(adapter_dir):
    loaded = sides.load_models(adapter_dir)
    prompt = bundled_prompts(1)[0]
    trained = ui.answer(loaded.trained.model, loaded.trained.tokenizer, prompt, MAX_NEW)
    base_model, base_tok = tiny()  # computed on a fresh copy of the base, not through the adapter switch
    base = ui.answer(base_model, base_tok, prompt, MAX_NEW)
    return loaded, prompt[0]["content"], trained, base


def test_an_adapter_is_compared_with_its_base_with_the_adapter_disabled(adapter_pair, adapter_dir):
    loaded, prompt, trained, base = adapter_pair
    assert loaded.base.model is loaded.trained.model and loaded.base.adapter_off  # no second copy of the weights
    assert loaded.base.label == f"started from ({tiny_model_path()})"
    assert trained != base
    messages = [{"role": "user", "content": prompt}]
    assert loaded.base.reply(messages, MAX_NEW, 0.0) == base
    assert loaded.trained.reply(messages, MAX_NEW, 0.0) == trained  # the adapter is back on afterwards


# ------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def chromium():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (scripts/install.sh installs it)")
    executable = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
    if not executable:
        pytest.skip("Chromium is not installed (scripts/install.sh installs Debian's chromium when run as root)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url):
    """A page on url where every request that leaves 127.0.0.1 hangs unanswered, as where a network drops
    packets; the page must render all the same. Returns the page and the list of such requests."""
    page = browser.new_page()
    page.set_default_timeout(30_000)
    outside = []
    page.route(lambda u: not u.startswith(("http://127.0.0.1", "data:", "blob:")), lambda route: outside.append(route.request.url))
    page.goto(url, wait_until="commit")
    return page, outside


def check_nothing_left_this_machine(outside):
    import gradio

    if int(gradio.__version__.split(".")[0]) >= 6:
        assert outside == []  # no fonts, scripts or analytics from outside
    else:  # gradio 5's page asks cdnjs for an async script it does not wait for; nothing else
        assert all(u.startswith("https://cdnjs.cloudflare.com/ajax/libs/iframe-resizer/") for u in outside), outside


def bot_texts(page, chat_id):
    return [t.strip() for t in page.locator(f"#{chat_id} [data-testid='bot']").all_inner_texts()]


def send(page, prompt, key=None):
    """Type `prompt` and send it with the Send button, or with `key` pressed in the prompt box."""
    box = page.locator("#prompt textarea")
    box.fill(prompt)
    if key:
        box.press(key)
    else:
        page.locator("#send").click()


def test_the_page_answers_with_both_models_side_by_side(chromium, adapter_pair, tmp_path):
    loaded, prompt, trained, base = adapter_pair
    app = ui.build_app(loaded.trained.model, loaded.trained.tokenizer, base=loaded.trained.model,
                       trained_label=loaded.trained.label, base_label=loaded.base.label, max_new_tokens=MAX_NEW)
    url = ui.launch(app, port=free_port(), block=False, quiet=True)
    try:
        assert url.startswith("http://127.0.0.1:")
        page, outside = open_page(chromium, url)
        page.get_by_text(loaded.trained.label).first.wait_for()
        page.get_by_text(loaded.base.label).first.wait_for()
        # Shift+Enter adds a line and sends nothing; Enter sends (the button is used for the second turn)
        box = page.locator("#prompt textarea")
        box.fill("first line")
        box.press("Shift+Enter")
        assert box.input_value() == "first line\n"
        assert page.locator("[data-testid='user']").count() == 0
        send(page, prompt, key="Enter")
        page.wait_for_function(
            "() => ['trained-chat', 'base-chat'].every(id => document.querySelectorAll(`#${id} [data-testid='bot']`).length === 1)")
        page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
        assert bot_texts(page, "trained-chat") == [trained]
        assert bot_texts(page, "base-chat") == [base]
        assert trained != base
        user_texts = page.locator("#trained-chat [data-testid='user']").all_inner_texts()
        assert [t.strip() for t in user_texts] == [prompt]
        assert page.locator("#prompt textarea").input_value() == ""

        # a second turn: each column answers from its own history
        follow = "And why?"
        t_history = [{"role": "user", "content": prompt}, {"role": "assistant", "content": trained}, {"role": "user", "content": follow}]
        b_history = [{"role": "user", "content": prompt}, {"role": "assistant", "content": base}, {"role": "user", "content": follow}]
        send(page, follow)
        page.wait_for_function("() => document.querySelectorAll(`#base-chat [data-testid='bot']`).length === 2")
        assert bot_texts(page, "trained-chat")[1] == ui.answer(loaded.trained.model, loaded.trained.tokenizer, t_history, MAX_NEW)
        base_model, base_tok = tiny()
        assert bot_texts(page, "base-chat")[1] == ui.answer(base_model, base_tok, b_history, MAX_NEW)

        page.locator("#clear").click()
        page.wait_for_function("() => document.querySelectorAll(`[data-testid='bot']`).length === 0")
        check_nothing_left_this_machine(outside)
        page.close()
    finally:
        app.close()


def test_a_password_puts_a_login_in_front_of_the_page(chromium, tmp_path):
    model, tok = tiny()
    app = ui.build_app(model, tok, trained_label="trained (tiny)", max_new_tokens=4,
                       notes=["only the trained model is shown"])
    url = ui.launch(app, port=free_port(), user="preftune", password="s3cret", block=False, quiet=True)
    try:
        assert app.auth is not None
        import httpx

        assert httpx.get(url + "config").status_code == 401  # nothing is served before login
        page, outside = open_page(chromium, url)
        page.locator("input[type=password]").wait_for()
        assert page.locator("#prompt").count() == 0

        def log_in(password):
            page.locator("input[type=text]").first.fill("preftune")
            page.locator("input[type=password]").fill(password)
            page.get_by_role("button", name="Login").click()

        log_in("wrong")
        page.get_by_text("Incorrect Credentials").wait_for()
        log_in("s3cret")
        page.locator("#prompt textarea").wait_for()
        page.get_by_text("only the trained model is shown").wait_for()
        assert page.locator("#base-chat").count() == 0  # no model to compare with: one column
        check_nothing_left_this_machine(outside)
        page.close()
    finally:
        app.close()
