# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fit your own scaling law
#
# Load a results table -- ours (`experiments.chinchilla` writes `results.csv`), a CSV from
# a paper, or your own with columns `N` (parameters), `D` (tokens), `C` (FLOPs) and a loss --
# and fit the Chinchilla approaches (Hoffmann et al. 2022, arXiv:2203.15556):
#
# * approach 2: per-budget parabolas of loss in log N, then N_opt(C) ~ C^a, D_opt(C) ~ C^b;
# * approach 3: L(N, D) = E + A / N^alpha + B / D^beta, Huber loss on log residuals,
#   multistart L-BFGS, bootstrap intervals.
#
# Set `SCALELAB_TABLE=/path/to/results.csv` to use your table. Without it (and always at
# smoke size, `SCALELAB_SMOKE=1`) a synthetic isoFLOP table drawn from Hoffmann et al.'s
# fitted law with 1% noise is used, so the fit can be checked against the truth.

# %%
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

IN_COLAB = "google.colab" in sys.modules
REPO = os.environ.get("SCALELAB_REPO", "https://github.com/scalelab/scalelab")  # set to your fork
if IN_COLAB and importlib.util.find_spec("scaling") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"scalelab[notebooks] @ git+{REPO}"], check=True)
elif importlib.util.find_spec("scaling") is None:
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))

SMOKE = os.environ.get("SCALELAB_SMOKE", "0") == "1"
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()

# %% [markdown]
# ## The table

# %%
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from scaling import constants as K  # noqa: E402
from scaling import laws  # noqa: E402


def synthetic_table(seed: int = 0, noise: float = 0.01) -> pd.DataFrame:
    """An isoFLOP grid (5 budgets x 7 sizes) with losses from Hoffmann et al.'s fitted law."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in np.geomspace(1e18, 1e21, 5 if SMOKE else 7):
        n_opt = np.sqrt(C / 6 / 20)  # ~20 tokens per parameter
        for N in n_opt * np.geomspace(1 / 8, 8, 7):
            D = C / (6 * N)
            loss = laws.chinchilla(N, D, K.HOFFMANN_E, K.HOFFMANN_A, K.HOFFMANN_B, K.HOFFMANN_ALPHA, K.HOFFMANN_BETA)
            rows.append({"N": N, "D": D, "C": C, "loss": loss * np.exp(noise * rng.standard_normal())})
    return pd.DataFrame(rows)


ours = ROOT / "runs" / "chinchilla" / "default" / "results.csv"
if os.environ.get("SCALELAB_TABLE"):
    table, source = pd.read_csv(os.environ["SCALELAB_TABLE"]), os.environ["SCALELAB_TABLE"]
elif ours.exists() and not SMOKE:
    table, source = pd.read_csv(ours), str(ours)
else:
    table, source = synthetic_table(), "synthetic (Hoffmann et al. 2022 law + 1% noise)"
loss_col = next(c for c in ("loss", "final_val_loss", "final_train_loss") if c in table.columns)
if "status" in table.columns:
    table = table[table["status"] == "complete"]
table = table.rename(columns={loss_col: "loss"})[["N", "D", "C", "loss"]].dropna()
print(f"{len(table)} runs from {source}")
table.head()

# %% [markdown]
# ## Approach 2: isoFLOP parabolas

# %%
import matplotlib.pyplot as plt  # noqa: E402

from scaling import fit_isoflop  # noqa: E402

iso = fit_isoflop(table, n_bootstrap=50 if SMOKE else 500)
print(f"N_opt ~ C^{iso.a:.3f}  (95% interval {iso.a_interval[0]:.3f} .. {iso.a_interval[1]:.3f})")
print(f"D_opt ~ C^{iso.b:.3f}  (95% interval {iso.b_interval[0]:.3f} .. {iso.b_interval[1]:.3f})")
iso.optima

# %% [markdown]
# ## Approach 3: the parametric fit with bootstrap intervals

# %%
from scaling import fit_law  # noqa: E402

# The published 4,500-point grid of starts at full size; a 32-point sub-grid at smoke size.
grid = {"alpha": (0.0, 0.5), "beta": (0.0, 0.5), "e": (0.0, 0.5), "a": (5.0, 10.0), "b": (5.0, 10.0)} if SMOKE \
    else "hoffmann"
fit = fit_law(table, law="chinchilla", init_grid=grid)
boot = fit.bootstrap(n=20 if SMOKE else 500, budgets=(1e21, 1e23))
print(fit.summary())
boot.intervals

# %%
if source.startswith("synthetic"):
    truth = {"E": K.HOFFMANN_E, "alpha": K.HOFFMANN_ALPHA, "beta": K.HOFFMANN_BETA}
    for name, value in truth.items():
        print(f"{name}: fitted {fit.params[name]:.3f}, truth {value:.3f}")
    assert abs(fit.params["E"] - K.HOFFMANN_E) < 0.2

# %% [markdown]
# ## Plots

# %%
import tempfile  # noqa: E402

from IPython.display import Image, display  # noqa: E402

from scaling import plots  # noqa: E402

out = Path(tempfile.mkdtemp(prefix="scalelab-fit-"))
figures = (plots.plot_loss_vs_compute(fit, table, out, boot=boot) + plots.plot_isoflop(iso, out)
           + plots.plot_contours(fit, out))
for path in figures:
    if path.suffix == ".png":
        display(Image(filename=str(path)))
