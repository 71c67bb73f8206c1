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
# # Architecture comparison
#
# Load the results table of the architectures study (`python -m experiments.architectures`:
# transformer, Griffin, Hawk, GLA linear attention, MLA and an active-parameter-matched MoE
# on one FLOP grid, with exact per-family FLOPs) and reproduce its plots: per family the
# fitted loss-vs-compute frontier L(C) = E + A C^-alpha with bootstrap bands, the compute
# multiplier each family needs to match the transformer's loss at the largest budget (with
# intervals), and the decode-cache bytes per token beside it.
#
# Table used: `SCALELAB_TABLE` if set, else `runs/architectures/default/results.csv` if it
# exists (not at smoke size); otherwise a small SYNTHETIC table (stated below) whose losses
# follow known per-family laws, with the cache sizes of the real presets.

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
elif importlib.util.find_spec("experiments") is None:
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))

SMOKE = os.environ.get("SCALELAB_SMOKE", "0") == "1"
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()

# %% [markdown]
# ## The table

# %%
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from experiments import architectures as arch  # noqa: E402
from experiments import lib  # noqa: E402


def synthetic_table(seed: int = 0) -> pd.DataFrame:
    """6 families x 4 budgets x 3 sizes; family f's loss is the transformer's at m_f x C (multiplier 1/m_f).

    The decode-cache column is real: the default preset's largest model of each family.
    """
    rng = np.random.default_rng(seed)
    m_f = {"transformer": 1.0, "griffin": 1.1, "hawk": 0.7, "gla": 0.8, "mla": 0.95, "moe": 1.8}
    d, L = arch.PRESETS["default"].sizes[-1]
    rows = []
    for fam in arch.FAMILIES:
        cache = arch.cache_per_token(arch.family_model(fam, d, L))
        for C in np.geomspace(1e12, 1e14, 4):
            for rel in (0.5, 1.0, 2.0):  # model size relative to the budget's optimum
                loss = (1.2 + 40.0 * (m_f[fam] * C) ** -0.12) * (1 + 0.02 * np.log(rel) ** 2)
                N = 0.1 * np.sqrt(C / 6) * rel
                rows.append({"family": fam, "status": "complete", "budget": C, "C": C, "size": f"x{rel}",
                             "N_active": N, "D": C / (6 * N), "cache_bytes_per_token": cache,
                             "final_val_loss": loss * np.exp(0.003 * rng.standard_normal())})
    return pd.DataFrame(rows)


ours = ROOT / "runs" / "architectures" / "default" / "results.csv"
if os.environ.get("SCALELAB_TABLE"):
    table, source = pd.read_csv(os.environ["SCALELAB_TABLE"]), os.environ["SCALELAB_TABLE"]
elif ours.exists() and not SMOKE:
    table, source = pd.read_csv(ours), str(ours)
else:
    table, source = synthetic_table(), "SYNTHETIC (known per-family laws; run experiments.architectures for real data)"
table = table[table["status"] == "complete"]
print(f"{len(table)} runs of {table['family'].nunique()} families from {source}")

# %% [markdown]
# ## Per-family frontier L(C) with bootstrap intervals
# The frontier point of a budget is its lowest-loss run; the saturating law is fitted to
# those points (Huber on log residuals, multistart L-BFGS; `scaling.fit_law(law="saturating")`).

# %%
front = arch.frontier(table)
fits = arch.fit_frontiers(front, n_bootstrap=20 if SMOKE else 500)
pd.DataFrame({f: fit.params for f, (fit, _) in fits.items()}).T

# %% [markdown]
# ## Compute multipliers
# C_f(L*) = (A_f / (L* - E_f))^(1/alpha_f) is the compute family f needs to reach the
# transformer's fitted loss L* at the largest budget; the multiplier is C_f / C_max (below 1:
# the family is more compute-efficient). Intervals pair the bootstrap resamples.

# %%
cache = table.groupby("family")["cache_bytes_per_token"].max().to_dict()
multipliers = arch.compute_multipliers(fits, float(front["C"].max()), cache)
assert abs(multipliers.loc["transformer", "multiplier"] - 1.0) < 1e-6
multipliers[["multiplier", "lower", "upper", "cache_bytes_per_token"]]

# %% [markdown]
# ## Plots (the study's `frontiers.png`)

# %%
import tempfile  # noqa: E402

from IPython.display import Image, display  # noqa: E402

out = Path(tempfile.mkdtemp(prefix="scalelab-arch-"))
for path in lib.figures.plot_frontiers(table, fits, multipliers, out, context=arch.CONTEXT):
    if path.suffix == ".png":
        display(Image(filename=str(path)))
