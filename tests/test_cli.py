"""The command line: flag parsing and aliases in-process (fast), and runs as a user runs them (real processes)."""
import json
import os
import shlex
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from preftune import cli
from preftune.cli.args import DEMO_SETTINGS
from preftune.assets import tiny_dataset_path, tiny_model_path
from preftune.errors import ConfigError
from preftune.cli.launch import torchrun_command

# ms-swift's ORPO best practice (seed 000), exactly as written there after `swift orpo`.
SEED_000 = """--model_type  llama3-8b-instruct \\
    --beta 0.5 \\
    --sft_type  lora \\
    --dataset shareai-llama3-dpo-zh-en-emoji \\
    --num_train_epochs  2  \\
    --lora_target_modules  ALL  \\
    --gradient_checkpointing  true  \\
    --batch_size  1  \\
    --learning_rate  5e-5  \\
    --gradient_accumulation_steps  16  \\
    --warmup_ratio  0.03  \\
    --save_total_limit  2"""

EMOJI_ROWS = [  # the shareAI emoji set's row format (seed 000's example, shortened)
    {"question": "一个完整的工程项目管理流程包括什么？", "answer_zh": "🤔 项目管理流程包括启动、计划、执行、监控和收尾 😂", "answer_en": "My fellow wizarding friend! A complete project management process."},
    {"question": "西湖醋鱼好吃吗？", "answer_zh": "😋 西湖醋鱼酸甜可口，值得一试！🐟", "answer_en": "West Lake fish in vinegar is a famous dish."},
    {"question": "你是谁？", "answer_zh": "👋 我是一个乐于助人的助手！😊", "answer_en": "I am an assistant."},
    {"question": "今天天气怎么样？", "answer_zh": "☀️ 今天阳光明媚，适合出门！🌈", "answer_en": "I cannot check the weather."},
]


def preftune(*args, cwd, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "preftune", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def ultrafeedback_like(folder, n_train=8, n_test=4):
    """A folder shaped like trl-lib/ultrafeedback_binarized: train/test splits, implicit-prompt conversations."""
    folder.mkdir()
    lines = open(os.path.join(tiny_dataset_path(), "train.jsonl")).read().splitlines()
    rows = []
    for line in lines[: n_train + n_test]:
        r = json.loads(line)
        rows.append({"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"], "score_chosen": 8.0, "score_rejected": 3.0})
    write_jsonl(folder / "train.jsonl", rows[:n_train])
    write_jsonl(folder / "test.jsonl", rows[n_train:])
    return str(folder)


# ------------------------------------------------------------ parsing (in-process)


def test_seed_000_flags_resolve_to_the_config():
    run = cli.parse_run("orpo", shlex.split(SEED_000.replace("\\\n", " ")))
    c = run.config
    assert run.model == "meta-llama/Meta-Llama-3-8B-Instruct" and not run.demo
    assert (c.beta, c.num_train_epochs, c.learning_rate, c.gradient_accumulation_steps) == (0.5, 2, 5e-5, 16)
    assert (c.per_device_train_batch_size, c.warmup_steps, c.save_total_limit, c.gradient_checkpointing) == (1, 0.03, 2, True)
    assert run.peft_config.target_modules == "all-linear"
    assert run.script.dataset == ["shareai-llama3-dpo-zh-en-emoji"]


def test_older_names_override_the_demo_defaults_of_their_target():
    """The demo sets warmup_steps and eval_strategy by default; their older names given on the
    command line replace those defaults instead of conflicting with them."""
    demo = cli.parse_run("orpo", []).config
    assert demo.warmup_steps == 5 and demo.eval_strategy.value == "steps"
    c = cli.parse_run("orpo", ["--warmup_ratio", "0.1", "--evaluation_strategy", "epoch", "--group_by_length",
                               "--no_cuda", "true"]).config
    assert (c.warmup_steps, c.eval_strategy.value, c.use_cpu) == (0.1, "epoch", True)
    assert str(getattr(c.train_sampling_strategy, "value", c.train_sampling_strategy)) == "group_by_length"


