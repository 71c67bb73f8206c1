"""Unique-data accounting of the studies (experiments.data_budget): epochs per run, refusal, --data DIR."""

import json

import numpy as np
import pandas as pd
import pytest

from experiments import architectures, chinchilla, lr_scaling, wsd
from experiments.lib import data_budget
from lm.model.presets import LADDER, ladder_model
from lm.data import pipeline as lm_data
from lm.data import prepare
from lm.model.counting import param_count


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    with open(root / "docs.jsonl", "w") as f:
        for _ in range(300):
            f.write(json.dumps({"text": " ".join(rng.choice(words, size=rng.integers(5, 40)))}) + "\n")
    out = root / "prepared"
    prepare.prepare(prepare.PrepareConfig(input=str(root / "docs.jsonl"), tokenizer="bpe:290",
                                          validation_fraction=0.1), str(out))
    return str(out)


def test_each_run_knows_its_epochs():
    study = chinchilla.build_study(chinchilla.PRESETS["smoke"], preset_name="smoke")
    unique = lm_data.dataset_info(study.runs[0].data)["train"]["targets"]
    for run in study.runs:
        tokens = run.train.steps * run.data.batch_size * run.data.seq_len
        assert study.tags[run.name]["unique_tokens"] == unique
        assert study.tags[run.name]["data_epochs"] == pytest.approx(tokens / unique)


@pytest.mark.parametrize("module", [chinchilla, architectures, lr_scaling, wsd])
def test_full_presets_on_the_stdlib_corpus_refuse_in_one_line(module, capsys, tmp_path):
    with pytest.raises(SystemExit):
        module.main(["--preset", "full", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "epochs of its training split" in err and "over --max-epochs=1" in err and "stdlib" in err
    assert not (tmp_path / "o" / "runs").exists()  # nothing was trained


def test_refusal_names_the_largest_run_and_max_epochs_lets_it_through(small_corpus):
    study = chinchilla.build_study(chinchilla.PRESETS["smoke"], small_corpus, "smoke")
    epochs = {r.name: study.tags[r.name]["data_epochs"] for r in study.runs}
    worst = max(epochs, key=epochs.get)
    with pytest.raises(ValueError, match=f"run {worst} would make {epochs[worst]:.4g} epochs") as err:
        data_budget.check_epochs(study.runs, 1.0)
    assert small_corpus in str(err.value)
    data_budget.check_epochs(study.runs, epochs[worst] * 1.01)


def test_a_study_on_a_prepared_directory_follows_its_tokenizer(small_corpus):
    study = chinchilla.build_study(chinchilla.PRESETS["smoke"], small_corpus, "smoke")
    run = study.runs[0]
    assert run.data.source == "prepared" and run.model.vocab_size == 290
    byte_model = ladder_model(*LADDER["d16L1"])
    # the embedding is part of N: 290 - 259 more rows of d_model
    assert param_count(study.runs[0].model)["total"] - param_count(byte_model)["total"] == (290 - 259) * 16
    w = wsd.build_study(wsd.PRESETS["smoke"], "/tmp/unused", data=small_corpus)
    assert {r.model.vocab_size for r in w.runs} == {290}
    with pytest.raises(ValueError, match="--data='/no/such/dir'"):
        data_budget.base_data("/no/such/dir", seq_len=8, batch_size=2)


def test_report_lines_show_tokens_unique_tokens_and_epochs():
    table = pd.DataFrame({"run": ["a", "b"], "D": [1000, 4000], "unique_tokens": [2000, 2000],
                          "data_epochs": [0.5, 2.0]})
    lines = data_budget.report_lines(table)
    assert "| run | tokens | unique tokens | epochs |" in lines
    assert "| b | 4000 | 2000 | 2 |" in lines
