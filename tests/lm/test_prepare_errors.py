"""Preparing a corpus that has bad documents, a changed input, a full disk or damaged shards (lm.data.prepare).

The one-line refusals of ``experiments.prepare_data`` are rows of the table in
tests/experiments/test_errors.py; here: what is kept, resumed, skipped and verified.
"""

import errno
import json
import os

import numpy as np
import pytest

from experiments import prepare_data
from lm.data import corpus as corpus_lib
from lm.data import prepare
from lm.data.corpus import BadDocument
from lm.data.manifest import verify
from lm.data.shard_reader import PreparedSource


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


@pytest.fixture
def three(tmp_path):
    """in/a.jsonl, in/b.jsonl, in/c.jsonl (one unit each), 6 documents each; returns (folder, texts)."""
    root = tmp_path / "in"
    root.mkdir()
    texts = {name: [f"{name} document {i} " * (i + 1) for i in range(6)] for name in "abc"}
    for name, docs in texts.items():
        _jsonl(root / f"{name}.jsonl", docs)
    return root, texts


def _cfg(root, **kw):
    return prepare.PrepareConfig(input=str(root), validation_fraction=0.3, **kw)


def _shards(out):
    return {n: (out / "shards" / n).read_bytes() for n in sorted(os.listdir(out / "shards"))}


def _texts(out):
    tok = prepare.out_tokenizer(str(out))
    return sorted(tok.decode(src.read(i)) for split in ("train", "validation")
                  for src in [PreparedSource(str(out), split)] for i in range(len(src)))


def test_bad_document_keeps_finished_units_and_a_rerun_after_the_fix_resumes(three, tmp_path):
    root, texts = three
    good = (root / "c.jsonl").read_text()
    (root / "c.jsonl").write_text(good.replace('{"text": "c document 2', '{"text" "c document 2', 1))
    out = tmp_path / "out"
    with pytest.raises(BadDocument, match=r"c\.jsonl:3: not valid JSON"):
        prepare.prepare(_cfg(root), str(out))
    assert (out / "shards" / "000001.done.json").exists()
    assert not (out / "shards" / "000002.done.json").exists()  # the failing unit has no marker
    assert not [n for n in os.listdir(out / "shards") if n.endswith(".tmp")]
    done = {n: os.stat(out / "shards" / n).st_mtime_ns for n in os.listdir(out / "shards")}
    (root / "c.jsonl").write_text(good)  # the fix changes the listing: an unfinished preparation is re-planned
    result = prepare.prepare(_cfg(root), str(out))
    assert result["done_now"] == 1 and result["redone"] == [] and "1 file changed" in result["replanned"]
    assert all(os.stat(out / "shards" / n).st_mtime_ns == t for n, t in done.items())  # untouched
    one = tmp_path / "one"
    assert result["manifest"] == prepare.prepare(_cfg(root), str(one))["manifest"]
    assert _shards(out) == _shards(one)


def test_a_first_call_that_finishes_no_unit_leaves_nothing(three, tmp_path):
    root, _ = three
    (root / "a.jsonl").write_text("42\n")
    with pytest.raises(BadDocument, match=r"a\.jsonl:1: holds a JSON number"):
        prepare.prepare(_cfg(root), str(tmp_path / "new" / "out"))
    assert not (tmp_path / "new").exists()


def test_finished_unit_whose_file_changed_is_redone(three, tmp_path):
    root, _ = three
    out = tmp_path / "out"
    prepare.prepare(_cfg(root), str(out), shard=(0, 3))  # unit 0 (a.jsonl) done, no manifest
    _jsonl(root / "a.jsonl", ["a new first document"])
    result = prepare.prepare(_cfg(root), str(out))
    assert result["redone"] == [0] and result["done_now"] == 3
    assert "a new first document" in _texts(out)


def test_line_numbers_in_byte_range_units(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_lib, "UNIT_BYTES", 64)
    root = tmp_path / "in"
    root.mkdir()
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(60)]
    lines[41] = '{"text": 7}'
    (root / "big.jsonl").write_text("\n".join(lines) + "\n")
    units = corpus_lib.plan_units(str(root))
    assert len(units) > 10
    with pytest.raises(BadDocument, match=r"big\.jsonl:42: field 'text' holds a JSON number"):
        prepare.prepare(_cfg(root), str(tmp_path / "out"))
    skipped = prepare.prepare(_cfg(root, on_bad_document="skip"), str(tmp_path / "out2"))["manifest"]
    assert skipped["bad_documents"] == {"skipped": 1, "first": [
        f"{root}/big.jsonl:42: field 'text' holds a JSON number, not a string"]}


