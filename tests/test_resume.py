"""Nothing lost: a run killed with SIGKILL and resumed ends bitwise where an uninterrupted run ends.

Real processes are killed (a driver script kills itself at a chosen point: after a
checkpoint is complete, or half-way through writing one), then resumed with
``--resume_from_checkpoint true`` through the command line (ORPO) and the Python API
(DPO with bco_pair, killed half-way through a checkpoint, and TR-DPO, whose synced
reference weights are state). Every weight, the optimizer's moments and the logged
losses must equal the uninterrupted run's exactly. The unit tests at the end pin
`preftune.train.checkpoints`' rules on fake run folders.

The processes run two at a time; each costs a few seconds of start-up, the training
itself (10 steps of the bundled tiny model) well under one.
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file

from preftune.train import checkpoints
from preftune.assets import tiny_dataset_files, tiny_model_path
from preftune.errors import ConfigError

# The same settings for every run: 40 pairs, 4 x 2 per step -> 5 steps an epoch, so step 6 resumes mid-epoch 2.
SETTINGS = dict(max_steps=10, save_strategy="steps", save_steps=2, logging_steps=1, seed=0,
                per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-3,
                lr_scheduler_type="cosine", warmup_steps=2, use_cpu=True, report_to="none")
N_ROWS = 40

DRIVER = r'''
"""Train on the bundled tiny model; optionally SIGKILL this process at a chosen point."""
import json, os, signal, sys

import torch

torch.set_num_threads(1)
import transformers
from transformers import TrainerCallback

from preftune.train import checkpoints
from preftune.assets import tiny_model_path
from preftune.train.trainer import PreferenceTrainer

spec = json.loads(sys.argv[1])
TRAINERS = []


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


original_init = PreferenceTrainer.__init__


def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    TRAINERS.append(self)


PreferenceTrainer.__init__ = init

if spec.get("kill"):
    where, at = spec["kill"]
    if where == "on_save":  # the checkpoint of step `at` is complete (marker written), then the process dies
        class Kill(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == at:
                    die()

        original_train = PreferenceTrainer.train

        def train(self, *args, **kwargs):
            self.add_callback(Kill())
            return original_train(self, *args, **kwargs)

        PreferenceTrainer.train = train
    else:  # die half-way through writing checkpoint `at`
        owner, name = {"rng": (transformers.Trainer, "_save_rng_state"),
                       "optimizer": (transformers.Trainer, "_save_optimizer_and_scheduler"),
                       "extra": (checkpoints, "save_extra_state")}[where]
        original = getattr(owner, name)

        def patched(*args, **kwargs):
            if TRAINERS[-1].state.global_step == at:
                die()
            return original(*args, **kwargs)

        setattr(owner, name, patched)

for run in spec["runs"]:
    if run["mode"] == "cli":
        from preftune import cli

        code = cli.main(run["argv"])
        assert code == 0, code
        out = run["argv"][run["argv"].index("--output_dir") + 1]
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from preftune import DPOConfig, DPOTrainer
        from preftune.data.sources import load_preference_data

        out = run["out"]
        extra = {"bco": dict(loss_type=["bco_pair"]),
                 "trdpo": dict(sync_ref_model=True, ref_model_sync_steps=2, ref_model_mixup_alpha=0.5)}[run["kind"]]
        args = DPOConfig(output_dir=out, save_total_limit=run.get("save_total_limit"), **spec["settings"], **extra)
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path()), args=args,
                             processing_class=AutoTokenizer.from_pretrained(tiny_model_path()),
                             train_dataset=load_preference_data(run["data"]))
        trainer.train(resume_from_checkpoint=True if run.get("resume") else None)
        trainer.save_model(out)
    trainer = TRAINERS[-1]
    result = {"global_step": trainer.state.global_step}
    if getattr(trainer.args, "sync_ref_model", False):
        from safetensors.torch import save_file

        weights = {k: v.detach().clone() for k, v in trainer.reference.model.state_dict().items()}
        save_file(weights, os.path.join(out, "final_reference.safetensors"))
    with open(os.path.join(out, "driver_result.json"), "w") as f:
        json.dump(result, f)
'''


# ------------------------------------------------------------------ helpers


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def _flags(settings):
    argv = []
    for key, value in settings.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


class Lab:
    def __init__(self, root):
        self.root = root
        self.driver = root / "driver.py"
        self.driver.write_text(DRIVER)
        lines = open(tiny_dataset_files()["train"], encoding="utf-8").read().splitlines()[:N_ROWS]
        self.data = root / "pairs.jsonl"
        self.data.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def cli_argv(self, out):
        return ["orpo", "--model", tiny_model_path(), "--dataset", str(self.data), "--output_dir", str(out),
                *_flags(SETTINGS)]

    def drive(self, runs, kill=None):
        spec = {"runs": runs, "kill": kill, "settings": SETTINGS}
        return [sys.executable, str(self.driver), json.dumps(spec)]

    def api(self, kind, out, resume=False, save_total_limit=None):
        return {"mode": "api", "kind": kind, "out": str(out), "data": str(self.data), "resume": resume,
                "save_total_limit": save_total_limit}

    def run(self, commands):
        """Run the commands, two at a time (each process uses one thread); results in order."""
        def one(cmd):
            return subprocess.run(cmd, cwd=self.root, env=_env(), capture_output=True, text=True, timeout=300)

        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(one, commands))


def _listing(run_dir):
    """name -> (complete?, files) for every folder in a run folder."""
    return {e.name: (checkpoints.is_complete(e.path), sorted(os.listdir(e.path)))
            for e in os.scandir(run_dir) if e.is_dir()}


def _assert_same_tensors(a_path, b_path):
    a, b = load_file(a_path), load_file(b_path)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def _assert_same_optimizer(a_dir, b_dir):
    a = torch.load(os.path.join(a_dir, "optimizer.pt"), weights_only=True)
    b = torch.load(os.path.join(b_dir, "optimizer.pt"), weights_only=True)
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for key, state in a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["state"][key][name]), (key, name)


def _log(run_dir, step=10):
    with open(os.path.join(run_dir, f"checkpoint-{step}", "trainer_state.json")) as f:
        return [(e["step"], e["loss"], e["learning_rate"], e["grad_norm"]) for e in json.load(f)["log_history"] if "loss" in e]


def _assert_same_run(resumed, reference):
    """Final weights, the last checkpoint's optimizer moments and every logged loss: bitwise equal."""
    _assert_same_tensors(resumed / "model.safetensors", reference / "model.safetensors")
    _assert_same_optimizer(resumed / "checkpoint-10", reference / "checkpoint-10")
    assert _log(resumed) == _log(reference) and len(_log(reference)) == 10


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _killed(proc):
    assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}: " + proc.stderr[-3000:]


