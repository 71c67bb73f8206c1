"""``python -m scaling.fit TABLE --law lr_opt|bs_opt|bs_opt_nd|lr_opt_c|bs_opt_c``.

The Step Law recipe of :mod:`scaling.hyperparams` from the command line: prints the law with
its bootstrap mean (of the log-space coefficients, as the Step Law paper averages: exp(mean
log c) for the prefactor), SD and interval and the warnings; writes report.md, fit.json and
samples.csv under ``--out``. ``--batch-unit sequences --seq-len L`` reads batch sizes counted
in sequences (converted to tokens, the unit of the laws).
"""

from __future__ import annotations

from pathlib import Path

from scaling.constants import DEEPSEEK_NEAR_OPTIMAL_THRESHOLD


def hyper_table(fit) -> list[str]:
    """Markdown rows: parameter, estimate, and bootstrap mean, SD and interval when run; then
    a line saying how the prefactor's mean is taken."""
    boot = fit.boot
    level = f"{boot.level:.0%} interval" if boot is not None else "interval"
    lines = [f"| parameter | estimate | bootstrap mean* | bootstrap SD | {level} |", "|---|---|---|---|---|"]
    for k, v in fit.params.items():
        if boot is None:
            lines.append(f"| {k} | {v:.6g} | - | - | - |")
        else:
            r = boot.intervals.loc[k]
            lines.append(f"| {k} | {v:.6g} | {r['mean']:.6g} | {r['std']:.3g} | "
                         f"[{r['lower']:.6g}, {r['upper']:.6g}] |")
    if boot is not None:
        c = next(iter(fit.params))
        lines += ["", f"*mean of the log-space OLS coefficients (Step Law): for {c}, exp(mean log {c}) "
                      f"= {boot.intervals.loc[c, 'mean']:.6g}; the plain average of {c} is "
                      f"{boot.intervals.loc[c, 'arith_mean']:.6g}"]
    return lines


def run_hyper(args, rows, columns) -> int:
    """Fit, print and write one hyperparameter law; returns 0."""
    from scaling.diagnostics import markdown
    from scaling.fit_json import hyper_record, write_fit_json
    from scaling.hyperparams import HYPER_LAWS, fit_hyper_law
    from scaling.outputs import staged

    threshold = DEEPSEEK_NEAR_OPTIMAL_THRESHOLD if args.threshold is None else args.threshold
    seq_len = args.seq_len if args.batch_unit == "sequences" else None
    fit = fit_hyper_law(rows, args.law, columns or None, threshold=threshold,
                        n_bootstrap=args.bootstrap, seed=args.seed, level=args.level, seq_len=seq_len)
    head = (f"{args.law}: {HYPER_LAWS[args.law]}; {len(fit.kept)} near-optimal runs (within "
            f"{100 * threshold:g}% of each cell's best) in {fit.n_cells} cells, OLS in log space")
    if seq_len is not None:
        head += f"; batch sizes read in sequences of {seq_len} tokens"
    print(head)
    table = hyper_table(fit)
    print("\n".join(table))
    for w in fit.warnings:
        print(f"warning: {w}")
    if args.out:
        with staged(args.out) as tmp:
            lines = [f"# Hyperparameter law: {args.law}", "", f"Data: `{args.table}`", "",
                     head + " (Li et al. 2025, arXiv:2503.04715; DeepSeek-AI 2024, arXiv:2401.02954). "
                     "Bootstrap: the near-optimal runs, filtered once, resampled with replacement.",
                     "", *table, "", *markdown(list(fit.warnings))]
            (tmp / "report.md").write_text("\n".join(lines))
            written = ["report.md", "fit.json"]
            write_fit_json(tmp / "fit.json", hyper_record(
                fit, table=str(args.table), where=args.where, threshold=threshold, n_table=len(rows),
                columns=columns, batch_unit=args.batch_unit, seed=args.seed))
            if fit.boot is not None:
                fit.boot.to_csv(tmp / "samples.csv")
                written.append("samples.csv")
        print(f"wrote {', '.join(str(Path(args.out) / w) for w in written)}")
    return 0
