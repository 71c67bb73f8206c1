"""Bad input to ``experiments.prepare_data``: one line on stderr, the exit code, nothing written.

The same table form as :mod:`tests.experiments.test_errors` (whose ``place`` fixture and
``run_refused`` helper it uses): the command line, a set-up of the test's directory, the
expected message and exit code.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from tests.experiments.test_errors import place, run_refused  # noqa: F401  (place is a fixture)


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
        from lm.data import prepare

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
