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
# # scalelab quickstart
#
# Train a tiny byte-level language model, look at its loss curve and at samples.
# Runs locally, and on Colab with a CPU, GPU or TPU runtime: JAX picks up the accelerator
# by itself. `SCALELAB_SMOKE=1` (set by the CI test) shrinks everything to seconds.

# %%
# Install: on Colab, pip-install scalelab (with the right JAX for the runtime); locally,
# make the checkout importable.
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

IN_COLAB = "google.colab" in sys.modules
REPO = os.environ.get("SCALELAB_REPO", "https://github.com/scalelab/scalelab")  # set to your fork
if IN_COLAB and importlib.util.find_spec("lm") is None:
    extra = "tpu" if "COLAB_TPU_ADDR" in os.environ or "TPU_NAME" in os.environ else (
        "gpu" if Path("/usr/bin/nvidia-smi").exists() else "notebooks")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"scalelab[{extra}] @ git+{REPO}"], check=True)
elif importlib.util.find_spec("lm") is None:
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))

SMOKE = os.environ.get("SCALELAB_SMOKE", "0") == "1"

import jax  # noqa: E402

print("JAX", jax.__version__, "devices:", jax.devices())

# %% [markdown]
# ## A tiny transformer on the embedded corpus
# The default data source is the Python standard library's own sources (real text,
# nothing to download), tokenised as bytes.

# %%
import dataclasses  # noqa: E402
import tempfile  # noqa: E402

from lm.train import records as lm_records  # noqa: E402
from lm.train import solo as lm_train  # noqa: E402
from lm.model.config import ModelConfig, RunConfig, ScheduleConfig, TrainConfig  # noqa: E402
from lm.data.config import DataConfig  # noqa: E402
from lm.model.counting import param_count  # noqa: E402

steps = 20 if SMOKE else 600
run = RunConfig(
    model=ModelConfig(d_model=32 if SMOKE else 128, num_layers=1 if SMOKE else 4, num_heads=2 if SMOKE else 4,
                      d_ff=128 if SMOKE else 512),
    data=DataConfig(source="stdlib", seq_len=64 if SMOKE else 256, batch_size=4 if SMOKE else 16,
                    max_bytes=2_000_000 if SMOKE else None),
    schedule=ScheduleConfig(kind="cosine", warmup_fraction=0.05),
    train=TrainConfig(steps=steps, eval_every=steps, eval_batches=1 if SMOKE else 8, log_every=5 if SMOKE else 25,
                      checkpoint_every=steps, progress=not SMOKE),
    name="quickstart",
)
print(f"{param_count(run.model)['total']:,.0f} parameters")
run_dir = Path(tempfile.mkdtemp(prefix="scalelab-quickstart-"))
result = lm_train.train(run, run_dir)
print({k: result[k] for k in ("final_train_loss", "final_val_loss", "final_val_bpb", "train_s")})

# %% [markdown]
# ## The loss curve

# %%
import matplotlib.pyplot as plt  # noqa: E402

records = lm_records.read_metrics(run_dir)
train_recs = [r for r in records if "train_loss" in r]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([r["tokens"] for r in train_recs], [r["train_loss"] for r in train_recs], label="train")
ax.scatter([r["tokens"] for r in records if "val_loss" in r], [r["val_loss"] for r in records if "val_loss" in r],
           color="C1", label="validation", zorder=3)
ax.set_xlabel("tokens")
ax.set_ylabel("loss (nats / byte)")
ax.legend()
plt.show()
assert train_recs and all(r["train_loss"] == r["train_loss"] for r in train_recs)

# %% [markdown]
# ## Samples

# %%
import jax.numpy as jnp  # noqa: E402

from lm.model.decode import generate  # noqa: E402
from lm.data.tokenizer import ByteTokenizer  # noqa: E402

tok = ByteTokenizer()
_, params = lm_train.load_params(run_dir)
prompt = jnp.asarray(tok.encode("def ", add_bos=True))[None, :]
new = generate(run.model, params, prompt, jax.random.PRNGKey(0), max_new_tokens=32 if SMOKE else 200,
               temperature=0.8)
print("def " + tok.decode(list(map(int, new[0]))))