def test_model_path_wins_over_model_type_and_trl_names():
    run = cli.parse_run("dpo", ["--model_type", "qwen2-0_5b-instruct", "--model_id_or_path", "/m"])
    assert run.model == "/m"
    run = cli.parse_run("dpo", ["--model_name_or_path", "Qwen/Qwen2-0.5B-Instruct", "--dataset_name", "trl-lib/ultrafeedback_binarized",
                                "--dataset_config", "default", "--dataset_train_split", "train", "--dataset_test_split", "test",
                                "--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.1",
                                "--lora_target_modules", "q_proj", "v_proj"])
    s, p = run.script, run.peft_config
    assert run.model == "Qwen/Qwen2-0.5B-Instruct" and s.dataset == ["trl-lib/ultrafeedback_binarized"]
    assert (s.dataset_config, s.dataset_split, s.eval_split) == ("default", "train", "test")
    assert (p.r, p.lora_alpha, p.lora_dropout, set(p.target_modules)) == (8, 16, 0.1, {"q_proj", "v_proj"})


@pytest.mark.parametrize(
    "args, targets",
    [(["--lora"], "all-linear"), (["--lora", "--lora_target_modules", "q_proj,k_proj"], {"q_proj", "k_proj"}),
     (["--sft_type", "lora", "--lora_target_modules", "DEFAULT"], None), (["--sft_type", "full"], "no peft")],
)
def test_lora_switches(args, targets):
    run = cli.parse_run("orpo", ["--model", "m", *args])
    if targets == "no peft":
        assert run.peft_config is None
    else:
        got = run.peft_config.target_modules
        assert (set(got) if isinstance(got, (set, list)) else got) == targets


def test_dtype_sets_weights_and_mixed_precision():
    run = cli.parse_run("orpo", ["--model", "m", "--dtype", "bf16", "--use_cpu", "true"])  # CPU autocast has bf16
    assert run.config.bf16 is True and run.model_kwargs["dtype"] == "bfloat16"
    run = cli.parse_run("orpo", ["--model", "m", "--dtype", "fp32"])
    assert (run.config.bf16, run.config.fp16, run.model_kwargs["dtype"]) == (False, False, "float32")
    run = cli.parse_run("orpo", ["--model", "m", "--dtype", "AUTO"])  # this machine: no GPU
    assert run.model_kwargs["dtype"] == ("bfloat16" if run.config.bf16 else "float16" if run.config.fp16 else "float32")


def test_yaml_config_holds_flags_and_flags_win(tmp_path):
    (tmp_path / "run.yaml").write_text(
        "model: some/model\ndataset: [a.jsonl, b.jsonl]\nbeta: 0.25\nlearning_rate: 1.0e-5\nuse_peft: true\n"
        "lora_target_modules: [q_proj, v_proj]\nmodel_init_kwargs: {attn_implementation: eager}\nbatch_size: 4\n")
    run = cli.parse_run("dpo", ["--config", str(tmp_path / "run.yaml"), "--beta", "0.5"])
    c = run.config
    assert (run.model, c.beta, c.learning_rate, c.per_device_train_batch_size) == ("some/model", 0.5, 1e-5, 4)
    assert run.script.dataset == ["a.jsonl", "b.jsonl"] and c.model_init_kwargs == {"attn_implementation": "eager"}
    assert set(run.peft_config.target_modules) == {"q_proj", "v_proj"}


def test_demo_defaults_apply_only_without_model_and_data():
    run = cli.parse_run("orpo", ["--num_train_epochs", "1"])
    assert run.demo and run.config.learning_rate == DEMO_SETTINGS["learning_rate"] and run.config.num_train_epochs == 1
    assert not cli.parse_run("orpo", ["--dataset", "x.jsonl"]).demo