# --------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted reference runs; four runs killed at different points; their resumptions."""
    lab = Lab(tmp_path_factory.mktemp("resume"))
    root = lab.root
    ref = {"orpo": root / "ref-orpo", "bco": root / "ref-bco", "trdpo": root / "ref-trdpo"}
    out = {"after_save": root / "orpo-after-save", "mid_save": root / "orpo-mid-save",
           "bco": root / "bco", "trdpo": root / "trdpo"}
    killed = lab.run([
        lab.drive([{"mode": "cli", "argv": lab.cli_argv(ref["orpo"])},
                   lab.api("bco", ref["bco"]), lab.api("trdpo", ref["trdpo"], save_total_limit=1)]),
        lab.drive([{"mode": "cli", "argv": lab.cli_argv(out["after_save"])}], kill=["on_save", 6]),
        lab.drive([{"mode": "cli", "argv": lab.cli_argv(out["mid_save"])}], kill=["rng", 8]),
        # killed after trainer_state.json is written but before preftune's state and marker: plain
        # transformers would take this checkpoint as a complete one
        lab.drive([lab.api("bco", out["bco"])], kill=["extra", 8]),
        lab.drive([lab.api("trdpo", out["trdpo"], save_total_limit=1)], kill=["optimizer", 8]),
    ])
    after_kill = {name: _listing(path) for name, path in out.items() if path.exists()}
    cli = [sys.executable, "-m", "preftune"]
    resumed = lab.run([
        cli + lab.cli_argv(out["after_save"]) + ["--resume_from_checkpoint", "true"],
        cli + lab.cli_argv(out["mid_save"]) + ["--resume_from_checkpoint", "true"],
        lab.drive([lab.api("bco", out["bco"], resume=True),
                   lab.api("trdpo", out["trdpo"], resume=True, save_total_limit=1)]),
    ])
    return dict(ref=ref, out=out, reference_proc=killed[0], killed=dict(zip(out, killed[1:])),
                after_kill=after_kill, resumed=dict(zip(["after_save", "mid_save", "dpo"], resumed)))


