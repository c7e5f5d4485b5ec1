"""A run that stops early says where to go on: a full disk (checkpoint, final save, merge) and Ctrl-C.

The full disk is real where this process may mount a small tmpfs (root, as in CI); the
same failures are also produced by making the writers raise what they raise on a full
disk (safetensors' error, an OSError with ENOSPC), so the tests run everywhere.
"""
import errno
import os
import shlex
import subprocess
import warnings

import pytest
import torch

from preftune import ORPOConfig

from preftune.train import checkpoints

from preftune import cli
from preftune.assets import tiny_model_path
from preftune.cli.train import resume_command

FLAGS = ["--max_steps", "12", "--save_strategy", "steps", "--save_steps", "4", "--logging_steps", "4",
         "--eval_strategy", "no", "--num_train_epochs", "1"]


def run_cli(argv, capsys):
    """(exit code, stdout, what preftune said on stderr): stderr's lines that are not progress bars."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(("preftune", "Traceback"))]
    return code, out, "\n".join(lines) + "\n"


def safetensors_full_disk():
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def fail_nth_model_save(monkeypatch, n):
    """save_pretrained's safetensors writer raises as on a full disk from its n-th call on."""
    import transformers.modeling_utils as modeling_utils

    real, calls = modeling_utils.safe_save_file, []

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) >= n:
            raise safetensors_full_disk()
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_file)


# ------------------------------------------------------------ classifying a failed write


def test_write_failures_in_words(tmp_path, monkeypatch):
    folder = str(tmp_path / "checkpoint-8")
    device = f"no space left on the device of {tmp_path}"
    assert checkpoints.write_failure(OSError(errno.ENOSPC, "No space left on device"), folder) == device
    assert checkpoints.write_failure(OSError(errno.EDQUOT, "Disk quota exceeded"), folder) == device
    assert checkpoints.write_failure(safetensors_full_disk(), folder) == device
    assert checkpoints.write_failure(OSError(errno.EACCES, "Permission denied"), folder) == "a write failed (Permission denied)"
    assert checkpoints.write_failure(ValueError("a bug"), folder) is None
    assert checkpoints.write_failure(RuntimeError("size mismatch"), folder) is None
    # torch.save's short write is a RuntimeError from its zip writer: a full disk when little space is left
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1024})())
    assert checkpoints.write_failure(torch_error, folder) == device