def test_skip_counts_bad_documents_in_markers_manifest_and_output(three, tmp_path, capsys):
    root, texts = three
    (root / "b.jsonl").write_text((root / "b.jsonl").read_text() + '[1, 2]\n{"text": 5}\n{"oops\n{"body": "x"}\n')
    (root / "bad.txt").write_bytes(b"ok\n\xfe\n")
    out = tmp_path / "out"
    result = prepare_data.main(["--input", str(root / "*"), "--out", str(out), "--validation-fraction", "0.3",
                                "--on-bad-document", "skip"])
    bad = result["manifest"]["bad_documents"]
    assert bad["skipped"] == 5
    assert bad["first"][:4] == [f"{root}/b.jsonl:7: holds a JSON array, not an object",
                                f"{root}/b.jsonl:8: field 'text' holds a JSON number, not a string",
                                f"{root}/b.jsonl:9: not valid JSON (Invalid control character at column 7)",
                                f"{root}/b.jsonl:10: the record has no field 'text' (--text-key; its fields: ['body'])"]
    assert bad["first"][4] == f"{root}/bad.txt:2: invalid UTF-8 (byte 0xfe)"
    markers = [json.loads((out / "shards" / f"{k:06d}.done.json").read_text()) for k in range(4)]
    assert [m["skipped"]["documents"] for m in markers] == [0, 4, 0, 1]
    assert "5 bad documents skipped" in capsys.readouterr().out
    assert _texts(out) == sorted(t for docs in texts.values() for t in docs)


def test_full_disk_is_one_line_exit_1_and_a_rerun_resumes(three, tmp_path, monkeypatch, capsys):
    root, _ = three
    out = tmp_path / "out"
    write = prepare._write_file

    def full(path, data):
        if "000001." in path:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        write(path, data)

    monkeypatch.setattr(prepare, "_write_file", full)
    argv = ["--input", str(root), "--out", str(out), "--validation-fraction", "0.3"]
    with pytest.raises(SystemExit) as exc:
        prepare_data.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1 and len(err.splitlines()) == 1
    assert f"no space left on the device of {out} (" in err and " MiB free) while writing " in err
    assert "000001.train.tokens.bin" in err and "rerun the same command to resume" in err
    assert (out / "shards" / "000000.done.json").exists() and not (out / "shards" / "000001.done.json").exists()
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(prepare, "_write_file", write)
    assert prepare_data.main(argv)["done_now"] == 2
    assert verify(str(out))[0] == []