@pytest.fixture(scope="module")
def ref(runs):
    _ok(runs["reference_proc"])
    return runs["ref"]


@pytest.mark.slow
def test_killed_right_after_a_checkpoint_resumes_bitwise_through_the_cli(runs, ref):
    _killed(runs["killed"]["after_save"])
    listing = runs["after_kill"]["after_save"]
    assert {n for n, (done, _) in listing.items() if done} == {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    assert set(listing) == {"checkpoint-2", "checkpoint-4", "checkpoint-6"}
    proc = _ok(runs["resumed"]["after_save"])
    assert f"preftune: resuming from {runs['out']['after_save'] / 'checkpoint-6'}" in proc.stdout
    assert "incomplete" not in proc.stdout
    _assert_same_run(runs["out"]["after_save"], ref["orpo"])


@pytest.mark.slow
def test_killed_while_saving_sets_the_half_checkpoint_aside_and_resumes_bitwise(runs, ref):
    _killed(runs["killed"]["mid_save"])
    half = runs["after_kill"]["mid_save"]["checkpoint-8"]
    assert half[0] is False and "model.safetensors" in half[1] and "trainer_state.json" not in half[1]
    assert runs["after_kill"]["mid_save"]["checkpoint-6"][0] is True
    proc = _ok(runs["resumed"]["mid_save"])
    assert ("preftune: checkpoint-8 is incomplete (the run stopped while saving it); "
            "set aside as incomplete-checkpoint-8") in proc.stdout
    assert f"preftune: resuming from {runs['out']['mid_save'] / 'checkpoint-6'}" in proc.stdout
    run_dir = runs["out"]["mid_save"]
    aside = run_dir / "incomplete-checkpoint-8"
    assert sorted(os.listdir(aside)) == half[1]  # moved as it was, nothing deleted
    assert checkpoints.is_complete(run_dir / "checkpoint-8")  # saved again, whole, by the resumed run
    _assert_same_run(run_dir, ref["orpo"])


@pytest.mark.slow
def test_a_half_written_checkpoint_is_skipped_and_the_run_resumes_exactly(runs, ref):
    """DPO (bco_pair, stateless as TRL 1.16's) killed while writing checkpoint-8 resumes from checkpoint-6."""
    _killed(runs["killed"]["bco"])
    half = runs["after_kill"]["bco"]["checkpoint-8"]
    assert half[0] is False and "trainer_state.json" in half[1] and checkpoints.EXTRA_STATE not in half[1]
    proc = _ok(runs["resumed"]["dpo"])
    assert "checkpoint-8 is incomplete" in proc.stdout
    run_dir = runs["out"]["bco"]
    with open(ref["bco"] / "driver_result.json") as f:
        expected = json.load(f)
    with open(run_dir / "driver_result.json") as f:
        got = json.load(f)
    assert got == expected and expected["global_step"] == 10
    _assert_same_run(run_dir, ref["bco"])


@pytest.mark.slow
def test_trdpo_reference_weights_are_restored_and_save_total_limit_keeps_the_last_complete(runs, ref):
    _killed(runs["killed"]["trdpo"])
    listing = runs["after_kill"]["trdpo"]
    # save_total_limit=1: checkpoint-2 and -4 rotated away; the half-written checkpoint-8 did not cost checkpoint-6
    assert {n: done for n, (done, _) in listing.items()} == {"checkpoint-6": True, "checkpoint-8": False}
    assert "reference_model.safetensors" in listing["checkpoint-6"][1]
    assert "optimizer.pt" not in listing["checkpoint-8"][1]
    _ok(runs["resumed"]["dpo"])
    run_dir = runs["out"]["trdpo"]
    _assert_same_run(run_dir, ref["trdpo"])
    _assert_same_tensors(run_dir / "final_reference.safetensors", ref["trdpo"] / "final_reference.safetensors")
    # the reference did move (it is not the initial model, nor the policy)
    reference = load_file(ref["trdpo"] / "final_reference.safetensors")
    initial = load_file(os.path.join(tiny_model_path(), "model.safetensors"))
    policy = load_file(ref["trdpo"] / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(reference[name], initial[name]) and not torch.equal(reference[name], policy[name])
    after = _listing(run_dir)
    assert {n for n, (done, _) in after.items() if done} == {"checkpoint-10"}
    assert "incomplete-checkpoint-8" in after  # rotation never touches what was set aside


# ------------------------------------------------------- checkpoints.py rules


def _fake_run(tmp_path, complete=(), incomplete=()):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for step in complete:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        checkpoints.mark_complete(str(folder), step)
    for step in incomplete:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_text("half")
    return tmp_path


def _names(run_dir):
    return sorted(os.listdir(run_dir))


def test_marker_lists_the_files_and_is_written_last(tmp_path):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "model.safetensors").write_text("w")
    assert not checkpoints.is_complete(folder)
    checkpoints.mark_complete(str(folder), 3)
    with open(folder / checkpoints.MARKER) as f:
        assert json.load(f) == {"step": 3, "files": ["model.safetensors"]}
    assert _names(folder) == ["model.safetensors", checkpoints.MARKER]  # no temporary file left
    checkpoints.unmark(str(folder))
    checkpoints.unmark(str(folder))  # twice: no error
    assert not checkpoints.is_complete(folder)


def test_rotate_deletes_oldest_complete_only(tmp_path):
    run = _fake_run(tmp_path, complete=[2, 4, 6], incomplete=[8])
    (run / "incomplete-checkpoint-1").mkdir()
    (run / "checkpoint-x").mkdir()
    assert checkpoints.rotate(str(run), 2) == [str(run / "checkpoint-2")]
    assert _names(run) == ["checkpoint-4", "checkpoint-6", "checkpoint-8", "checkpoint-x", "incomplete-checkpoint-1"]
    assert checkpoints.rotate(str(run), 1) == [str(run / "checkpoint-4")]
    assert checkpoints.rotate(str(run), 1) == []  # the newest complete (6) stays although 8 is newer
    assert _names(run) == ["checkpoint-6", "checkpoint-8", "checkpoint-x", "incomplete-checkpoint-1"]


def test_rotate_keeps_the_best_and_the_newest(tmp_path):
    run = _fake_run(tmp_path / "a", complete=[2, 4, 6, 8])
    assert checkpoints.rotate(str(run), 1, keep=str(run / "checkpoint-2")) == [str(run / "checkpoint-4"), str(run / "checkpoint-6")]
    assert _names(run) == ["checkpoint-2", "checkpoint-8"]
    run2 = _fake_run(tmp_path / "b", complete=[2, 4])
    assert checkpoints.rotate(str(run2), 1, keep=str(run2 / "checkpoint-4")) == [str(run2 / "checkpoint-2")]
    for limit in (None, 0, -1):
        assert checkpoints.rotate(str(run), limit) == [] and _names(run) == ["checkpoint-2", "checkpoint-8"]


@pytest.mark.parametrize("value", [None, False, "false", "False", "", "no", "none"])
def test_resolve_resume_off(tmp_path, value):
    run = _fake_run(tmp_path, complete=[2], incomplete=[4])
    assert checkpoints.resolve_resume(value, str(run), say=pytest.fail) is None
    assert _names(run) == ["checkpoint-2", "checkpoint-4"]  # nothing renamed


@pytest.mark.parametrize("value", [True, "true", "True", " latest "])
def test_resolve_resume_true_takes_newest_complete_and_sets_newer_aside(tmp_path, value):
    run = _fake_run(tmp_path, complete=[2, 6], incomplete=[4, 8, 10])
    said = []
    assert checkpoints.resolve_resume(value, str(run), say=said.append) == str(run / "checkpoint-6")
    # incomplete checkpoints older than the one resumed stay; newer ones are set aside, not deleted
    assert _names(run) == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "incomplete-checkpoint-10", "incomplete-checkpoint-8"]
    assert (run / "incomplete-checkpoint-8" / "model.safetensors").read_text() == "half"
    assert said == ["preftune: checkpoint-10 is incomplete (the run stopped while saving it); set aside as incomplete-checkpoint-10",
                    "preftune: checkpoint-8 is incomplete (the run stopped while saving it); set aside as incomplete-checkpoint-8",
                    f"preftune: resuming from {run / 'checkpoint-6'}"]


