"""``python -m scaling.fit TABLE --law lr_opt|bs_opt|bs_opt_nd|lr_opt_c|bs_opt_c``.

The Step Law recipe of :mod:`scaling.hyperparams` from the command line: prints the law with
its bootstrap mean, SD and interval and the warnings; writes report.md and samples.csv
under ``--out``.
"""

from __future__ import annotations

from pathlib import Path

from scaling.constants import DEEPSEEK_NEAR_OPTIMAL_THRESHOLD


def hyper_table(fit) -> list[str]:
    """Markdown rows: parameter, estimate, and bootstrap mean, SD and interval when run."""
    boot = fit.boot
    level = f"{boot.level:.0%} interval" if boot is not None else "interval"
    lines = [f"| parameter | estimate | bootstrap mean | bootstrap SD | {level} |", "|---|---|---|---|---|"]
    for k, v in fit.params.items():
        if boot is None:
            lines.append(f"| {k} | {v:.6g} | - | - | - |")
        else:
            r = boot.intervals.loc[k]
            lines.append(f"| {k} | {v:.6g} | {r['mean']:.6g} | {r['std']:.3g} | "
                         f"[{r['lower']:.6g}, {r['upper']:.6g}] |")
    return lines


def run_hyper(args, rows, columns) -> int:
    """Fit, print and write one hyperparameter law; returns 0."""
    from scaling.diagnostics import markdown
    from scaling.hyperparams import HYPER_LAWS, fit_hyper_law

    threshold = DEEPSEEK_NEAR_OPTIMAL_THRESHOLD if args.threshold is None else args.threshold
    fit = fit_hyper_law(rows, args.law, columns or None, threshold=threshold,
                        n_bootstrap=args.bootstrap, seed=args.seed, level=args.level)
    head = (f"{args.law}: {HYPER_LAWS[args.law]}; {len(fit.kept)} near-optimal runs (within "
            f"{100 * threshold:g}% of each cell's best) in {fit.n_cells} cells, OLS in log space")
    print(head)
    table = hyper_table(fit)
    print("\n".join(table))
    for w in fit.warnings:
        print(f"warning: {w}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        lines = [f"# Hyperparameter law: {args.law}", "", f"Data: `{args.table}`", "",
                 head + " (Li et al. 2025, arXiv:2503.04715; DeepSeek-AI 2024, arXiv:2401.02954). "
                 "Bootstrap: the near-optimal runs, filtered once, resampled with replacement.",
                 "", *table, "", *markdown(list(fit.warnings))]
        (out / "report.md").write_text("\n".join(lines))
        written = ["report.md"]
        if fit.boot is not None:
            fit.boot.to_csv(out / "samples.csv")
            written.append("samples.csv")
        print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0
