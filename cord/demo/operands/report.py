"""The demo's results: preconditions, summary, paper-style tables, plots and the README."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cord.demo import posttrain as P
from cord.demo.format import label, pc
from cord.demo.methods import TABLE1, TABLE3
from cord.demo.operands.rates import TEXT_TOLERANCE

BASE_TEXT_MIN = 0.85
AUDIO_RATIO = (0.40, 0.85)
MIN_EVAL_ITEMS = 500
MIN_SEEDS = {"quick": 1, "default": 3, "full": 5, "long": 3}
DEFINITIONS = (
    "Δ = Acc_text(base) − Acc_audio(method), the paper's gap: how far the method's audio "
    "answers stay below the base model's text answers. Gap reduction = 1 − Δ_method / Δ_base "
    "(0 = no change, 100% = audio as good as the base's text). 95% CIs: paired bootstrap over "
    "held-out items and seeds (2000 resamples)."
)




def _ci_text(ci: list[float]) -> str:
    return f"[{pc(ci[0])}, {pc(ci[1])}]"


def _reduction(row: dict[str, Any]) -> str:
    """A gap reduction and its CI; "n/a (no gap on the base)" where the base had none."""
    value = row["gap_reduction"]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a (no gap on the base)"
    return f"{pc(value)} {_ci_text(row['gap_reduction_ci95'])}"




# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def preconditions(mode: str, post: dict, scores: dict, base_kl: dict, kl_stats: dict,
                  methods: list[str], seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Every condition of a fair test in the paper's regime: ``{name: {value, bound, ok}}``."""
    b = scores["base"][0]
    ratio = b["audio"] / b["text"] if b["text"] else float("nan")
    drops = {m: b["text"] - float(np.mean([s["text"] for s in scores[m]])) for m in methods}
    worst = max(drops, key=drops.get)
    k = post["top_k"]

    def entry(value, bound: str, ok: bool) -> dict[str, Any]:
        return {"value": value, "bound": bound, "ok": bool(ok)}

    return {
        "base_text_accuracy": entry(b["text"], f">= {BASE_TEXT_MIN}", b["text"] >= BASE_TEXT_MIN),
        "base_audio_over_text": entry(ratio, f"in [{AUDIO_RATIO[0]}, {AUDIO_RATIO[1]}]",
                                      AUDIO_RATIO[0] <= ratio <= AUDIO_RATIO[1]),
        "mean_completion_length": entry(base_kl["mean_length"], f">= 2K = {2 * k}",
                                        base_kl["mean_length"] >= 2 * k),
        "kl_falls_with_position": entry(kl_stats["pearson_r_position"], "< 0 (Pearson r)",
                                        kl_stats["pearson_r_position"] < 0),
        "text_side_kept": entry({"worst_method": worst, "text_drop": drops[worst]},
                                f"text drop <= {TEXT_TOLERANCE} for every method",
                                drops[worst] <= TEXT_TOLERANCE),
        "eval_items": entry(len(b["audio_items"]), f">= {MIN_EVAL_ITEMS}",
                            len(b["audio_items"]) >= MIN_EVAL_ITEMS),
        "seeds": entry(len(seeds), f">= {MIN_SEEDS[mode]}", len(seeds) >= MIN_SEEDS[mode]),
    }


def assemble(*, mode, task, post, seeds, methods, rates, scores, tokens, bootstrap, base_kl,
             kl_after, kl_stats, curves, curves_base, long_runs, grid, base_source,
             long_bootstrap=None) -> dict[str, Any]:
    b = scores["base"][0]
    summary = {"base": {"text": b["text"], "audio": b["audio"], "gap_reduction": 0.0,
                        "gap_reduction_ci95": [0.0, 0.0], "text_after": b["text"],
                        "retention": b["retention"], "transfer": b["transfer"],
                        "generated_tokens": 0}}
    for m in methods:
        runs = scores[m]
        summary[m] = {
            "text": b["text"],
            "audio": float(np.mean([s["audio"] for s in runs])),
            "audio_std": float(np.std([s["audio"] for s in runs], ddof=1)) if len(runs) > 1
            else 0.0,
            "gap_reduction": bootstrap["methods"][m]["mean"],
            "gap_reduction_ci95": bootstrap["methods"][m]["ci95"],
            "text_after": float(np.mean([s["text"] for s in runs])),
            "retention": float(np.mean([s["retention"] for s in runs])),
            "transfer": float(np.mean([s["transfer"] for s in runs])),
            "generated_tokens": int(np.mean(tokens[m])),
            "learning_rate": rates[m],
        }
    return {
        "mode": mode, "seeds": seeds, "methods": methods, "task": task, "post_training": post,
        "definitions": DEFINITIONS,
        "preconditions": preconditions(mode, post, scores, base_kl, kl_stats, methods, seeds),
        "summary": summary, "paired": bootstrap["paired"],
        "learning_rates": rates, "learning_rate_grid": grid,
        "kl": {"base": base_kl, "after": kl_after,
               "base_analysis": {k: v for k, v in kl_stats.items() if k != "figures"}},
        "curves": curves, "curves_base": curves_base, "long_runs": long_runs,
        "budget": _budget(scores, long_runs, long_bootstrap, rates) if long_runs else None,
        "base_source": base_source,
        "per_seed": {m: [{k: v for k, v in s.items()} for s in runs]
                     for m, runs in scores.items()},
    }