def test_set_aside_twice_keeps_both(tmp_path):
    run = _fake_run(tmp_path, complete=[2], incomplete=[4])
    checkpoints.resolve_resume(True, str(run), say=lambda *_: None)
    _fake_run(run, incomplete=[4])  # killed while saving checkpoint-4 again
    said = []
    checkpoints.resolve_resume(True, str(run), say=said.append)
    assert _names(run) == ["checkpoint-2", "incomplete-checkpoint-4", "incomplete-checkpoint-4-2"]
    assert "set aside as incomplete-checkpoint-4-2" in said[0]


def test_resolve_resume_nothing_complete_renames_nothing(tmp_path):
    run = _fake_run(tmp_path, incomplete=[2, 4])
    with pytest.raises(ConfigError, match="holds no complete checkpoint to resume from; drop the flag"):
        checkpoints.resolve_resume("true", str(run), say=pytest.fail)
    assert _names(run) == ["checkpoint-2", "checkpoint-4"]
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        checkpoints.resolve_resume(True, str(tmp_path / "never-ran"))


def test_resolve_resume_by_path(tmp_path):
    run = _fake_run(tmp_path / "run", complete=[2], incomplete=[4])
    assert checkpoints.resolve_resume(str(run / "checkpoint-2"), str(run)) == str(run / "checkpoint-2")
    with pytest.raises(ConfigError, match=r"checkpoint-4' is incomplete \(no trainer_state.json\)"):
        checkpoints.resolve_resume(str(run / "checkpoint-4"), str(run))
    with pytest.raises(ConfigError, match="is not a folder"):
        checkpoints.resolve_resume(str(run / "checkpoint-9"), str(run))
    with pytest.raises(ConfigError, match="it is a run folder: pass one of its checkpoint-N folders"):
        checkpoints.resolve_resume(str(run), str(run))
    # a folder preftune was writing when killed (trainer_state.json there, marker not yet) is refused by path too
    (run / "checkpoint-4" / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match="the run stopped while saving it, before preftune_complete.json"):
        checkpoints.resolve_resume(str(run / "checkpoint-4"), str(run))
    assert _names(run) == ["checkpoint-2", "checkpoint-4"]


