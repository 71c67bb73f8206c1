"""``python -m experiments.train``: presets train end to end, overrides are validated."""

import json

import pytest

from experiments import train as train_cli

TINY = ["--model.d_model", "32", "--model.num_layers", "3", "--model.d_ff", "48", "--model.num_heads", "2",
        "--data.source", "synthetic", "--data.seq_len", "32", "--data.batch_size", "4",
        "--data.synthetic_doc_len", "64", "--train.steps", "2", "--train.eval_every", "2",
        "--train.eval_batches", "1", "--train.progress", "false", "--sample-tokens", "8"]


@pytest.mark.parametrize("preset", ["griffin", "hawk"])
def test_presets_train_through_the_cli(preset, tmp_path, capsys):
    result = train_cli.main(["--preset", preset, "--out", str(tmp_path), "--name", preset, *TINY])
    run_dir = tmp_path / preset
    assert (run_dir / "loss_curve.png").stat().st_size > 0
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"]["pattern"] == ("RRW" if preset == "griffin" else "R") and cfg["model"]["d_model"] == 32
    assert result["steps"] == 2 and result["final_val_loss"] > 0
    assert "sample:" in capsys.readouterr().out


def test_bad_override_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--out", str(tmp_path), "--model.pattern", "AXA"])
    assert "unknown mixer letter 'X'" in capsys.readouterr().err
