"""Bad input to ``experiments.train`` and the studies: one line on stderr, the exit code, nothing written.

Every case is a row of a table: the command line (with ``{tmp}`` for the test's directory,
``{file}`` for a plain file in it, ``{ro}`` for a directory that cannot be written), an
optional set-up of the directory, the expected message and exit code. The directory is
compared before and after: a refused command writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from experiments import architectures, chinchilla, data_constrained, lib, lr_scaling, schedules, wsd
from experiments import train as train_cli
from lm.data import check
from lm.train import records as lm_records
from lm.model.config import RunConfig
from lm.model.presets import get_preset
from tests.lm import prepared_tiny

STUDIES = {"chinchilla": chinchilla, "architectures": architectures, "lr_scaling": lr_scaling,
           "data_constrained": data_constrained, "wsd": wsd, "schedules": schedules}
TINY = ["--model.d_model", "32", "--model.num_layers", "1", "--model.d_ff", "48", "--model.num_heads", "2",
        "--data.source", "synthetic", "--data.seq_len", "32", "--data.batch_size", "4",
        "--data.synthetic_doc_len", "64", "--train.steps", "2", "--train.eval_every", "2",
        "--train.eval_batches", "1", "--train.progress", "false", "--sample-tokens", "0"]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def place(tmp_path, monkeypatch):
    """The test's directory (also the working directory) with a plain file and an unwritable directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a directory\n")
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o500)
    try:  # root ignores permissions: use a directory of a filesystem nobody can write to
        with tempfile.TemporaryFile(dir=ro):
            ro_path = Path("/sys/scalelab-test")
    except OSError:
        ro_path = ro / "out"
    yield {"tmp": str(tmp_path), "file": str(tmp_path / "a_file"), "ro": str(ro_path)}
    ro.chmod(0o700)


def run_refused(main, argv, place, capsys) -> tuple[int, str]:
    """Run ``main(argv)``; return (exit code, the one line on stderr); fail unless nothing was written."""
    root = Path(place["tmp"])
    before = snapshot(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([a.format(**place) for a in argv])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{err}"
    assert snapshot(root) == before, "a refused command changed its directory"
    return exc.value.code, err


def _old_config(root: Path, **train) -> None:
    """A run directory ``root/out/train`` holding the default run's config (train fields replaced)."""
    run = dataclasses.replace(train_cli.default_run(), model=get_preset("transformer"))  # the CLI's defaults
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, **train))
    (root / "out" / "train").mkdir(parents=True)
    (root / "out" / "train" / "config.json").write_text(run.to_json())