def test_plain_transformers_checkpoint_is_accepted_by_path(tmp_path):
    plain = tmp_path / "trl-run" / "checkpoint-500"
    plain.mkdir(parents=True)
    (plain / "trainer_state.json").write_text('{"global_step": 500}')
    assert checkpoints.resolve_resume(str(plain), str(tmp_path / "out")) == str(plain)
    (plain / "trainer_state.json").write_text('{"global_st')  # cut short
    with pytest.raises(ConfigError, match="incomplete"):
        checkpoints.resolve_resume(str(plain), str(tmp_path / "out"))


def test_extra_state_round_trip(tmp_path):
    assert checkpoints.load_extra_state(str(tmp_path)) == {}
    state = {"bco_running_mean": {"mean": -0.1111115976772269, "count": 160}, "nonfinite_skipped": 2}
    checkpoints.save_extra_state(str(tmp_path), state)
    assert checkpoints.load_extra_state(str(tmp_path)) == state  # floats exactly


def test_set_aside_previous_moves_every_checkpoint_of_an_earlier_run(tmp_path):
    run = _fake_run(tmp_path, complete=[2, 4], incomplete=[6])
    (run / "preftune_config.json").write_text("{}")
    said = []
    moved = checkpoints.set_aside_previous(str(run), say=said.append)
    assert [os.path.basename(m) for m in moved] == ["previous-checkpoint-2", "previous-checkpoint-4", "previous-checkpoint-6"]
    assert _names(run) == ["preftune_config.json", "previous-checkpoint-2", "previous-checkpoint-4", "previous-checkpoint-6"]
    assert checkpoints.last_complete(str(run)) == (None, [])
    assert said == [f"preftune: {run} held 3 checkpoint(s) of an earlier run; set aside as previous-checkpoint-N"]
    assert checkpoints.set_aside_previous(str(run), say=pytest.fail) == []  # nothing left to move: silent