def test_workers_report_a_bad_document_in_one_line(three, tmp_path, capsys):
    root, _ = three
    (root / "b.jsonl").write_text('{"text": "x"}\n{"text": ["y"]}\n')
    with pytest.raises(SystemExit) as exc:
        prepare_data.main(["--input", str(root), "--out", str(tmp_path / "out"), "--workers", "2"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert f"{root}/b.jsonl:2: field 'text' holds a JSON array" in err
    assert not (tmp_path / "out" / "shards" / "000001.done.json").exists()


def test_overwrite_removes_only_the_prepared_files(three, tmp_path, capsys):
    root, _ = three
    out = tmp_path / "out"
    prepare.prepare(_cfg(root, tokenizer="bpe:270"), str(out))
    (out / "notes.txt").write_text("mine")
    (out / "runs").mkdir()
    _jsonl(root / "d.jsonl", ["added later"])
    with pytest.raises(ValueError, match=r"1 file added .*d\.jsonl"):
        prepare.prepare(_cfg(root, tokenizer="bpe:270"), str(out))
    result = prepare_data.main(["--input", str(root), "--out", str(out), "--validation-fraction", "0.3",
                                "--overwrite"])
    assert result["removed"] == ["manifest.json", "plan.json", "shards", "tokenizer.json"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "runs").is_dir()
    assert "added later" in _texts(out) and result["manifest"]["tokenizer"]["spec"] == "byte"
    assert "--overwrite: removed manifest.json, plan.json, shards, tokenizer.json" in capsys.readouterr().out


def test_plan_without_a_listing_resumes_when_its_units_match(three, tmp_path):
    root, _ = three
    out = tmp_path / "out"
    prepare.prepare(_cfg(root), str(out), shard=(0, 2))
    plan = json.loads((out / "plan.json").read_text())
    del plan["listing"]  # as written before plans recorded the input listing
    (out / "plan.json").write_text(json.dumps(plan))
    result = prepare.prepare(_cfg(root), str(out))
    assert result["done_now"] == 1
    assert json.loads((out / "plan.json").read_text())["listing"] == corpus_lib.listing(str(root))
    (out / "plan.json").write_text(json.dumps(plan))
    _jsonl(root / "a0.jsonl", ["sorted before b"])  # the units move: refused
    with pytest.raises(ValueError, match=r"changed since .*plan\.json was written \(its work units differ\)"):
        prepare.prepare(_cfg(root), str(out))


def test_verify_names_each_bad_file(three, tmp_path, capsys):
    root, _ = three
    out = tmp_path / "out"
    prepare.prepare(_cfg(root), str(out))
    assert prepare_data.main(["--verify", str(out)])["problems"] == []
    ok = f"OK: {out}: 3 units, 12 shard files, {_tokens(out):,} tokens match their sha256"
    assert capsys.readouterr().out.strip() == ok
    table = out / "shards" / "000001.validation.docs.npy"
    np.save(table, np.load(table) + 1, allow_pickle=False)  # same size, other content
    (out / "shards" / "000002.done.json").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    with pytest.raises(SystemExit) as exc:
        prepare_data.main(["--verify", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert lines == [f"python -m experiments.prepare_data: error: {table}: sha256 differs from the one in "
                     f"{out}/shards/000001.done.json",
                     f"python -m experiments.prepare_data: error: {out}/shards/000002.done.json: missing "
                     "(unit 2 is not done)"]
    assert json.loads((out / "manifest.json").read_text()) == manifest  # verify writes nothing


def test_verify_checks_markers_written_before_per_file_hashes(three, tmp_path):
    root, _ = three
    out = tmp_path / "out"
    prepare.prepare(_cfg(root), str(out))
    for k in range(3):  # markers as the earlier version wrote them: one sha256 per split
        path = out / "shards" / f"{k:06d}.done.json"
        marker = json.loads(path.read_text())
        path.write_text(json.dumps({key: v for key, v in marker.items() if key not in ("files", "skipped")}))
    assert verify(str(out))[0] == []
    tokens = out / "shards" / "000000.train.tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[0] ^= 1
    tokens.write_bytes(bytes(data))
    assert verify(str(out))[0] == [f"{tokens} / 000000.train.docs.npy: sha256 differs from the one in "
                                   f"{out}/shards/000000.done.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["train"]["tokens"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert f"{out}/manifest.json: its counts or fingerprint differ" in verify(str(out))[0][-1]


def test_json_records_are_replaced_whole(tmp_path):
    from lm.data.plan import write_json

    path = str(tmp_path / "plan.json")
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})  # fails half-way through writing
    assert json.loads(open(path).read()) == {"a": 1}
    assert os.listdir(tmp_path) == ["plan.json"]


def _tokens(out):
    manifest = json.loads((out / "manifest.json").read_text())
    return sum(s["tokens"] for s in manifest["splits"].values())


def test_shard_files_no_unit_accounts_for(tmp_path):
    from lm.data.plan import unaccounted_shards

    (tmp_path / "shards").mkdir()
    for name in ("000001.train.tokens.bin", "000001.validation.docs.npy.123.tmp", "000002.done.json",
                 "000001.train.tokens.bin.bak", "000003.done.json", "1000000.done.json", "notes.txt"):
        (tmp_path / "shards" / name).write_text("")
    assert unaccounted_shards(str(tmp_path), 3) == ["000001.train.tokens.bin.bak", "000003.done.json",
                                                    "1000000.done.json", "notes.txt"]
    assert "1000000.done.json" not in unaccounted_shards(str(tmp_path), 1000001)
