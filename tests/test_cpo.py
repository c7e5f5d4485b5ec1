"""CPOConfig (TRL 1.16's fields and defaults, validation) and the `preftune cpo|simpo` command lines."""
import dataclasses

import pytest

from preftune import CPOConfig, ConfigError
from preftune.cli import parse_run

# Departures shared with ORPOConfig/DPOConfig (README "Defaults"): preftune never turns gradient
# checkpointing on by itself, pins memory only with an accelerator, and selects its own columns.
SHARED_DEPARTURES = {"gradient_checkpointing", "dataloader_pin_memory", "remove_unused_columns"}


def _default(f):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def test_every_trl_field_with_trls_default():
    trl_cpo = pytest.importorskip("trl.experimental.cpo")
    ours = {f.name: f for f in dataclasses.fields(CPOConfig)}
    for f in dataclasses.fields(trl_cpo.CPOConfig):
        assert f.name in ours, f.name
        if f.name not in SHARED_DEPARTURES:
            assert _default(ours[f.name]) == _default(f), f.name


def test_defaults_and_alphapo_shorthand(tmp_path):
    c = CPOConfig(output_dir=str(tmp_path))
    assert (c.loss_type, c.beta, c.cpo_alpha, c.simpo_gamma, c.alpha, c.label_smoothing) == ("sigmoid", 0.1, 1.0, 0.5, 0.0, 0.0)
    c = CPOConfig(output_dir=str(tmp_path), loss_type="alphapo", alpha=0.2)  # as TRL: simpo without the NLL
    assert (c.loss_type, c.cpo_alpha, c.alpha) == ("simpo", 0.0, 0.2)


@pytest.mark.parametrize("settings, words", [
    (dict(loss_type="kto_pair"), "loss_type='kto_pair' is not known"),
    (dict(loss_type="hinge", label_smoothing=0.1), "no effect on loss_type hinge"),
    (dict(loss_type="ipo", label_smoothing=0.1), "no effect on loss_type ipo"),
    (dict(label_smoothing=0.7), "label_smoothing=0.7 must be in [0, 0.5]"),
    (dict(cpo_alpha=-1.0), "cpo_alpha=-1.0 must be ≥ 0"),
    (dict(simpo_gamma=-0.5, loss_type="simpo"), "simpo_gamma=-0.5 must be ≥ 0"),
    (dict(beta=0.0), "beta=0.0 must be positive"),
])
def test_bad_settings_are_one_sentence(tmp_path, settings, words):
    with pytest.raises(ConfigError) as err:
        CPOConfig(output_dir=str(tmp_path), **settings)
    assert words in str(err.value) and str(err.value).count(". ") == 0


def test_simpo_command_defaults_are_ms_swifts():
    c = parse_run("simpo", ["--model", "m"]).config
    assert (type(c).__name__, c.loss_type, c.beta, c.simpo_gamma, c.cpo_alpha) == ("CPOConfig", "simpo", 2.0, 1.0, 0.0)
    c = parse_run("simpo", ["--model", "m", "--beta", "2.5", "--cpo_alpha", "1", "--simpo_gamma", "0.8"]).config
    assert (c.beta, c.cpo_alpha, c.simpo_gamma) == (2.5, 1.0, 0.8)
    assert parse_run("simpo", []).config.beta == 2.0  # the demo keeps SimPO's β


def test_cpo_command_flags_and_yaml(tmp_path):
    c = parse_run("cpo", ["--model", "m"]).config
    assert (c.loss_type, c.beta, c.cpo_alpha, c.simpo_gamma) == ("sigmoid", 0.1, 1.0, 0.5)  # TRL's defaults
    (tmp_path / "run.yaml").write_text("loss_type: alphapo\nalpha: 0.25\nbeta: 2.0\nlabel_smoothing: 0.1\n")
    c = parse_run("cpo", ["--model", "m", "--config", str(tmp_path / "run.yaml"), "--beta", "3"]).config
    assert (c.loss_type, c.alpha, c.beta, c.cpo_alpha, c.label_smoothing) == ("simpo", 0.25, 3.0, 0.0, 0.1)
    with pytest.raises(ConfigError, match="invalid choice: 'dpo'"):
        parse_run("cpo", ["--model", "m", "--loss_type", "dpo"])


def test_help_states_simpo_defaults(capsys):
    from preftune.cli import main

    with pytest.raises(SystemExit):
        main(["simpo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "preftune simpo: 2.0, ms-swift's SimPO default. (default: 2.0)" in text
    assert "preftune simpo: 0.0, SimPO as in the paper; > 0 is CPO-SimPO. (default: 0.0)" in text
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert "  cpo " in usage and "  simpo " in usage