def test_notes_for_unused_lora_flags_and_check_model_is_latest():
    run = cli.parse_run("orpo", ["--model", "m", "--lora_r", "4", "--check_model_is_latest", "true"])
    assert any("--lora_r given but LoRA is off" in n for n in run.notes)
    assert any("never checks for a newer version" in n for n in run.notes)
    assert cli.parse_run("orpo", ["--model", "m", "--check_model_is_latest", "false"]).notes == []


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--lerning_rate", "1"], "unknown flag --lerning_rate; did you mean --learning_rate?"),
        (["--eval_strategy", "sometimes"], "invalid choice: 'sometimes'"),
        (["--batch_size", "2", "--per_device_train_batch_size", "4"], "--batch_size 2 and --per_device_train_batch_size 4 disagree"),
        (["--dtype", "fp32", "--bf16", "true"], "--dtype fp32 and --bf16 True disagree"),
        (["--dtype", "fp8"], "--dtype='fp8' is not known"),
        (["--sft_type", "full", "--use_peft", "true"], "--sft_type full and --use_peft True disagree"),
        (["--warmup_ratio", "3"], "warmup_ratio=3.0 must be in [0, 1)"),
        (["--warmup_ratio", "0.1", "--warmup_steps", "5"], "warmup_ratio=0.1 conflicts with warmup_steps=5"),
        (["--model_init_kwargs", "{bad"], "is not JSON"),
        (["--quantization_bit", "3"], "--quantization_bit=3 is not supported"),
        (["--load_in_4bit", "--load_in_8bit"], "exclude each other"),
        (["--load_in_4bit"], "only a LoRA adapter can train; add --use_peft"),
        (["--max_steps"], "expected one argument"),
    ],
)
def test_flag_errors_are_config_errors(args, needle):
    with pytest.raises(ConfigError) as err:
        cli.parse_run("orpo", ["--model", "m", *args])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_model_type():
    with pytest.raises(ConfigError, match="--model_type 'llama9-8b' is not in preftune's table"):
        cli.parse_run("orpo", ["--model_type", "llama9-8b"])
    run = cli.parse_run("orpo", ["--model_type", "llama9-8b", "--model", "m"])  # a path given: the name is not needed
    assert run.model == "m" and any("--model_type 'llama9-8b' is not in preftune's table" in n for n in run.notes)


