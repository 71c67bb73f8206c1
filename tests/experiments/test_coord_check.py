"""experiments.coord_check at smoke size: μP flat in width, SP logits growing."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments import coord_check


def test_smoke_coord_check(tmp_path):
    result = coord_check.main(["--preset", "smoke", "--family", "transformer", "--out", str(tmp_path), "--no-progress"])
    table = pd.read_csv(tmp_path / "coord_check.csv")
    assert list(table.columns) == ["parametrization", "family", "width", "step", "module", "rms", "update_rms"]
    preset = coord_check.PRESETS["smoke"]
    assert sorted(table["width"].unique()) == [m * preset.base_width for m in preset.multipliers]
    assert (tmp_path / "coord_check_transformer.png").exists() and (tmp_path / "report.md").exists()
    sl = result["slopes"].set_index(["parametrization", "module"])
    mup = sl.loc["mup"]
    hidden = [m for m in mup.index if m != "logits"]
    assert len(hidden) == 1 + 3 * preset.num_layers  # embedding + (mixer, ff, residual) per block
    off = {m: round(float(mup.loc[m, "rms_slope"]), 3) for m in hidden if abs(mup.loc[m, "rms_slope"]) > 0.1}
    assert not off, (off, mup["rms_slope"].round(3).to_dict())
    assert mup.loc["logits", "rms_slope"] <= 0.1  # the logits do not blow up
    assert sl.loc[("sp", "logits"), "rms_slope"] > 0.15  # under SP they grow with width


def test_family_model_rejects_unknown_family():
    with pytest.raises(ValueError, match="allowed families"):
        coord_check.family_model("rwkv", 16, 1)


@pytest.mark.parametrize("value", ["0", "-1e-3", "nan", "fast"])
def test_learning_rate_must_be_positive(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        coord_check.main(["--preset", "smoke", "--learning-rate", value, "--out", str(tmp_path / "cc")])
    assert exit_.value.code == 2
    assert "--learning-rate" in capsys.readouterr().err
    assert not (tmp_path / "cc").exists()
