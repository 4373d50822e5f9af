"""``cord analyze``: where the audio-text divergence lives, as the paper's Figures 2 and 3.

Input is a set of audio-conditioned rollouts with one reverse KL per generated token,
D_t = KL(p_θ(·|y_<t, x^a) || p_θ(·|y_<t, x^t)) (SPEC section 1). They come either from a saved
rollouts file (JSON list or JSONL, one record per rollout)::

    {"tokens": ["The", " answer", " is", " B"], "kl": [0.01, 0.3, 0.02, 1.7], "correct": true}

or are computed here from a model and a paired dataset (:func:`rollout_kl`), the KL coming from
``cord_kernels.reverse_kl`` on the student (audio) and teacher (text) logits of each rollout.

Outputs (PNG, matplotlib Agg backend) and a JSON summary:

- ``kl_distribution.png``  Figure 3 left: histogram of D_t on a log axis with the 80th percentile
  marked, and D_t against token position with the Pearson r.
- ``kl_tokens.png``        Figure 3 (a)-(b): the tokens most often above the 80th percentile
  (high-KL region) against those most often below it (bar charts in place of word clouds).
- ``kl_rollout.png``       Figure 2: one rollout drawn token by token, each block coloured by D_t.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib import colors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from tqdm.auto import tqdm

from cord.data.paired import audio_of
from cord.divergence import HIGH_KL_PERCENTILE, check_percentile, pearson_r
from cord.eval.evaluate import load_items, normalize_record, score_response
from cord.models.families import build_adapter
from cord.models.loading import resolve_device
from cord.models.rollout import sample
from cord_kernels import reverse_kl


@dataclass
class Rollout:
    """One audio-conditioned completion with its per-token reverse KL.

    tokens: the T generated tokens as display strings; kl: (T,) D_t ≥ 0 for each of them.
    """

    tokens: list[str]
    kl: list[float]
    correct: bool | None = None
    prompt: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.kl):
            raise ValueError(
                f"rollout tokens and kl must have the same length, got {len(self.tokens)} "
                f"tokens and {len(self.kl)} kl values"
            )
        bad = [v for v in self.kl if not math.isfinite(v) or v < -1e-6]
        if bad:
            raise ValueError(f"rollout kl must be finite and non-negative, got {bad[:3]}")


def rollouts_from_records(records: Iterable[dict]) -> list[Rollout]:
    """Records with ``tokens`` and ``kl`` (plus optional ``correct``, ``prompt``) -> rollouts."""
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "tokens" not in rec or "kl" not in rec:
            raise ValueError(f"rollout record {i} must be a dict with 'tokens' and 'kl' keys")
        extra = {k: v for k, v in rec.items() if k not in ("tokens", "kl", "correct", "prompt")}
        out.append(
            Rollout(
                tokens=[str(t) for t in rec["tokens"]],
                kl=[float(v) for v in rec["kl"]],
                correct=rec.get("correct"),
                prompt=rec.get("prompt"),
                extra=extra,
            )
        )
    return out


def load_rollouts(path: str | Path) -> list[Rollout]:
    """Read rollouts from a JSON list (or ``{"rollouts": [...]}``) or a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"rollouts file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data.get("rollouts", [data])
    return rollouts_from_records(data)