def _budget(scores, long_runs, bootstrap, rates) -> dict[str, Any]:
    """The long runs beside the same seed's run at the default budget."""
    rows = {}
    for m, run in long_runs.items():
        s = run["scores"]
        rows[m] = {"steps": run["steps"], "audio": s["audio"], "text_after": s["text"],
                   "retention": s["retention"], "transfer": s["transfer"],
                   "generated_tokens": run["tokens"], "learning_rate": rates[m],
                   "audio_default_budget": scores[m][0]["audio"],
                   "gap_reduction": bootstrap["methods"][m]["mean"],
                   "gap_reduction_ci95": bootstrap["methods"][m]["ci95"]}
    return {"methods": rows, "paired": bootstrap["paired"]}


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def table(results: dict[str, Any], rows: tuple[str, ...]) -> str:
    """Markdown: one row per method of ``rows`` that ran, after the base."""
    s = results["summary"]
    head = ["Method", "text acc", "audio acc", "Δ", "gap reduction [95% CI]", "text after",
            "retention", "transfer", "generated tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_text = s["base"]["text"]
    for m in ("base", *[r for r in rows if r in s]):
        row = s[m]
        gap = ("—" if m == "base"
               else _reduction(row))
        audio = pc(row["audio"]) + (f" ± {pc(row['audio_std'])}" if row.get("audio_std") else "")
        lines.append("| " + " | ".join([
            label(m), pc(base_text), audio, pc(base_text - row["audio"]), gap,
            pc(row["text_after"]), pc(row["retention"]), pc(row["transfer"]),
            f"{row['generated_tokens']:,}" if m != "base" else "—"]) + " |")
    return "\n".join(lines) + "\n"


def budget_table(results: dict[str, Any]) -> str:
    """Markdown: every method's seed-0 run at the default budget and at LONG times it."""
    budget, s = results["budget"], results["summary"]
    steps = results["post_training"]["max_steps"]
    base_text = s["base"]["text"]
    long_steps = next(iter(budget["methods"].values()))["steps"]
    head = ["Method", f"audio acc, {steps} steps", f"audio acc, {long_steps} steps",
            f"gap reduction, {long_steps} steps [95% CI]", "text after", "retention",
            "transfer", "generated tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             f"| Base | {pc(s['base']['audio'])} | {pc(s['base']['audio'])} | — | "
             f"{pc(base_text)} | {pc(s['base']['retention'])} | {pc(s['base']['transfer'])}"
             " | — |"]
    for m, row in budget["methods"].items():
        lines.append("| " + " | ".join([
            label(m), pc(row["audio_default_budget"]), pc(row["audio"]),
            _reduction(row),
            pc(row["text_after"]), pc(row["retention"]), pc(row["transfer"]),
            f"{row['generated_tokens']:,}"]) + " |")
    return "\n".join(lines) + "\n"


def grid_table(results: dict[str, Any]) -> str:
    """Markdown: validation audio / text accuracy of every method at every learning rate of
    the grid, the chosen rate in bold. A column is the paper's protocol (one rate for all)."""
    grid = results["learning_rate_grid"]
    rates = sorted({float(r) for g in grid["grid"].values() for r in g})
    head = ["Method", *[f"lr {r:g}" for r in rates]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             f"| Base | {pc(grid['base_val']['audio'])} / {pc(grid['base_val']['text'])}"
             + " |" * len(rates)]
    for m, g in grid["grid"].items():
        chosen = grid["selected"][m]["rate"]
        cells = []
        for r in rates:
            acc = g.get(f"{r:g}")
            cell = "-" if acc is None else f"{pc(acc['audio'])} / {pc(acc['text'])}"
            cells.append(f"**{cell}**" if acc is not None and r == chosen else cell)
        lines.append("| " + " | ".join([label(m), *cells]) + " |")
    return "\n".join(lines) + "\n"


def paired_table(results: dict[str, Any], paired: dict | None = None) -> str:
    lines = ["| difference in gap reduction | mean | 95% CI |", "|---|---|---|"]
    for pair, v in (results["paired"] if paired is None else paired).items():
        a, b = pair.split(" - ")
        lines.append(f"| {label(a)[2:]} − {label(b)[2:]} | {pc(v['mean'])} | "
                     f"{_ci_text(v['ci95'])} |")
    return "\n".join(lines) + "\n"


def preconditions_table(results: dict[str, Any]) -> str:
    lines = ["| precondition | value | bound | ok |", "|---|---|---|---|"]
    for name, p in results["preconditions"].items():
        v = p["value"]
        if isinstance(v, dict):
            v = ", ".join(f"{k} {x:.3f}" if isinstance(x, float) else f"{k} {x}"
                          for k, x in v.items())
        elif isinstance(v, float):
            v = f"{v:.3f}"
        lines.append(f"| {name} | {v} | {p['bound']} | {'yes' if p['ok'] else '**NO**'} |")
    return "\n".join(lines) + "\n"


def failed_preconditions(results: dict[str, Any]) -> list[str]:
    return [n for n, p in results["preconditions"].items() if not p["ok"]]


# --------------------------------------------------------------------------------------------
# Plots (the object-oriented matplotlib API: no pyplot state, any backend)
# --------------------------------------------------------------------------------------------


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    curves = results["curves"]
    if not curves:
        return None
    base_text = results["curves_base"]["text"]
    fig = Figure(figsize=(9, 3.4))
    ax_gap, ax_text = fig.subplots(1, 2)
    for m, curve in curves.items():
        steps = [0] + [c["step"] for c in curve]
        audio = [results["curves_base"]["audio"]] + [c["audio"] for c in curve]
        text = [base_text] + [c["text"] for c in curve]
        ax_gap.plot(steps, [100 * (base_text - a) for a in audio], marker="o", label=label(m)[2:])
        ax_text.plot(steps, [100 * t for t in text], marker="o", label=label(m)[2:])
    ax_gap.set(xlabel="step", ylabel="validation Δ (points)", title="gap (lower is better)")
    ax_text.set(xlabel="step", ylabel="validation text accuracy (%)", title="text side")
    ax_text.axhline(100 * (base_text - TEXT_TOLERANCE), color="gray", ls="--", lw=0.8)
    ax_gap.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_reductions(results: dict[str, Any], path: Path) -> Path:
    s = results["summary"]
    methods = [m for m in results["methods"]]
    fig = Figure(figsize=(6, 0.5 + 0.45 * len(methods)))
    ax = fig.subplots()
    for i, m in enumerate(methods):
        lo, hi = s[m]["gap_reduction_ci95"]
        ax.plot([100 * lo, 100 * hi], [i, i], color="C0")
        ax.plot([100 * s[m]["gap_reduction"]], [i], "o", color="C0")
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks(range(len(methods)), [label(m)[2:] for m in methods])
    ax.set_xlabel("gap reduction (%), paired bootstrap 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_long_runs(results: dict[str, Any], path: Path) -> Path | None:
    runs = results.get("long_runs")
    if not runs:
        return None
    base = results["curves_base"]
    fig = Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    for m, run in runs.items():
        curve = run["curve"]
        ax.plot([0] + [c["step"] for c in curve],
                [100 * base["audio"]] + [100 * c["audio"] for c in curve], marker="o",
                label=label(m)[2:])
    ax.set(xlabel="step", ylabel="validation audio accuracy (%)",
           title="validation audio over the longer budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def save_model(adapter, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    adapter.model.save_pretrained(path)
    adapter.processor.save_pretrained(path)
    return path


def console_summary(results: dict[str, Any]) -> str:
    parts = []
    failed = failed_preconditions(results)
    if failed:
        parts.append("PRECONDITIONS NOT MET: " + ", ".join(failed) + " (see the table below)")
    parts += [preconditions_table(results), "Table 1 (the paper's baselines)",
              table(results, TABLE1), "Table 3 (the ablation ladder)", table(results, TABLE3)]
    if results["paired"]:
        parts.append(paired_table(results))
    if results.get("budget"):
        parts += ["Budget (seed 0, longer runs)", budget_table(results)]
    t = results.get("timings_s")
    if t:
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total")
        parts.append(f"total {t['total'] / 60:.1f} min ({phases})")
    return "\n".join(parts)


def write_report(results: dict[str, Any], out: Path, command: str) -> None:
    figures = [p for p in (plot_curves(results, out / "curves.png"),
                           plot_reductions(results, out / "gap_reduction.png"),
                           plot_long_runs(results, out / "long_runs.png")) if p]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    tables = {"table1.md": table(results, TABLE1), "table3.md": table(results, TABLE3)}
    if results["mode"] == "full":
        tables["sweep.md"] = table(results, P.SWEEP)
    for name, text in tables.items():
        (out / name).write_text(text)
    post, task = results["post_training"], results["task"]
    failed = failed_preconditions(results)
    lines = [
        "# `cord demo`: does CORD close a tiny audio LM's modality gap, fairly compared?",
        "",
        f"Command: `{command}`",
        "",
    ]
    if failed:
        lines += [f"**Preconditions not met: {', '.join(failed)}.** The comparison below is "
                  "outside the paper's regime in these respects; read it with that in mind.", ""]
    lines += [
        preconditions_table(results),
        f"{task['eval_questions']} held-out multi-step "
        f"spoken/written arithmetic questions, {len(results['seeds'])} post-training seed(s) "
        f"from one pre-trained start; every method: {post['max_steps']} steps of "
        f"{post['batch_size']} unlabelled prompts, rollouts of at most "
        f"{post['max_completion_length']} tokens (T = {post['temperature']}, GRPO groups of "
        f"{post['num_generations']} at T = {post['grpo_temperature']}), K = {post['top_k']}, "
        f"teacher = {post['teacher']}; learning rate per method by one rule "
        "(`learning_rates.json`). Accuracies in %, audio mean ± std over seeds.",
        "",
        DEFINITIONS,
        "",
        "## Table 1: the paper's baselines", "", table(results, TABLE1),
        "## Table 3: the ablation ladder", "", table(results, TABLE3),
    ]
    if "sweep.md" in tables:
        lines += ["## Figure 4: α = β", "", tables["sweep.md"]]
    if results["paired"]:
        lines += ["## Paired differences", "", paired_table(results)]
    if results.get("learning_rate_grid"):
        lines += ["## The learning-rate grid (validation)", "",
                  f"Validation audio / text accuracy (%) after {post['max_steps']} steps at each "
                  "rate, seed 0; bold: the rule's choice. One column is the paper's protocol "
                  "(one rate for every method).", "", grid_table(results)]
    if results.get("budget"):
        steps = results["post_training"]["max_steps"]
        long_steps = next(iter(results["budget"]["methods"].values()))["steps"]
        lines += [f"## Budget: {long_steps} steps instead of {steps}", "",
                  f"Seed {results['seeds'][0]} of every method again, {long_steps} steps at the "
                  f"learning rate the rule chose for {steps} steps, scored on the same held-out "
                  "items; one seed, so the CIs resample items only. The rates are not re-tuned "
                  f"for {long_steps} steps, so this shows what a rate tuned on a short run does "
                  "over a longer one; `cord demo --long` applies the rule at the longer budget "
                  "and is the fair comparison. Validation curves: `long_runs.png`.", "",
                  budget_table(results)]
        if results["budget"]["paired"]:
            lines += [paired_table(results, results["budget"]["paired"])]
    kl = results["kl"]
    lines += ["## KL on the audio rollouts", "",
              f"Base: mean KL {kl['base']['mean_kl']:.4f}, high-KL tokens (above the base's "
              f"80th percentile {kl['base']['high_threshold']:.4f}) average "
              f"{kl['base']['high_kl_mean']:.4f}; Pearson r(position, KL) = "
              f"{kl['base_analysis']['pearson_r_position']:.3f}.", "",
              "| after | mean KL | mean KL of tokens above the base threshold | share above |",
              "|---|---|---|---|"]
    for m, v in kl["after"].items():
        lines.append(f"| {label(m)[2:]} | {v['mean_kl']:.4f} | {v['high_kl_mean']:.4f} | "
                     f"{100 * v['high_kl_share']:.1f}% |")
    lines += ["", "![KL distribution](kl_distribution.png) ![high vs low KL](kl_tokens.png)", "",
              "![one rollout](kl_rollout.png)", ""]
    lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figures] + [""]
    t = results.get("timings_s")
    if t:
        m = results["machine"]
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total")
        lines += [f"Wall time {t['total'] / 60:.1f} min ({phases}); Python {m['python']}, torch "
                  f"{m['torch']}, {m['threads']} thread(s)"
                  + f", {m['workers']} worker(s); base {results['base_source']}.", ""]
    (out / "README.md").write_text("\n".join(lines))