def test_writing_names_the_last_complete_checkpoint(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    checkpoints.mark_complete(str(tmp_path / "checkpoint-4"), 4)
    with pytest.raises(checkpoints.SaveError) as caught:
        with checkpoints.writing(str(tmp_path / "checkpoint-8"), str(tmp_path)):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.last_complete == str(tmp_path / "checkpoint-4")
    assert str(caught.value) == (f"no space left on the device of {tmp_path} while writing {tmp_path / 'checkpoint-8'}; "
                                 f"the last complete checkpoint is {tmp_path / 'checkpoint-4'}")
    with pytest.raises(ZeroDivisionError):  # a bug is not a failed write
        with checkpoints.writing(str(tmp_path / "checkpoint-8"), str(tmp_path)):
            1 / 0


# ------------------------------------------------------------------ the command line


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_says_what_to_do_and_the_resume_finishes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["orpo", "--output_dir", str(out), *FLAGS]
    fail_nth_model_save(monkeypatch, 2)  # checkpoint-4 is written, checkpoint-8 is not
    code, stdout, err = run_cli(argv, capsys)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1  # one sentence
    assert err.startswith(f"preftune: error: no space left on the device of {out} while writing {out / 'checkpoint-8'}; "
                          f"the last complete checkpoint is {out / 'checkpoint-4'}; free space (or lower --save_total_limit), "
                          "then resume with: preftune orpo ")
    assert "preftune: training in 1 process on cpu (world size 1" in stdout
    assert "preftune: log-probs: prefix-shared packed rows (sdpa)\n" in stdout  # the path, said once
    assert checkpoints.is_complete(str(out / "checkpoint-4")) and not checkpoints.is_complete(str(out / "checkpoint-8"))
    resume = shlex.split(err.split("resume with: ")[1].strip())
    assert resume[:2] == ["preftune", "orpo"] and resume[-2:] == ["--resume_from_checkpoint", "true"]
    monkeypatch.undo()
    code, stdout, err = run_cli(resume[1:], capsys)
    assert code == 0, err
    assert f"resuming from {out / 'checkpoint-4'}" in stdout and "set aside as incomplete-checkpoint-8" in stdout
    assert checkpoints.is_complete(str(out / "checkpoint-12")) and (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_full_disk_at_the_final_save(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    fail_nth_model_save(monkeypatch, 4)  # checkpoints 4, 8, 12 are written; the final model is not
    code, _, err = run_cli(["orpo", "--output_dir", str(out), *FLAGS], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"while writing {out}; the last complete checkpoint is {out / 'checkpoint-12'}" in err
    assert "then resume with: preftune orpo" in err


@pytest.mark.slow
def test_ctrl_c_names_the_last_checkpoint_and_the_resume_command(tmp_path, capsys, monkeypatch):
    from preftune.train.trainer import PreferenceTrainer

    real = PreferenceTrainer.compute_loss

    def interrupted_at_step_6(self, *args, **kwargs):
        if self.model.training and self.state.global_step == 6:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PreferenceTrainer, "compute_loss", interrupted_at_step_6)
    out = tmp_path / "run"
    code, _, err = run_cli(["orpo", "--output_dir", str(out), *FLAGS], capsys)
    assert code == 130 and "Traceback" not in err
    assert err.startswith(f"preftune: interrupted; the last complete checkpoint is {out / 'checkpoint-4'}; resume with: "
                          f"preftune orpo --output_dir {out} ")
    assert err.strip().endswith("--resume_from_checkpoint true")

    code, _, err = run_cli(["orpo", "--output_dir", str(tmp_path / "early"), *FLAGS[:4], "--save_steps", "100"], capsys)
    assert code == 130
    assert err.strip() == ("preftune: interrupted before any checkpoint was complete, so there is nothing to resume from "
                           "(--save_steps sets how often one is written).")


def test_the_resume_command_keeps_the_flags_and_hides_tokens():
    command = resume_command("dpo", ["--model", "m", "--hub_token", "hf_SECRET", "--beta", "0.2"], "outputs/dpo-run")
    assert command == ("preftune dpo --model m --hub_token '<redacted>' --beta 0.2 --output_dir outputs/dpo-run "
                       "--resume_from_checkpoint true")
    assert resume_command("orpo", ["--output_dir=x", "--resume_from_checkpoint", "true"], "x") == \
        "preftune orpo --output_dir=x --resume_from_checkpoint true"


def test_full_disk_in_merge_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preftune.apps import merge

    adapter = tmp_path / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path()),
                           LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_path()).save_pretrained(adapter)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(merge, "_save", full)
    code, _, err = run_cli(["merge", "--adapter", str(adapter), "--output", str(tmp_path / "merged")], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"preftune: error: no space left on the device of {tmp_path} while writing the merged model to "
                           f"{tmp_path / 'merged'}; nothing was left behind, so free space and run the merge again.")
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


def _can_mount_tmpfs(path) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_real_full_disk(tmp_path, capsys):
    """On a 10 MiB file system: checkpoint-4 fits (~6 MiB), checkpoint-8 does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        out = disk / "run"
        code, _, err = run_cli(["orpo", "--output_dir", str(out), *FLAGS], capsys)
        assert code == 2 and "Traceback" not in err
        assert f"preftune: error: no space left on the device of {out} while writing {out / 'checkpoint-8'}" in err
        assert f"the last complete checkpoint is {out / 'checkpoint-4'}" in err
        assert checkpoints.is_complete(str(out / "checkpoint-4"))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ------------------------------------------------------------------ first-use rough edges


def test_no_pinned_memory_without_an_accelerator(tmp_path):
    args = ORPOConfig(output_dir=str(tmp_path))
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "accelerator") and torch.accelerator.is_available())
    assert args.dataloader_pin_memory is has_accelerator
    assert ORPOConfig(output_dir=str(tmp_path), dataloader_pin_memory=True).dataloader_pin_memory is True  # kept
    if has_accelerator:
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preftune import ORPOTrainer
    from preftune.data.sources import load_preference_data

    trainer = ORPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path()), args=args,
                          processing_class=AutoTokenizer.from_pretrained(tiny_model_path()),
                          train_dataset=load_preference_data("tiny-prefs", "train").select(range(4)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        next(iter(trainer.get_train_dataloader()))
    assert not [w for w in caught if "pin_memory" in str(w.message)]
