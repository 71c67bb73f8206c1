"""Constants reported by scaling-law papers, each with its source.

Nothing here is fitted by this package: these are the authors' published numbers, used as
defaults, reference lines and test targets. Units: N parameters, D tokens, C FLOPs, loss in
nats per token, unless a name says otherwise.
"""

from __future__ import annotations

# --- Kaplan et al. 2020, "Scaling Laws for Neural Language Models", arXiv:2001.08361 ---------
# Table 1 / Eqs. (1.1)-(1.3), (1.5); N = non-embedding parameters, D tokens, C in PF-days.
KAPLAN_ALPHA_N = 0.076  # Eq. (1.1)
KAPLAN_N_C = 8.8e13  # Eq. (1.1), non-embedding parameters
KAPLAN_ALPHA_D = 0.095  # Eq. (1.2)
KAPLAN_D_C = 5.4e13  # Eq. (1.2), tokens
KAPLAN_ALPHA_C_MIN = 0.050  # Eq. (1.3)
KAPLAN_C_C_MIN = 3.1e8  # Eq. (1.3), PF-days
PF_DAY_FLOPS = 1e15 * 24 * 3600  # one petaflop/s-day in FLOPs (Kaplan et al. 2020, Sec. 1.3)

# --- Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", arXiv:2203.15556
# Approach 3 fit, Eq. (10) and Appendix D.2: L(N, D) = E + A/N^alpha + B/D^beta.
HOFFMANN_E = 1.69
HOFFMANN_A = 406.4
HOFFMANN_B = 410.7
HOFFMANN_ALPHA = 0.34
HOFFMANN_BETA = 0.28
HOFFMANN_HUBER_DELTA = 1e-3  # Sec. 3.3, Eq. (2): on raw log-loss residuals
# Huber likelihood with a free scale sigma (objective "huber_ml"): delta applies to r / sigma,
# a standardised residual, so the raw-residual 1e-3 does not carry over (it would make the
# density Laplace with sigma ~ 1e-3 mean|r|). 1.345: 95 % asymptotic efficiency at the normal
# (Huber 1981, Robust Statistics; Holland & Welsch 1977).
HUBER_ML_DELTA = 1.345
# Appendix D.2: L-BFGS from the grid alpha, beta in {0, .5, ..., 2}, e in {-1, -.5, ..., 1},
# a, b in {0, 5, ..., 25} (log-space parameters, A = exp(a), B = exp(b), E = exp(e)).
HOFFMANN_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
# Table 2: exponents a (N_opt ~ C^a) and b (D_opt ~ C^b) of the three approaches.
HOFFMANN_APPROACH_EXPONENTS = {1: (0.50, 0.50), 2: (0.49, 0.51), 3: (0.46, 0.54)}
CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Table 3: ~20 tokens per parameter at the optimum

# --- Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt", arXiv:2404.10102 ---
# Table 1: approach-3 refit on the data extracted from Hoffmann's Fig. 4.
BESIROGLU_E = 1.82
BESIROGLU_A = 482.01
BESIROGLU_B = 2085.43
BESIROGLU_ALPHA = 0.3478
BESIROGLU_BETA = 0.3658

# --- Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", arXiv:2305.16264 --
# Eqs. (5)-(7); README "Parametric Fit" of github.com/huggingface/datablations.
MUENNIGHOFF_R_D_STAR = 15.387756  # paper: 15.4
MUENNIGHOFF_R_N_STAR = 5.309743  # paper: 5.3
# C4 coefficients held fixed while fitting R_D*, R_N* (log-space a, b, e; alpha = beta).
MUENNIGHOFF_C4_LOG_A = 6.255414
MUENNIGHOFF_C4_LOG_B = 7.3049974
MUENNIGHOFF_C4_LOG_E = 0.6254804
MUENNIGHOFF_C4_ALPHA = 0.3526596
MUENNIGHOFF_C4_BETA = 0.3526596

# --- Li et al. 2025, "Predictable Scale: Part I -- Optimal Hyperparameter Scaling Law in
# Large Language Model Pretraining" (Step Law), arXiv:2503.04715, Eqs. (1)-(2). -------------
STEP_LAW_LR_COEF = 1.79
STEP_LAW_LR_N_EXP = -0.713
STEP_LAW_LR_D_EXP = 0.307
STEP_LAW_BS_COEF = 0.58
STEP_LAW_BS_D_EXP = 0.571

# --- DeepSeek-AI 2024, "DeepSeek LLM: Scaling Open-Source Language Models with
# Longtermism", arXiv:2401.02954, Sec. 3.1, Eq. (1) (C = compute budget in FLOPs). ---------
DEEPSEEK_LR_COEF = 0.3118
DEEPSEEK_LR_C_EXP = -0.1250
DEEPSEEK_BS_COEF = 0.2920
DEEPSEEK_BS_C_EXP = 0.3271
# Sec. 3.1: runs within 0.25 % of the cell's minimum loss count as near-optimal.
DEEPSEEK_NEAR_OPTIMAL_THRESHOLD = 0.0025

# --- Luo et al. 2025, "A Multi-Power Law for Loss Curve Prediction Across Learning Rate
# Schedules", arXiv:2503.12811; the updated numbers of github.com/thu-yao-01-luo/MultiPowerLaw
# (README "Results", src/config.py PARAMS): fit on cosine_24000, constant_24000, wsdcon_9,
# errors averaged over the six other curves (PredE mean, WorstE max relative error per curve).
LUO_MPL_PARAMS = {  # L0, A, alpha, B, C, beta, gamma (LR in absolute units, peak 3e-4); full
    # precision from src/config.py (the README rounds them to 3 decimals)
    "25M": {"L0": 3.04045406, "A": 0.52468604, "alpha": 0.50786857, "B": 363.78751622,
            "C": 2.06560812, "beta": 0.58279013, "gamma": 0.64142257},
    "100M": {"L0": 2.6514477, "A": 0.60115152, "alpha": 0.45295811, "B": 437.9464276,
             "C": 2.13245612, "beta": 0.59785199, "gamma": 0.65523644},
}
LUO_MPL_ERRORS = {"25M": {"R2": 0.9988, "MAE": 0.00376, "RMSE": 0.00465, "PredE": 0.00110,
                          "WorstE": 0.00409},
                  "100M": {"R2": 0.9983, "MAE": 0.00435, "RMSE": 0.00592, "PredE": 0.00142,
                           "WorstE": 0.00583}}