# ------------------------------------------- in-process: checkpoints written again


class _Stop(Exception):
    pass


def _orpo(out, **overrides):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preftune import ORPOConfig, ORPOTrainer
    from preftune.data.sources import load_preference_data

    settings = dict(output_dir=str(out), max_steps=4, save_strategy="steps", save_steps=2, logging_steps=1, seed=0,
                    per_device_train_batch_size=4, learning_rate=1e-3, use_cpu=True, report_to="none")
    settings.update(overrides)
    return ORPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path()), args=ORPOConfig(**settings),
                       processing_class=AutoTokenizer.from_pretrained(tiny_model_path()),
                       train_dataset=load_preference_data(tiny_dataset_files()["train"]).select(range(16)))



def test_a_checkpoint_saved_again_is_not_complete_until_its_new_marker(tmp_path, monkeypatch):
    _orpo(tmp_path).train()  # checkpoint-2 and checkpoint-4, complete
    assert checkpoints.is_complete(tmp_path / "checkpoint-4")
    trainer = _orpo(tmp_path)
    import transformers

    real = transformers.Trainer._save_rng_state

    def stop_at_4(self, output_dir):
        if self.state.global_step == 4:
            raise _Stop  # as a kill would: checkpoint-4 half rewritten
        return real(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", stop_at_4)
    with pytest.raises(_Stop):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    # its model.safetensors is the new run's, its optimizer.pt the new one too, the rest the old run's:
    # the old marker must not vouch for that mix
    assert not checkpoints.is_complete(tmp_path / "checkpoint-4")


def test_a_fresh_run_never_rotates_its_own_checkpoints_away_for_an_earlier_runs(tmp_path):
    _orpo(tmp_path, max_steps=6).train()  # an earlier run: checkpoint-2, -4, -6
    trainer = _orpo(tmp_path, max_steps=2, save_total_limit=1, overwrite_output_dir=True)
    trainer.train()
    newest, _ = checkpoints.last_complete(str(tmp_path))
    assert newest == str(tmp_path / "checkpoint-2")  # this run's, not the earlier run's checkpoint-6
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["max_steps"] == 2


def test_check_resume_refuses_what_resolve_resume_would_and_renames_nothing(tmp_path):
    run = _fake_run(tmp_path / "run", complete=[2], incomplete=[4])
    assert checkpoints.check_resume(True, str(run)) == str(run / "checkpoint-2")
    assert checkpoints.check_resume("false", str(run)) is None
    assert checkpoints.check_resume(str(run / "checkpoint-2"), str(run)) == str(run / "checkpoint-2")
    assert _names(run) == ["checkpoint-2", "checkpoint-4"]  # checkpoint-4 not set aside by a check
    for value, needle in [(True, "holds no complete checkpoint"), (str(run / "checkpoint-4"), "is incomplete"),
                          (str(run / "nope"), "is not a folder")]:
        with pytest.raises(ConfigError, match=needle):
            checkpoints.check_resume(value, str(tmp_path / "empty") if value is True else str(run))
