"""``python -m experiments.train``: presets train end to end, overrides are validated."""

import json

import pytest

from experiments import train as train_cli

TINY = ["--model.d_model", "32", "--model.d_ff", "48", "--model.num_heads", "2",
        "--data.source", "synthetic", "--data.seq_len", "32", "--data.batch_size", "4",
        "--data.synthetic_doc_len", "64", "--train.steps", "2", "--train.eval_every", "2",
        "--train.eval_batches", "1", "--train.progress", "false", "--sample-tokens", "8"]


# griffin's pattern RRW needs 3 layers to hold each of its mixers, hawk's R one (the layers are unscanned: each
# one more is traced and compiled again)
LAYERS = {"griffin": "3", "hawk": "1"}


@pytest.mark.parametrize("preset", ["griffin", "hawk"])
def test_presets_train_through_the_cli(preset, tmp_path, capsys):
    result = train_cli.main(["--preset", preset, "--out", str(tmp_path), "--name", preset, *TINY,
                             "--model.num_layers", LAYERS[preset]])
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


def test_a_corpus_swapped_under_a_run_is_refused_until_overwrite(tmp_path, capsys):
    """Issue 23: a run killed, its corpus folder replaced by another of the same vocabulary, rerun."""
    import shutil

    from lm.train import records
    from tests.lm import prepared_tiny

    a, b = prepared_tiny.make(tmp_path / "a", seed=0), prepared_tiny.make(tmp_path / "b", seed=1)
    fa, fb = (json.loads((tmp_path / c / "manifest.json").read_text())["fingerprint"] for c in "ab")
    data, rd = tmp_path / "data", tmp_path / "runs" / "train"
    shutil.copytree(a, data)
    argv = ["--model.d_model", "32", "--model.num_layers", "1", "--model.d_ff", "48", "--model.num_heads", "2",
            "--data.source", "prepared", "--data.path", str(data), "--data.seq_len", "32", "--data.batch_size", "4",
            "--train.steps", "2", "--train.eval_every", "2", "--train.eval_batches", "1", "--train.progress", "false",
            "--sample-tokens", "0", "--out", str(tmp_path / "runs")]
    assert train_cli.main(argv)["steps"] == 2
    assert records.read_corpus(rd) == {"source": "prepared", "corpus": f"prepared {data}", "fingerprint": fa}
    before = {p: p.read_bytes() for p in sorted(rd.rglob("*")) if p.is_file()}
    shutil.rmtree(data)
    shutil.copytree(b, data)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train_cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert f"trained on corpus {fa} (prepared {data}), but the data is now corpus {fb}" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in sorted(rd.rglob("*")) if p.is_file()} == before  # checkpoints, metrics kept
    again = train_cli.main([*argv, "--overwrite"])
    assert again["resumed_from"] is None and records.read_corpus(rd)["fingerprint"] == fb