def _write(rel: str, content: str):
    def setup(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    return setup


TRAIN_CASES = {
    # id: (argv, set-up, expected message (regex), exit code)
    "out is a file": (["--out", "{file}"], None, r"--out='.*a_file' is a file, not a directory", 2),
    "out under a file": (["--out", "{file}/sub"], None, r"lies under .*a_file, which is a file", 2),
    "out unwritable": (["--out", "{ro}"], None, r"cannot write in", 2),
    "lr nan": (["--out", "out", "--optimizer.learning_rate", "nan"], None,
               r"OptimizerConfig.learning_rate=nan: must be a finite positive number", 2),
    "lr inf": (["--out", "out", "--optimizer.learning_rate", "inf"], None,
               r"OptimizerConfig.learning_rate=inf: must be a finite positive number", 2),
    "weight decay nan": (["--out", "out", "--optimizer.weight_decay", "nan"], None,
                         r"OptimizerConfig.weight_decay=nan: must be a finite number >= 0", 2),
    "name ..": (["--out", "out", "--name", ".."], None, r"RunConfig.name='\.\.': must be usable as a directory", 2),
    "name with ..": (["--out", "out", "--name", "../escape"], None, r"RunConfig.name='\.\./escape'", 2),
    "name with /": (["--out", "out", "--name", "a/b"], None, r"RunConfig.name='a/b'", 2),
    "name with \\": (["--out", "out", "--name", "a\\b"], None, r"no path separator", 2),
    "empty name": (["--out", "out", "--name", ""], None, r"--name='': a run needs a name", 2),
    "init_from not a list": (["--out", "out", "--train.init_from", "3"], None,
                             r"--train.init_from: expected a JSON list, got '3'", 2),
    "init_from bad pair": (["--out", "out", "--train.init_from", "[1, 2]"], None,
                           r"TrainConfig.init_from=\(1, 2\): must be None or \(run_dir, step\)", 2),
    "checkpoint_steps unordered": (["--out", "out", "--train.checkpoint_steps", "[3, 1]"], None,
                                   r"TrainConfig.checkpoint_steps=\(3, 1\): must be None or a tuple of strictly "
                                   r"increasing integer steps", 2),
    "unknown flag": (["--out", "out", "--model.d_modle", "3"], None, r"unrecognized arguments: --model.d_modle", 2),
    "bad number": (["--out", "out", "--train.steps", "many"], None, r"--train.steps: expected a number", 2),
    "more steps than the run": (["--out", "out", "--train.steps", "30"], lambda r: _old_config(r, steps=20),
                                r"holds a run with another config \(train\.steps: 20 -> 30\); rerun with "
                                r"--overwrite .* or choose another --name", 2),
    "other d_model": (["--out", "out", "--model.d_model", "64", "--model.num_heads", "4"],
                      lambda r: _old_config(r), r"model\.d_model: 256 -> 64", 2),
    "damaged config.json": (["--out", "out"], _write("out/train/config.json", '{"model": {'),
                            r"config .*config\.json is not valid JSON .*--overwrite", 2),
    "config.json holding a list": (["--out", "out"], _write("out/train/config.json", "[]"),
                                   r"holds a JSON list, not an object", 2),
    "config.json of a newer schema": (["--out", "out"], _write("out/train/config.json", '{"schema_version": 3}'),
                                      r"out/train/config\.json: config schema_version=3: this scalelab reads "
                                      r"versions 0 to 2 .*--overwrite", 2),
    "checkpoints without config": (["--out", "out"], _write("out/train/checkpoints/2/x", ""),
                                   r"holds checkpoints but no config.json", 2),
    "negative sample tokens": (["--out", "out", "--sample-tokens", "-1"], None, r"--sample-tokens=-1", 2),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_refuses_bad_input_in_one_line(case, place, capsys):
    argv, setup, message, code = TRAIN_CASES[case]
    if setup is not None:
        setup(Path(place["tmp"]))
    rc, err = run_refused(train_cli.main, argv, place, capsys)
    assert rc == code
    assert err.startswith("python -m experiments.train: error: ")
    assert re.search(message, err), err


def _manifest(module, root: Path) -> lib.Study:
    """Write the smoke grid's study.json under root/out (as a first run would); the study."""
    if module is chinchilla:
        study = chinchilla.build_study(chinchilla.PRESETS["smoke"], "stdlib", "smoke")
    elif module in (wsd, schedules):
        study = module.build_study(module.PRESETS["smoke"], root / "out", "smoke")
    elif module is lr_scaling:
        study = lr_scaling.build_study(lr_scaling.PRESETS["smoke"], "smoke")[0]
    else:
        study = module.build_study(module.PRESETS["smoke"], "smoke")
    lib.sweep.prepare_out(study, root / "out")
    return study


def _damaged_run_config(module, content):
    def setup(root: Path) -> None:
        study = _manifest(module, root)
        _write(f"out/runs/{study.runs[0].name}/config.json", content)(root)
    return setup


STUDY_CASES = {
    "out is a file": (["--out", "{file}"], None, r"--out='.*a_file' is a file, not a directory"),
    "out unwritable": (["--out", "{ro}"], None, r"cannot write in"),
    "damaged study.json": (["--out", "out"], _write("out/study.json", '{"study": "chinch'),
                           r"study manifest .*study\.json is not valid JSON"),
    "study.json holding a list": (["--out", "out"], _write("out/study.json", "[]"),
                                  r"study\.json holds a JSON list, not an object"),
    "damaged results.csv": (["--out", "out"], lambda r: (r / "out").mkdir() or (r / "out" / "results.csv")
                            .write_bytes(b"\x00\xff\xfe garbage \x81"), r"results table .*results\.csv cannot be read"),
    "results.csv without the columns": (["--out", "out"], _write("out/results.csv", "a,b\n1,2\n"),
                                        r"results\.csv lacks the columns \['run', 'status', 'study'\]"),
    "empty results.csv": (["--out", "out"], _write("out/results.csv", ""), r"results\.csv cannot be read"),
    "bootstrap -5": (["--bootstrap", "-5"], None, r"--bootstrap: '-5': .* must be an integer >= 2"),
    "bootstrap 0": (["--bootstrap", "0"], None, r"must be an integer >= 2"),
    "unknown flag": (["--levle", "0.9"], None, r"unrecognized arguments: --levle"),
}


@pytest.mark.parametrize("analysis_only", [False, True], ids=["train", "analysis-only"])
@pytest.mark.parametrize("name", STUDIES)
@pytest.mark.parametrize("case", STUDY_CASES)
def test_studies_refuse_bad_input_in_one_line(case, name, analysis_only, place, capsys):
    argv, setup, message = STUDY_CASES[case]
    module = STUDIES[name]
    if "--bootstrap" in argv and name == "wsd":
        argv, message = ["--bootstrap", "5"], r"unrecognized arguments: --bootstrap"  # wsd fits no bootstrap
    if setup is not None:
        setup(Path(place["tmp"]))
    argv = ["--preset", "smoke", "--no-progress", *argv, *(["--analysis-only"] if analysis_only else [])]
    rc, err = run_refused(module.main, argv, place, capsys)
    assert rc == 2 and err.startswith(f"python -m experiments.{name}: error: ")
    assert re.search(message, err), err


@pytest.mark.parametrize("table, message", [("nope.csv", r"results table nope\.csv does not exist"),
                                            ("{file}", r"a_file lacks the columns")])
def test_bad_shard_table_from_another_host_is_one_line(table, message, place, capsys):
    argv = ["--preset", "smoke", "--out", "out", "--analysis-only", "--tables", table]
    rc, err = run_refused(chinchilla.main, argv, place, capsys)
    assert rc == 2 and re.search(message, err), err


@pytest.mark.parametrize("analysis_only", [False, True], ids=["train", "analysis-only"])
@pytest.mark.parametrize("content, message", [('{"model": ', r"config .*config\.json is not valid JSON"),
                                              ("[1]", r"holds a JSON list")])
def test_damaged_run_config_in_a_study_is_one_line(content, message, analysis_only, place, capsys):
    _damaged_run_config(chinchilla, content)(Path(place["tmp"]))
    argv = ["--preset", "smoke", "--no-progress", "--out", "out", *(["--analysis-only"] if analysis_only else [])]
    rc, err = run_refused(chinchilla.main, argv, place, capsys)
    assert rc == 2 and re.search(message, err), err


@pytest.mark.parametrize("content", ["{}", "[]", '{"status": "complete"}', '{"final_val_loss": 1.0'])
def test_a_result_json_without_the_result_is_not_a_finished_run(content, tmp_path, capsys):
    study = _manifest(chinchilla, tmp_path)
    rd = lib.run_dir(tmp_path / "out", study.runs[0])
    rd.mkdir(parents=True)
    (rd / "result.json").write_text(content)
    table = lib.load_results(study, tmp_path / "out")
    assert (table["status"] == "pending").all()
    assert not lib.sweep._finished(tmp_path / "out", study.runs[0])
    result = chinchilla.main(["--preset", "smoke", "--out", str(tmp_path / "out"), "--analysis-only"])
    assert result["report"] is None
    assert f"{len(study.runs)} of {len(study.runs)} runs pending" in capsys.readouterr().out


def test_train_help_says_what_each_override_means(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = capsys.readouterr().out
    assert "NONETYPE" not in text
    assert "--train.init_from JSON" in text and '["RUN_DIR", STEP]' in text
    flat = " ".join(text.split())
    for meaning in ("peak learning rate", "residual width d", "optimiser steps of the run", "slots per row",
                    "routed experts e", "Adam beta2", "--overwrite start the run afresh"):
        assert meaning in flat, meaning
    from experiments.lib.cli import field_help

    undocumented = [k for k, v in field_help(train_cli.default_run()).items() if not v]
    assert undocumented == []


def test_rerun_with_another_config_needs_overwrite_which_starts_afresh(tmp_path, capsys):
    out = tmp_path / "out"
    first = train_cli.main(["--out", str(out), *TINY])
    assert first["steps"] == 2
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--out", str(out), *TINY, "--train.steps", "3"])
    assert exc.value.code == 2 and "train.steps: 2 -> 3" in capsys.readouterr().err
    (out / "train" / "notes.txt").write_text("mine")
    again = train_cli.main(["--out", str(out), *TINY, "--train.steps", "3", "--overwrite"])
    assert again["steps"] == 3 and again["resumed_from"] is None  # afresh, not resumed from step 2
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]  # the old run's step-2 record is gone (eval_every 2)
    assert json.loads((out / "train" / "config.json").read_text())["train"]["steps"] == 3
    assert (out / "train" / "notes.txt").read_text() == "mine"  # only the run's own records are removed
    assert RunConfig.from_dict(json.loads((out / "train" / "config.json").read_text())).train.steps == 3


def test_diverged_train_run_is_one_line_and_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--out", str(tmp_path), *TINY, "--optimizer.learning_rate", "1e30", "--name", "boom"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith("python -m experiments.train: error: the run diverged: run 'boom': loss or gradient "
                          "became non-finite at step")


@pytest.mark.parametrize("level", [0, 1, 1.5, -0.1, float("nan")])
def test_interval_level_outside_0_1_is_refused(level):
    with pytest.raises(ValueError, match=r"level=.*: an interval coverage must be in \(0, 1\)"):
        lr_scaling.fit_laws(pd.DataFrame(), threshold=0.01, level=level)
    with pytest.raises(ValueError, match=r"level=.*: an interval coverage must be in \(0, 1\)"):
        architectures.compute_multipliers({}, 1e12, level=level)


# ------------------------------------------------------------ the data a run trains on


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Prepared corpora a and b (same vocabulary, different documents) and v0 (no validation documents)."""
    root = tmp_path_factory.mktemp("corpora")
    return {"a": prepared_tiny.make(root / "a", seed=0), "b": prepared_tiny.make(root / "b", seed=1),
            "v0": prepared_tiny.make(root / "v0", validation_fraction=0.0)}


def fingerprint(path) -> str:
    return json.loads((Path(path) / "manifest.json").read_text())["fingerprint"]


def _cut(rel: str, size: int):
    def damage(data: Path) -> None:
        with open(data / rel, "r+b") as f:
            f.truncate(size)
    return damage


def _no_splits(data: Path) -> None:
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["splits"]
    (data / "manifest.json").write_text(json.dumps(manifest))


def _trained_on_a(root: Path, argv: list[str], corpora) -> None:
    """A run directory out/train of this command's config that recorded corpus a (the data is now b)."""
    run = train_cli.run_config(train_cli.build_parser().parse_args(argv))
    (root / "out" / "train").mkdir(parents=True)
    lm_records.write_config(root / "out" / "train", run)
    lm_records.write_corpus(root / "out" / "train", check.corpus_record(dataclasses.replace(
        run.data, path=corpora["a"])))


TOKENS = "shards/000001.train.tokens.bin"
PREPARED = ["--model.d_model", "32", "--model.num_layers", "1", "--model.d_ff", "48", "--model.num_heads", "2",
            "--data.source", "prepared", "--data.path", "{tmp}/data", "--data.seq_len", "32", "--data.batch_size", "4",
            "--train.steps", "2", "--train.eval_every", "2", "--train.eval_batches", "1", "--train.progress", "false",
            "--sample-tokens", "0", "--out", "out"]
TRAIN_DATA_CASES = {
    # id: (corpus copied to {tmp}/data, its damage, extra argv, expected message (regex; {fa}, {fb}: fingerprints))
    "shard cut short": ("a", _cut(TOKENS, 2048), [], r"prepared data .*data/shards/000001\.train\.tokens\.bin has 2048 "
                                                     r"bytes, expected \d+ .*--verify .*/data` or prepare it again"),
    "shard missing": ("a", lambda d: (d / TOKENS).unlink(), [], r"000001\.train\.tokens\.bin is missing"),
    "shard of 0 bytes": ("a", _cut(TOKENS, 0), [], r"000001\.train\.tokens\.bin has 0 bytes, expected"),
    "docs.npy cut short": ("a", _cut("shards/000000.validation.docs.npy", 100),
                           [], r"000000\.validation\.docs\.npy cannot be read \(100 bytes"),
    "manifest cut short": ("a", _cut("manifest.json", 40), [], r"data/manifest\.json is not valid JSON"),
    "manifest holding a list": ("a", lambda d: (d / "manifest.json").write_text("[]"),
                                [], r"data/manifest\.json holds a JSON list, not an object"),
    "manifest without splits": ("a", _no_splits, [], r"data/manifest\.json lacks or has invalid keys \['splits"),
    "no validation documents": ("v0", None, [], r"the validation split has no documents \(prepared data .*/data, "
                                                r"prepared with --validation-fraction 0\.0"),
    "vocab below the tokenizer's": ("a", None, ["--model.vocab_size", "100"],
                                    r"ModelConfig\.vocab_size=100: the data \(prepared .*/data\) has 259 token ids"),
    "corpus swapped under the run": ("b", _trained_on_a, [], r"run directory out/train was trained on corpus {fa} "
                                     r"\(prepared .*/a\), but the data is now corpus {fb} \(prepared .*/data\).* "
                                     r"rerun with --overwrite"),
}


@pytest.mark.parametrize("case", TRAIN_DATA_CASES)
def test_train_refuses_data_it_cannot_train_on_in_one_line(case, corpora, place, capsys):
    name, damage, extra, message = TRAIN_DATA_CASES[case]
    root = Path(place["tmp"])
    data = Path(shutil.copytree(corpora[name], root / "data"))
    argv = [*PREPARED, *extra]
    if damage is _trained_on_a:
        damage(root, [a.format(**place) for a in argv], corpora)
    elif damage is not None:
        damage(data)
    rc, err = run_refused(train_cli.main, argv, place, capsys)
    assert rc == 2 and err.startswith("python -m experiments.train: error: ")
    assert re.search(message.format(fa=fingerprint(corpora["a"]), fb=fingerprint(corpora["b"])), err), err


STUDY_DATA_CASES = {
    # id: (damage to a copy of corpus a given as --data, expected message (regex))
    "shard cut short": (_cut(TOKENS, 2048), r"data/shards/000001\.train\.tokens\.bin has 2048 bytes, expected"),
    "manifest holding a list": (lambda d: (d / "manifest.json").write_text("[]"), r"data/manifest\.json holds a JSON list"),
    "manifest without splits": (_no_splits, r"data/manifest\.json lacks or has invalid keys"),
}


@pytest.mark.parametrize("name", STUDIES)
@pytest.mark.parametrize("case", STUDY_DATA_CASES)
def test_studies_refuse_a_damaged_data_dir_in_one_line(case, name, corpora, place, capsys):
    damage, message = STUDY_DATA_CASES[case]
    damage(Path(shutil.copytree(corpora["a"], Path(place["tmp"]) / "data")))
    argv = ["--preset", "smoke", "--no-progress", "--out", "out", "--data", "{tmp}/data"]
    rc, err = run_refused(STUDIES[name].main, argv, place, capsys)
    assert rc == 2 and err.startswith(f"python -m experiments.{name}: error: ") and re.search(message, err), err


@pytest.mark.parametrize("name", STUDIES)
def test_a_study_resumed_on_another_corpus_is_refused_naming_the_run(name, place, capsys):
    root = Path(place["tmp"])
    study = _manifest(STUDIES[name], root)
    run = study.runs[-1]
    rd = lib.run_dir(root / "out", run)
    rd.mkdir(parents=True)
    lm_records.write_config(rd, run)
    lm_records.write_corpus(rd, {"source": "stdlib", "corpus": "stdlib of another Python", "fingerprint": "0" * 16})
    rc, err = run_refused(STUDIES[name].main, ["--preset", "smoke", "--no-progress", "--out", "out"], place, capsys)
    assert rc == 2 and re.search(
        rf"error: run {run.name}: run directory .*{run.name} was trained on corpus 0{{16}} \(stdlib of another Python\), "
        rf"but the data is now corpus {check.corpus_fingerprint(run.data)} \(stdlib .*\).*choose another --out", err)


def test_a_study_with_no_validation_documents_is_refused_before_training(corpora, place, capsys):
    shutil.copytree(corpora["v0"], Path(place["tmp"]) / "data")
    argv = ["--preset", "smoke", "--no-progress", "--out", "out", "--data", "{tmp}/data", "--max-epochs", "1e9"]
    rc, err = run_refused(chinchilla.main, argv, place, capsys)
    assert rc == 2 and re.search(r"error: run \S+: the validation split has no documents \(prepared data", err), err


def test_a_study_whose_grid_ignores_data_refuses_it(corpora, place, capsys):
    from experiments import mup_transfer  # its grid always reads the embedded corpus

    shutil.copytree(corpora["a"], Path(place["tmp"]) / "data")
    argv = ["--preset", "smoke", "--no-progress", "--out", "out", "--data", "{tmp}/data"]
    rc, err = run_refused(mup_transfer.main, argv, place, capsys)
    assert rc == 2 and re.search(r"--data='.*/data': this study does not train on it \(run \S+ reads stdlib\)", err), err