def save_rollouts(rollouts: Sequence[Rollout], path: str | Path) -> None:
    """Write rollouts as JSONL (one record per line), readable by :func:`load_rollouts`."""
    with open(path, "w") as f:
        for r in rollouts:
            rec = {"tokens": r.tokens, "kl": r.kl, "correct": r.correct, "prompt": r.prompt}
            f.write(json.dumps({**rec, **r.extra}) + "\n")


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def kl_statistics(
    rollouts: Sequence[Rollout], *, percentile: float = HIGH_KL_PERCENTILE, top_n: int = 15
) -> dict:
    """The numbers behind Figure 3.

    Returns a dict with ``n_rollouts``, ``n_tokens``, ``mean_kl``, ``median_kl``,
    ``threshold`` (the ``percentile``-th percentile of all D_t, numpy's linear interpolation),
    ``high_fraction`` (share of tokens strictly above it), ``pearson_r_position`` (r between the
    0-based position t within its rollout and D_t, over all tokens), ``high_tokens`` and
    ``low_tokens`` (the ``top_n`` most frequent token strings above / at-or-below the threshold,
    as ``[token, count]`` pairs) and, when rollouts say whether they were right,
    ``mean_kl_correct`` / ``mean_kl_incorrect``.
    """
    check_percentile(percentile)
    kl = np.concatenate([np.asarray(r.kl, dtype=np.float64) for r in rollouts] or [np.zeros(0)])
    if kl.size == 0:
        raise ValueError("rollouts hold no tokens: nothing to analyse")
    positions = np.concatenate([np.arange(len(r.kl)) for r in rollouts])
    tokens = [t for r in rollouts for t in r.tokens]
    threshold = float(np.percentile(kl, percentile))
    high = kl > threshold
    high_counts = Counter(t for t, h in zip(tokens, high) if h)
    low_counts = Counter(t for t, h in zip(tokens, high) if not h)
    stats = {
        "n_rollouts": len(rollouts),
        "n_tokens": int(kl.size),
        "mean_kl": float(kl.mean()),
        "median_kl": float(np.median(kl)),
        "percentile": percentile,
        "threshold": threshold,
        "high_fraction": float(high.mean()),
        "pearson_r_position": pearson_r(positions, kl),
        "high_tokens": [[t, c] for t, c in high_counts.most_common(top_n)],
        "low_tokens": [[t, c] for t, c in low_counts.most_common(top_n)],
    }
    for label, want in (("correct", True), ("incorrect", False)):
        sel = [r for r in rollouts if r.correct is want]
        if sel:
            stats[f"mean_kl_{label}"] = float(np.mean([v for r in sel for v in r.kl]))
    return stats


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float]):
    """A figure and its axes outside pyplot: no global backend or figure registry is touched,
    so plotting never needs a display and never leaks figures."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def _display(token: str) -> str:
    """A token as it should read in a plot: whitespace made visible, never empty."""
    shown = token.replace("\n", "\\n").replace("Ġ", " ").replace("Ċ", "\\n")
    return shown if shown.strip() else repr(shown)


def plot_kl_distribution(rollouts: Sequence[Rollout], stats: dict, path: str | Path) -> Path:
    """Figure 3 left: log-scale histogram with the percentile line, and D_t vs position."""
    kl = np.concatenate([np.asarray(r.kl, dtype=np.float64) for r in rollouts])
    positions = np.concatenate([np.arange(len(r.kl)) for r in rollouts])
    floor = max(float(kl[kl > 0].min()) if (kl > 0).any() else 1e-6, 1e-8)
    kl_pos = np.clip(kl, floor, None)  # log axis: exact zeros drawn at the smallest positive D
    fig, (ax_h, ax_s) = _figure(2, 1, figsize=(6.4, 6.4))
    bins = np.logspace(np.log10(kl_pos.min()), np.log10(kl_pos.max() * 1.0001), 40)
    ax_h.hist(kl_pos, bins=bins, color="#4C72B0", alpha=0.85)
    ax_h.set_xscale("log")
    thr = stats["threshold"]
    label = f"{stats['percentile']:.0f}th percentile = {thr:.3g}"
    ax_h.axvline(max(thr, floor), color="red", linestyle="--", label=label)
    ax_h.set_xlabel("per-token reverse KL  KL(p(·|audio) || p(·|text))")
    ax_h.set_ylabel("tokens")
    ax_h.set_title(f"{stats['n_tokens']} tokens from {stats['n_rollouts']} audio rollouts")
    ax_h.legend()
    ax_s.scatter(positions, kl, s=6, alpha=0.35, color="#4C72B0")
    ax_s.set_xlabel("token position in rollout")
    ax_s.set_ylabel("reverse KL")
    ax_s.set_title(f"KL vs position: Pearson r = {stats['pearson_r_position']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_token_regions(stats: dict, path: str | Path) -> Path:
    """Figure 3 (a)-(b) as bar charts: most frequent tokens in the high vs low KL regions."""
    fig, axes = _figure(1, 2, figsize=(9, 4.8))
    high_title = f"(a) high-KL region (> {stats['threshold']:.3g})"
    panels = (
        (axes[0], stats["high_tokens"], "#C44E52", high_title),
        (axes[1], stats["low_tokens"], "#55A868", "(b) low-KL region"),
    )
    for ax, pairs, color, title in panels:
        labels = [_display(t) for t, _ in pairs][::-1]
        counts = [c for _, c in pairs][::-1]
        ax.barh(range(len(counts)), counts, color=color)
        ax.set_yticks(range(len(counts)), labels)
        ax.set_xlabel("occurrences")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def pick_rollout(rollouts: Sequence[Rollout]) -> int:
    """The rollout Figure 2 draws: the longest incorrect one if any are marked, else longest."""
    wrong = [i for i, r in enumerate(rollouts) if r.correct is False and r.tokens]
    pool = wrong or [i for i, r in enumerate(rollouts) if r.tokens]
    if not pool:
        raise ValueError("every rollout is empty: nothing to draw")
    return max(pool, key=lambda i: len(rollouts[i].tokens))


def plot_rollout(rollout: Rollout, path: str | Path, *, per_line: int = 12) -> Path:
    """Figure 2: the rollout token by token, each block coloured by its D_t, value underneath."""
    n = len(rollout.tokens)
    per_line = max(1, min(per_line, n))
    rows = max(1, math.ceil(n / per_line))
    fig, ax = _figure(figsize=(1.0 * per_line + 1.2, 0.9 * rows + 1.2))
    vmax = max(max(rollout.kl, default=0.0), 1e-6)
    norm = colors.Normalize(vmin=0.0, vmax=vmax)
    cmap = matplotlib.colormaps["Reds"]
    for i, (tok, d) in enumerate(zip(rollout.tokens, rollout.kl)):
        r, c = divmod(i, per_line)
        ax.add_patch(
            Rectangle((c, -r), 0.95, 0.8, facecolor=cmap(norm(d)), edgecolor="#444444")
        )
        ink = "white" if norm(d) > 0.6 else "black"  # readable on the darkest reds
        ax.text(c + 0.475, -r + 0.5, _display(tok)[:10], ha="center", va="center", fontsize=8,
                color=ink)
        ax.text(c + 0.475, -r + 0.15, f"{d:.2f}", ha="center", va="center", fontsize=7,
                color=ink)
    ax.set_xlim(-0.1, per_line)
    ax.set_ylim(-rows + 0.7, 0.9)
    ax.axis("off")
    verdict = {True: "correct", False: "incorrect", None: "unjudged"}[rollout.correct]
    title = f"audio rollout ({verdict}), per-token reverse KL"
    if rollout.prompt:
        title += f"\nprompt: {rollout.prompt[:90]}"
    ax.set_title(title, fontsize=9)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.03, label="KL")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def analyze_rollouts(
    rollouts: Sequence[Rollout], output_dir: str | Path, *, percentile: float = HIGH_KL_PERCENTILE
) -> dict:
    """Statistics + the three PNGs + ``kl_stats.json`` in ``output_dir``; returns the stats
    with a ``figures`` entry listing the written files."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = kl_statistics(rollouts, percentile=percentile)
    idx = pick_rollout(rollouts)
    figures = [
        plot_kl_distribution(rollouts, stats, out / "kl_distribution.png"),
        plot_token_regions(stats, out / "kl_tokens.png"),
        plot_rollout(rollouts[idx], out / "kl_rollout.png"),
    ]
    stats["figures"] = [str(p) for p in figures]
    stats["drawn_rollout"] = idx
    (out / "kl_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


# --------------------------------------------------------------------------------------------
# Rollouts with per-token KL from a model
# --------------------------------------------------------------------------------------------


def token_kl(student_logits, teacher_logits, mask):
    """Per-token reverse KL of aligned completion logits.

    student_logits, teacher_logits: (B, T, V) for the same completion tokens under the audio and
    the text prompt; mask: (B, T) bool of generated positions. Returns (B, T) float32 with 0 at
    masked positions, computed by ``cord_kernels.reverse_kl``.
    """
    with torch.no_grad():
        d = reverse_kl(student_logits.float(), teacher_logits.float())
    return d.masked_fill(~mask.bool(), 0.0)


def rollout_kl(
    adapter,
    items,
    *,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> list[Rollout]:
    """Audio-conditioned rollouts of ``items`` with the per-token reverse KL to the text side.

    For each batch: sample y ~ p(·|x^a) (``cord.models.rollout.sample``), score the same tokens
    under the audio prompt (student) and the text prompt (teacher) with
    ``adapter.completion_logits`` and take :func:`token_kl`. Items with an ``answer`` get
    ``correct`` from :func:`cord.eval.evaluate.score_response`.

    Args:
        adapter: a :class:`cord.models.adapter.ModelAdapter`.
        items: records ``{text, audio={array, sampling_rate}, answer?}``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[Rollout] = []
    starts = range(0, len(items), batch_size)
    if progress:
        starts = tqdm(starts, desc="audio rollouts + KL", unit="batch", leave=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for s in starts:
            batch = list(items[s : s + batch_size])
            audios = [audio_of(r) for r in batch]
            x_a = adapter.audio_prompts([a for a, _ in audios], sampling_rate=audios[0][1])
            x_t = adapter.text_prompts([r["text"] for r in batch])
            ro = sample(adapter, x_a, temperature=temperature, max_new_tokens=max_new_tokens)
            with torch.no_grad():
                student = adapter.completion_logits(x_a, ro.completion_ids, ro.completion_mask)
                teacher = adapter.completion_logits(x_t, ro.completion_ids, ro.completion_mask)
            kl = token_kl(student, teacher, ro.completion_mask)
            for i, rec in enumerate(batch):
                m = ro.completion_mask[i]
                ids = ro.completion_ids[i][m].tolist()
                answer = rec.get("answer", rec.get("reference"))
                correct = None
                if answer is not None and str(answer).strip():
                    rec = normalize_record(rec, s + i)
                    correct = score_response(ro.texts[i], rec["answer"])[0]
                out.append(Rollout(
                    tokens=[adapter.tokenizer.decode([t]) for t in ids],
                    kl=kl[i][m].tolist(),
                    correct=correct,
                    prompt=rec["text"],
                ))  # fmt: skip
    return out


def summary_line(stats: dict) -> str:
    """One line a user reads in the console."""
    return (
        f"{stats['n_tokens']} tokens / {stats['n_rollouts']} rollouts: mean KL "
        f"{stats['mean_kl']:.4f}, {stats['percentile']:.0f}th pct {stats['threshold']:.4f}, "
        f"Pearson r(position, KL) = {stats['pearson_r_position']:.3f}"
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def run_checked(args: argparse.Namespace) -> int:
    """``cord analyze`` once :func:`cord.eval.analyze_cli.check_args` has checked ``args``."""
    if args.rollouts:
        rollouts = load_rollouts(args.rollouts)
    else:
        adapter = build_adapter(args.model, system_prompt=args.system_prompt,
                                long_audio=args.long_audio, device=resolve_device(args.device))
        sr = int(getattr(adapter, "sampling_rate", 16_000))
        items = load_items(args.data, limit=args.limit, sampling_rate=sr,
                           audio_limit=adapter.audio_limit())
        rollouts = rollout_kl(
            adapter,
            items,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        save_rollouts(rollouts, Path(args.output_dir) / "rollouts.jsonl")
    stats = analyze_rollouts(rollouts, args.output_dir, percentile=args.percentile)
    print(summary_line(stats))
    for f in stats["figures"]:
        print(f"wrote {f}")
    return 0
