"""Bad input to ``experiments.train`` and the studies: one line on stderr, the exit code, nothing written.

Every case is a row of a table: the command line (with ``{tmp}`` for the test's directory,
``{file}`` for a plain file in it, ``{ro}`` for a directory that cannot be written), an
optional set-up of the directory, the expected message and exit code. The directory is
compared before and after: a refused command writes nothing.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from experiments import architectures, chinchilla, data_constrained, lib, lr_scaling, wsd
from experiments import train as train_cli
from lm.config import RunConfig
from lm.presets import get_preset

STUDIES = {"chinchilla": chinchilla, "architectures": architectures, "lr_scaling": lr_scaling,
           "data_constrained": data_constrained, "wsd": wsd}
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
    elif module is wsd:
        study = wsd.build_study(wsd.PRESETS["smoke"], root / "out", "smoke")
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


# ------------------------------------------------------------------ experiments.prepare_data


def _files(**files: bytes | str):
    """A set-up writing ``files`` (relative path -> content) into the test's directory."""
    def setup(root: Path) -> None:
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            data = content.encode() if isinstance(content, str) else content
            (root / rel).write_bytes(gzip.compress(data, mtime=0) if rel.endswith(".gz") else data)
    return setup


def _parquet(rel: str, column):
    def setup(root: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": column}), root / rel)
    return setup


def _prepared(*then):
    """A set-up preparing in/ (three text files) into out/ with the byte tokenizer, then running ``then``."""
    def setup(root: Path) -> None:
        from lm import prepare

        _files(**{f"in/{i}.txt": f"document {i}" for i in range(3)})(root)
        prepare.prepare(prepare.PrepareConfig(input="in"), "out")
        for step in then:
            step(root)
    return setup


def _tamper(rel: str):
    return lambda root: (root / rel).write_bytes((root / rel).read_bytes() + b"\x00")


GOOD = {"in/a.txt": "a good document\n"}
PREPARE_CASES = {
    # id: (argv, set-up, expected message (regex), exit code)
    "invalid utf-8": (["--input", "in", "--out", "out"], _files(**{"in/a.txt": b"fine\nbad \xff here\n"}),
                      r"in/a\.txt:2: invalid UTF-8 \(byte 0xff\)", 2),
    "malformed jsonl": (["--input", "in", "--out", "out"], _files(**{"in/a.jsonl": '{"text": "a"}\n{"text": \n'}),
                        r"in/a\.jsonl:2: not valid JSON", 2),
    "malformed jsonl.gz": (["--input", "in", "--out", "out"],
                           _files(**{"in/a.jsonl.gz": '{"text": "a"}\n\n{"text\n'}),
                           r"in/a\.jsonl\.gz:3: not valid JSON", 2),
    "invalid utf-8 in jsonl": (["--input", "in", "--out", "out"], _files(**{"in/a.jsonl": b'{"text": "\xc3("}\n'}),
                               r"in/a\.jsonl:1: invalid UTF-8", 2),
    "jsonl line 42": (["--input", "in", "--out", "out"], _files(**{"in/a.jsonl": '{"text": "a"}\n42\n'}),
                      r"in/a\.jsonl:2: holds a JSON number, not an object", 2),
    "jsonl line [1,2,3]": (["--input", "in", "--out", "out"], _files(**{"in/a.jsonl": '[1,2,3]\n'}),
                           r"in/a\.jsonl:1: holds a JSON array, not an object", 2),
    "jsonl text not a string": (["--input", "in", "--out", "out"], _files(**{"in/a.jsonl": '{"text": ["a"]}\n'}),
                                r"in/a\.jsonl:1: field 'text' holds a JSON array, not a string", 2),
    "jsonl without the text key": (["--input", "in", "--out", "out"], _files(**{"in/a.jsonl": '{"body": "a"}\n'}),
                                   r"in/a\.jsonl:1: the record has no field 'text' \(--text-key", 2),
    "parquet text not strings": (["--input", "in", "--out", "out"], _parquet("in/a.parquet", [1, 2]),
                                 r"in/a\.parquet: column 'text' \(--text-key\) holds int64, not strings", 2),
    "corrupt parquet": (["--input", "in", "--out", "out"], _files(**{"in/a.parquet": b"PAR1 garbage PAR1"}),
                        r"in/a\.parquet: not a readable parquet file", 2),
    "garbage tokenizer.json": (["--input", "in", "--out", "out", "--tokenizer", "tok.json"],
                               _files(**GOOD, **{"tok.json": "garbage"}),
                               r"tokenizer='tok\.json': not a readable Hugging Face tokenizer\.json", 2),
    "garbage .model": (["--input", "in", "--out", "out", "--tokenizer", "tok.model"],
                       _files(**GOOD, **{"tok.model": b"\x00garbage"}),
                       r"tokenizer='tok\.model': not a readable SentencePiece model", 2),
    "out is a file": (["--input", "in", "--out", "{file}"], _files(**GOOD), r"--out='.*a_file' is a file", 2),
    "out under a file": (["--input", "in", "--out", "{file}/sub"], _files(**GOOD), r"lies under .*a_file", 2),
    "out unwritable": (["--input", "in", "--out", "{ro}"], _files(**GOOD), r"cannot write in", 2),
    "tfds bogus": (["--input", "tfds:bogus/train", "--out", "out", "--tfds-data-dir", "tfds"], None,
                   r"--input='tfds:bogus/train': Dataset bogus not found", 2),
    "tfds without a split": (["--input", "tfds:lm1b", "--out", "out"], None, r"tfds:NAME\[:VERSION\]/SPLIT", 2),
    "input matches nothing": (["--input", "none*.txt", "--out", "out"], None, r"--input='none\*\.txt': matches no", 2),
    "sample mb 0": (["--input", "in", "--out", "out", "--tokenizer", "bpe:300", "--tokenizer-sample-mb", "0"],
                    _files(**GOOD), r"--tokenizer-sample-mb=0\.0: must be a finite number > 0", 2),
    "sample mb -1": (["--input", "in", "--out", "out", "--tokenizer-sample-mb", "-1"], _files(**GOOD),
                     r"--tokenizer-sample-mb=-1\.0", 2),
    "sample mb nan": (["--input", "in", "--out", "out", "--tokenizer-sample-mb", "nan"], _files(**GOOD),
                      r"--tokenizer-sample-mb=nan", 2),
    "validation fraction nan": (["--input", "in", "--out", "out", "--validation-fraction", "nan"], _files(**GOOD),
                                r"--validation-fraction=nan: must be in \[0, 1\)", 2),
    "workers 0": (["--input", "in", "--out", "out", "--workers", "0"], _files(**GOOD), r"--workers=0", 2),
    "bad shard": (["--input", "in", "--out", "out", "--shard", "2/2"], _files(**GOOD), r"--shard='2/2'", 2),
    "bad policy": (["--input", "in", "--out", "out", "--on-bad-document", "ignore"], _files(**GOOD),
                   r"--on-bad-document: invalid choice: 'ignore'", 2),
    "no input": (["--out", "out"], None, r"--input is required", 2),
    "overwrite with shard": (["--input", "in", "--out", "out", "--shard", "0/2", "--overwrite"], _files(**GOOD),
                             r"--overwrite with --shard", 2),
    "file added after a prepare": (["--input", "in", "--out", "out"], _prepared(_files(**{"in/new.txt": "x"})),
                                   r"--input='in' changed since 'out' was prepared \(1 file added \(in/new\.txt\)\)"
                                   r".*--overwrite", 2),
    "file removed after a prepare": (["--input", "in", "--out", "out"],
                                     _prepared(lambda root: (root / "in" / "1.txt").unlink()),
                                     r"1 file removed \(in/1\.txt\)", 2),
    "file changed after a prepare": (["--input", "in", "--out", "out"], _prepared(_files(**{"in/2.txt": "longer"})),
                                     r"1 file changed \(in/2\.txt\)", 2),
    "other arguments": (["--input", "in", "--out", "out", "--text-key", "body"], _prepared(),
                        r"holds a preparation with other arguments", 2),
    "plan.json missing": (["--input", "in", "--out", "out"], _prepared(lambda root: (root / "out/plan.json").unlink()),
                          r"--out='out' holds prepared files .* but no plan\.json.*--overwrite", 2),
    "damaged plan.json": (["--input", "in", "--out", "out"], _prepared(_files(**{"out/plan.json": '{"units": ['})),
                          r"the plan out/plan\.json cannot be read .* --overwrite", 2),
    "plan.json of something else": (["--input", "in", "--out", "out"], _prepared(_files(**{"out/plan.json": "{}"})),
                                    r"the plan out/plan\.json is not a scalelab-prepared-v1 plan .*--overwrite", 2),
    "merge with a damaged marker": (["--out", "out", "--merge"],
                                    _prepared(_files(**{"out/shards/000000.done.json": '{"unit": 0}'})),
                                    r"the unit marker out/shards/000000\.done\.json lacks the counts", 2),
    "unrelated --out": (["--input", "in", "--out", "out", "--overwrite"], _files(**GOOD, **{"out/notes.txt": "mine"}),
                        r"--out='out' holds other files \(notes\.txt\) and no plan\.json: it is not a prepared", 2),
    "shards no plan accounts for": (["--input", "in", "--out", "out"],
                                    _prepared(_files(**{"out/shards/000007.train.tokens.bin": "x"})),
                                    r"out/shards holds 1 file\(s\) that no unit of plan\.json accounts for "
                                    r"\(000007\.train\.tokens\.bin\)", 2),
    "merge without a plan": (["--out", "out", "--merge"], None, r"--merge: 'out' holds no plan\.json", 2),
    "verify no directory": (["--verify", "nowhere"], None, r"--verify='nowhere': no such directory", 2),
    "verify not prepared": (["--verify", "in"], _files(**GOOD), r"--verify='in' holds no plan\.json: it is not a prepared directory", 2),
    "verify a changed shard": (["--verify", "out"], _prepared(_tamper("out/shards/000000.train.tokens.bin")),
                               r"out/shards/000000\.train\.tokens\.bin: sha256 differs from the one in "
                               r"out/shards/000000\.done\.json", 2),
}


@pytest.mark.parametrize("case", PREPARE_CASES)
def test_prepare_data_refuses_bad_input_in_one_line(case, place, capsys):
    from experiments import prepare_data

    argv, setup, message, code = PREPARE_CASES[case]
    if setup is not None:
        setup(Path(place["tmp"]))
    rc, err = run_refused(prepare_data.main, argv, place, capsys)
    assert rc == code
    assert err.startswith("python -m experiments.prepare_data: error: ")
    assert re.search(message, err), err