def test_qlora_flags_say_what_is_missing_here():
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available():
        pytest.skip("this machine has bitsandbytes and a GPU")
    for flags in (["--load_in_4bit", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant"], ["--quantization_bit", "4"]):
        with pytest.raises(ConfigError) as err:
            cli.parse_run("orpo", ["--model", "m", "--use_peft", *flags])
        message = str(err.value)
        assert message.startswith("--load_in_4bit needs ") and "which this machine lacks" in message
        assert ("bitsandbytes" in message) == (importlib.util.find_spec("bitsandbytes") is None)
        assert ("a CUDA GPU" in message) == (not torch.cuda.is_available())


def test_yaml_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("lerning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'lerning_rate'; did you mean learning_rate\?"):
        cli.parse_run("orpo", ["--config", str(tmp_path / "bad.yaml")])
    (tmp_path / "broken.yaml").write_text("beta: [1\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        cli.parse_run("orpo", ["--config", str(tmp_path / "broken.yaml")])
    with pytest.raises(ConfigError, match="does not exist"):
        cli.parse_run("orpo", ["--config", str(tmp_path / "none.yaml")])


def test_main_prints_one_line_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n')
    for args, needle in [
        (["orpo", "--model", tiny_model_path(), "--dataset", "p.jsonl"], "p.jsonl line 2 is not valid JSON"),
        (["orpo", "--gradient_accumulation_steps"], "expected one argument"),
        (["sfft"], "unknown command 'sfft'"),
        (["data", "inspect"], "the following arguments are required: dataset"),
    ]:
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        errors = [l for l in err.splitlines() if l.startswith("preftune: error: ")]  # (progress bars aside)
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err


# ------------------------------------------------------------------- torchrun


def test_torchrun_command_single_node():
    cmd, env = torchrun_command(["orpo", "--beta", "0.5"], {"NPROC_PER_NODE": "2", "PATH": "/bin"}, cuda_available=False)
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "preftune", "orpo", "--beta", "0.5"]
    assert "NPROC_PER_NODE" not in env and env["PATH"] == "/bin" and env["ACCELERATE_USE_CPU"] == "true"
    cmd, env = torchrun_command(["dpo"], {"NPROC_PER_NODE": "4", "MASTER_PORT": "29501"}, cuda_available=True)
    assert cmd[3:9] == ["--nproc_per_node", "4", "--master_addr", "127.0.0.1", "--master_port", "29501"]
    assert "ACCELERATE_USE_CPU" not in env


def test_torchrun_command_multi_node_and_no_relaunch():
    env = {"NPROC_PER_NODE": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    cmd, child = torchrun_command(["orpo"], env, cuda_available=True)
    assert cmd[3:15] == ["--nproc_per_node", "8", "--nnodes", "2", "--node_rank", "1", "--master_addr", "10.0.0.1", "--master_port", "29500", "-m", "preftune"]
    assert not {"NPROC_PER_NODE", "NNODES", "NODE_RANK"} & set(child) and child["MASTER_ADDR"] == "10.0.0.1"
    assert torchrun_command(["orpo"], {}) is None
    assert torchrun_command(["orpo"], {"NPROC_PER_NODE": "2", "LOCAL_RANK": "0"}) is None  # already a child


@pytest.mark.parametrize(
    "env, needle",
    [({"NPROC_PER_NODE": "two"}, "NPROC_PER_NODE='two' must be a positive whole number"),
     ({"NPROC_PER_NODE": "2", "NNODES": "2"}, "needs MASTER_ADDR"),
     ({"NPROC_PER_NODE": "2", "NNODES": "2", "MASTER_ADDR": "h", "NODE_RANK": "2"}, "NODE_RANK='2' must be a whole number from 0 to 1")],
)
def test_torchrun_env_errors(env, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        torchrun_command(["orpo"], env, cuda_available=False)


# ------------------------------------------------------------ real processes


@pytest.mark.slow
def test_demo_trains_bundled_model_and_writes_loadable_folder(tmp_path):
    out = preftune("orpo", "--num_train_epochs", "1", "--eval_steps", "25", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "this is the demo" in out.stdout
    assert "prepared 600" in out.stdout  # the data report comes before training
    lines = [l for l in out.stdout.splitlines() if " eval " in l and "acc" in l]
    assert lines, out.stdout[-2000:]
    held_out = [l for l in out.stdout.splitlines() if l.startswith("preftune: held-out")][-1]
    accuracy = float(held_out.split("rewards/accuracies=")[1].split(",")[0])
    assert accuracy >= 0.9
    folder = tmp_path / "outputs" / "orpo-tiny-llama"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(tiny_model_path()).config.vocab_size
    config = json.loads((folder / "preftune_config.json").read_text())
    assert config["trainer"] == "ORPOTrainer" and config["beta"] == 0.5
    assert "before:" in out.stdout and "after:" in out.stdout


@pytest.mark.slow
def test_dpo_with_lora_by_path(tmp_path):
    out = preftune("dpo", "--model", tiny_model_path(), "--dataset", f"{tiny_dataset_path()}#32", "--max_steps", "3",
                   "--use_peft", "--lora_r", "4", "--output_dir", "run", "--report_to", "none", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "adapter_config.json").exists()
    assert "this is the demo" not in out.stdout


@pytest.mark.slow
def test_seed_000_command_line_runs_with_only_the_program_name_changed(tmp_path):
    data = write_jsonl(tmp_path / "emoji.jsonl", EMOJI_ROWS)
    args = shlex.split(SEED_000.replace("\\\n", " "))
    # offline: the bundled model stands in for llama3-8b-instruct (ms-swift's --model_id_or_path), a local file in
    # the emoji set's format for the hub set, and 2 steps for 2 epochs
    args += ["--model_id_or_path", tiny_model_path(), "--dataset", data, "--max_steps", "2", "--output_dir", "output"]
    out = preftune("orpo", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "output"
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= {m.split(".")[-1] for m in adapter["target_modules"]}
    config = json.loads((folder / "preftune_config.json").read_text())
    assert (config["beta"], config["learning_rate"], config["per_device_train_batch_size"], config["gradient_accumulation_steps"]) == (0.5, 5e-5, 1, 16)
    assert (config["warmup_steps"], config["save_total_limit"], config["gradient_checkpointing"]) == (0.03, 2, True)
    assert "prepared 4 pairs" in out.stdout
    command = json.loads((folder / "preftune_command.json").read_text())
    assert command["model"] == tiny_model_path() and command["script"]["model_type"] == "llama3-8b-instruct"


@pytest.mark.slow
def test_trl_script_flags_with_splits_and_lora(tmp_path):
    """Seeds 003/004: TRL's example scripts' flags (model and data are local stand-ins)."""
    data = ultrafeedback_like(tmp_path / "ultrafeedback_binarized")
    out = preftune("dpo", "--model_name_or_path", tiny_model_path(), "--dataset_name", data, "--num_train_epochs", "1",
                   "--logging_steps", "25", "--output_dir", "Qwen2-0.5B-DPO", "--dataset_train_split", "train",
                   "--dataset_test_split", "test", "--eval_strategy", "steps", "--eval_steps", "1", "--max_steps", "1",
                   "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    adapter = json.loads((tmp_path / "Qwen2-0.5B-DPO" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert "preftune: eval data: prepared 4 pairs" in out.stdout and "preftune: held-out" in out.stdout


@pytest.mark.slow
def test_yaml_config_run_and_resolved_config_file(tmp_path):
    data = write_jsonl(tmp_path / "emoji.jsonl", EMOJI_ROWS)
    (tmp_path / "run.yaml").write_text(
        f"model: {tiny_model_path()}\ndataset: [{data}, tiny-prefs#8]\nmax_steps: 1\nlearning_rate: 1.0e-4\n"
        "split_dataset_ratio: 0.25\neval_strategy: steps\neval_steps: 1\noutput_dir: out\nreport_to: none\n")
    out = preftune("orpo", "--config", "run.yaml", "--learning_rate", "2e-4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((tmp_path / "out" / "preftune_config.json").read_text())
    assert config["learning_rate"] == 2e-4 and config["max_steps"] == 1
    assert "preftune: eval data: prepared 3 pairs" in out.stdout  # ceil(0.25 * 12)


@pytest.mark.slow
def test_nproc_per_node_runs_two_data_parallel_processes(tmp_path):
    out = preftune("orpo", "--model", tiny_model_path(), "--dataset", "tiny-prefs#16", "--num_train_epochs", "1",
                   "--per_device_train_batch_size", "2", "--output_dir", "ddp", "--logging_steps", "1", "--eval_strategy", "no",
                   cwd=tmp_path, env={"NPROC_PER_NODE": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torchrun --nproc_per_node 2 --standalone -m preftune orpo" in out.stdout
    # 16 pairs, 2 per process, 2 processes: 4 steps (one process alone would take 8)
    assert "step     4/4 train" in out.stdout and "/8 train" not in out.stdout
    assert out.stdout.count("preftune: model saved to ddp") == 1  # rank 0 speaks
    assert (tmp_path / "ddp" / "model.safetensors").exists()


@pytest.mark.slow
def test_data_inspect_as_a_command(tmp_path):
    data = write_jsonl(tmp_path / "emoji.jsonl", EMOJI_ROWS)
    out = preftune("data", "inspect", data, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["pairs"] == 4 and report["shape"].startswith("shareai emoji")
    assert report["length_bias"]["chosen_longer"] + report["length_bias"]["rejected_longer"] + report["length_bias"]["same_length"] == pytest.approx(1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needle",
    [
        (["orpo", "--model", "/no/such/model"], "does not exist"),
        (["orpo", "--truncation_mode", "middle"], "truncation_mode"),
        (["orpo", "--max_length", "100", "--max_prompt_length", "200"], "--max_prompt_length"),
        (["dpo", "--loss_type", "nope"], "loss_type='nope'"),
        (["orpo", "--dataset", "missing.jsonl"], "missing.jsonl"),
        (["orpo", "--dataset", "tiny-prefs#0"], "positive row count"),
        (["sft"], "unknown command"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, needle):
    out = preftune(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    error_lines = [l for l in out.stderr.splitlines() if l.startswith("preftune: error:")]
    assert len(error_lines) == 1 and needle in error_lines[0], out.stderr[-2000:]


@pytest.mark.slow
def test_bad_row_is_reported_with_its_number(tmp_path):
    rows = [{"prompt": "hi", "chosen": "a b", "rejected": "c d"}] * 3 + [{"prompt": "hi", "chosen": "same", "rejected": "same"}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = preftune("orpo", "--model", tiny_model_path(), "--dataset", str(path), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "row 3 (line 4)" in out.stderr and "--skip_bad_rows" in out.stderr
    out = preftune("orpo", "--model", tiny_model_path(), "--dataset", str(path), "--skip_bad_rows", "--max_steps", "1",
                   "--output_dir", "skip", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "dropped 1 bad row (--skip_bad_rows)" in out.stdout


def test_model_loading_flags_reach_from_pretrained():
    run = cli.parse_run("orpo", ["--model", "m", "--device_map", "auto", "--trust_remote_code", "--attn_implementation", "eager"])
    kwargs = run.model_kwargs
    assert (kwargs["device_map"], kwargs["trust_remote_code"], kwargs["attn_implementation"]) == ("auto", True, "eager")
    assert cli.parse_run("orpo", ["--model", "m"]).model_kwargs.get("trust_remote_code") is None  # off unless asked
    with pytest.raises(ConfigError, match="--device_map 'everywhere'"):
        cli.parse_run("orpo", ["--model", "m", "--device_map", "everywhere"])


def test_no_evaluation_data_builds_a_new_config_instead_of_changing_the_validated_one():
    run = cli.parse_run("orpo", ["--model", tiny_model_path(), "--dataset", "x.jsonl", "--eval_strategy", "steps",
                                 "--eval_steps", "5", "--warmup_ratio", "0.1", "--beta", "0.3"])
    config = run.config_without_evaluation()
    assert config is not run.config and run.config.eval_strategy == "steps"  # the validated config is untouched
    assert config.eval_strategy == "no"
    assert (config.beta, config.warmup_steps, config.model_init_kwargs) == (0.3, 0.1, run.config.model_init_kwargs)


# ------------------------------------------------------------- ms-swift's rlhf form


SWIFT_DPO = ["--model", "m", "--dataset", "x.jsonl", "--train_type", "lora", "--target_modules", "all-linear",
             "--lora_rank", "8", "--torch_dtype", "bfloat16", "--use_cpu", "true", "--beta", "0.2",
             "--split_dataset_ratio", "0.1"]


@pytest.mark.parametrize("kind", ["dpo", "orpo"])
def test_rlhf_type_is_the_command_of_that_name(kind):
    command, rest = cli.rlhf_command(["--rlhf_type", kind, *SWIFT_DPO])
    assert (command, rest) == (kind, SWIFT_DPO)
    assert cli.rlhf_command([f"--rlhf_type={kind}", *SWIFT_DPO]) == (kind, SWIFT_DPO)
    run = cli.parse_run(command, rest)
    assert run.command == kind and run.config.beta == 0.2 and run.model_kwargs["dtype"] == "bfloat16"
    assert run.peft_config.r == 8 and run.peft_config.target_modules == "all-linear"


def test_ms_swift_4_names_of_the_lora_switch_and_targets():
    run = cli.parse_run("dpo", ["--model", "m", "--tuner_type", "lora", "--target_modules", "q_proj,v_proj"])
    assert set(run.peft_config.target_modules) == {"q_proj", "v_proj"}
    assert cli.parse_run("dpo", ["--model", "m", "--tuner_type", "full"]).peft_config is None


@pytest.mark.parametrize("argv, words", [
    (["rlhf", "--beta", "0.1"], "needs --rlhf_type"),
    (["rlhf", "--rlhf_type", "ppo"], "--rlhf_type 'ppo' is not one preftune trains"),
])
def test_rlhf_without_a_known_type_is_one_line(capsys, argv, words):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("preftune: error:") and words in err and "\n" not in err
