"""``cord eval``: audio vs text accuracy of one model, the modality gap and its reduction.

Each benchmark item is asked twice, once from its audio and once from its text, and both
answers are scored against the item's reference:

- multiple choice (a reference that is an option letter, VoiceBench's ``audio`` / ``prompt`` /
  ``reference`` records): the option letter is extracted with
  :func:`cord.rewards.answers.extract_choice`,
  which tolerates the usual phrasings ("The answer is (B)", "B.", "I choose option b", ...);
  responses it cannot read are counted wrong and reported as ``unparsed``;
- math (any other reference, numeric or LaTeX):
  :func:`cord.rewards.answers.extract_math_answer` then
  :func:`cord.rewards.answers.math_equal` (exact rationals, then math-verify).

The paper's metrics (SPEC section 1), per benchmark b and method m:

    Δ_b(m)     = Acc_text_b(base) − Acc_audio_b(m)        (the base model's text accuracy is fixed)
    reduction  = 1 − mean_b Δ_b(m) / mean_b Δ_b(base)

Python API::

    result = evaluate(adapter, records, name="arith")        # one benchmark
    print(gap_table({"base": base_run, "+ CORD": cord_run}, base="base"))
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cord.config import TRAINING_INFO_NAME
from cord.data.paired import AudioLimit, audio_of, load_paired
from cord.data.sources import read_records
from cord.models.families import build_adapter
from cord.models.loading import resolve_device
from cord.models.rollout import completion_mask
from cord.rewards.answers import ANSWER_KINDS, extract_choice, extract_math_answer, math_equal

_LETTER_REFERENCE = re.compile(r"^\s*\(?([A-Za-z])\)?\s*\.?\s*$")


# --------------------------------------------------------------------------------------------
# Scoring one response
# --------------------------------------------------------------------------------------------


def reference_kind(reference: str, choices: str = "ABCD") -> str:
    """``"choice"`` when the reference is one option letter ("B", "(c)"), else ``"math"``."""
    m = _LETTER_REFERENCE.match(str(reference))
    return "choice" if m and m.group(1).upper() in choices.upper() else "math"


def score_response(
    response: str | None, reference: str, kind: str = "auto", *, choices: str = "ABCD"
) -> tuple[bool, bool]:
    """Whether ``response`` answers ``reference`` correctly, and whether an answer could be
    read from it at all: ``(correct, parsed)``. An unparsed response is never correct.

    Example:
        >>> score_response("I think the answer is (b).", "B")
        (True, True)
        >>> score_response("so the answer is 12", "12", "math")
        (True, True)
    """
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if reference is None or not str(reference).strip():
        raise ValueError("reference must be a non-empty answer")
    kind = reference_kind(reference, choices) if kind == "auto" else kind
    if kind == "choice":
        gold = _LETTER_REFERENCE.match(str(reference))
        if gold is None:
            raise ValueError(f"a multiple-choice reference must be one letter, got {reference!r}")
        letter = extract_choice(response, choices)
        return (letter is not None and letter == gold.group(1).upper(), letter is not None)
    answer = extract_math_answer(response)
    return (answer is not None and math_equal(answer, str(reference)), answer is not None)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def normalize_record(record: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A benchmark record in either layout -> ``{id, text, audio, answer}``.

    Accepts this project's paired layout (``text``, ``audio``, ``answer``) and VoiceBench's
    (``prompt``, ``audio``, ``reference``)."""
    if not isinstance(record, Mapping):
        raise TypeError(f"record {index} must be a mapping, got {type(record).__name__}")
    text = record.get("text", record.get("prompt"))
    answer = record.get("answer", record.get("reference"))
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"record {index} needs a non-empty 'text' (or 'prompt')")
    if answer is None or not str(answer).strip():
        raise ValueError(f"record {index} needs a non-empty 'answer' (or 'reference')")
    if record.get("audio") is None:
        raise ValueError(f"record {index} needs 'audio'")
    out = dict(record)
    out.update(id=str(record.get("id", index)), text=text, answer=str(answer))
    out.pop("prompt", None)
    out.pop("reference", None)
    return out


def load_items(source: Any, *, limit: int | None = None, sampling_rate: int = 16_000,
               audio_limit: AudioLimit | None = None) -> list:
    """Benchmark records from a file, folder, ``datasets.Dataset`` or list (see
    :func:`normalize_record`), audio decoded at ``sampling_rate``; the first ``limit``. A clip
    longer than ``audio_limit`` (the model's, ``ChatAdapter.audio_limit``) raises naming its
    record, before any answer is generated."""
    records = source if isinstance(source, list) else read_records(source)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        records = records[:limit]
    base = None if isinstance(source, list) else Path(str(source))
    rows = [normalize_record(r, i) for i, r in enumerate(records)]
    if base is not None and base.is_file():
        # Relative audio paths are relative to the benchmark file, as load_paired expects.
        for r in rows:
            if isinstance(r["audio"], str) and not Path(r["audio"]).is_absolute():
                r["audio"] = str(base.parent / r["audio"])
    return list(load_paired(rows, sampling_rate=sampling_rate, audio_limit=audio_limit))


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def generate_answers(
    adapter,
    records: Sequence[Mapping[str, Any]],
    modality: str,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    instruction: str | None = None,
    progress: bool = True,
    desc: str | None = None,
    token_ids: list | None = None,
) -> list[str]:
    """The model's responses to the audio (``modality="audio"``) or text prompts of
    ``records``, greedy by default. ``token_ids``: a list that receives each batch's generated
    ``(ids, mask)`` (``cord.train.evaluation`` scores the audio answers' tokens with them)."""
    if modality not in ("audio", "text"):
        raise ValueError(f"modality must be 'audio' or 'text', got {modality!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    responses: list[str] = []
    starts = range(0, len(records), batch_size)
    if progress:
        starts = tqdm(starts, desc=desc or f"answering from {modality}", unit="batch",
                      leave=False)
    for s in starts:
        prompts = prompts_of(adapter, records[s : s + batch_size], modality, instruction)
        with torch.no_grad():
            ids = adapter.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature)
        mask = completion_mask(ids, adapter.eos_token_ids) if ids.shape[1] else ids.bool()
        responses.extend(adapter.decode(ids, mask))
        if token_ids is not None:
            token_ids.append((ids, mask))
    return responses


def prompts_of(adapter, batch: Sequence[Mapping[str, Any]], modality: str,
               instruction: str | None = None):
    """The audio (``modality="audio"``) or text prompts of the records of ``batch``."""
    if modality == "text":
        return adapter.text_prompts([r["text"] for r in batch], instruction=instruction)
    audios = [audio_of(r) for r in batch]
    rates = {sr for _, sr in audios}
    if len(rates) != 1:
        raise ValueError(f"a batch mixes sampling rates {sorted(rates)}")
    return adapter.audio_prompts([a for a, _ in audios], sampling_rate=rates.pop(),
                                 instruction=instruction)


def _modality_summary(correct: list[bool], parsed: list[bool]) -> dict[str, float]:
    n = len(correct)
    return {
        "accuracy": sum(correct) / n,
        "correct": int(sum(correct)),
        "unparsed": 1.0 - sum(parsed) / n,
    }


def evaluate(
    adapter,
    dataset: Sequence[Mapping[str, Any]],
    *,
    name: str = "benchmark",
    kind: str = "auto",
    choices: str = "ABCD",
    batch_size: int = 16,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    instruction: str | None = None,
    modalities: Sequence[str] = ("text", "audio"),
    progress: bool = True,
    keep_responses: bool = True,
    keep_ids: bool = False,
) -> dict[str, Any]:
    """Scores ``adapter``'s answers to every item of ``dataset`` from text and from audio.

    Args:
        adapter: a :class:`cord.models.adapter.ModelAdapter`.
        dataset: records ``{id, text, audio={array, sampling_rate}, answer}`` (VoiceBench's
            ``prompt``/``reference`` are accepted too), e.g. from :func:`load_items`.
        kind: "auto" (per item: letter references are multiple choice, others math),
            "choice" or "math".
        temperature: 0 decodes greedily (the default for evaluation).

    Returns:
        ``{"name", "n", "kinds": {kind: count}, "text": {"accuracy", "correct", "unparsed"},
        "audio": {...}, "gap": text accuracy − audio accuracy of this model, "items": [...]}``
        (``items`` holds each response and verdict when ``keep_responses``; ``ids`` each
        modality's generated ``(ids, mask)`` per batch of ``batch_size`` when ``keep_ids``).
    """
    if kind not in ANSWER_KINDS:
        raise ValueError(f"kind must be one of {ANSWER_KINDS}, got {kind!r}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to evaluate")
    bad = [m for m in modalities if m not in ("text", "audio")]
    if bad or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of ('text', 'audio'), got "
                         f"{list(modalities)}")
    records = [normalize_record(r, i) for i, r in enumerate(dataset)]
    kinds = [reference_kind(r["answer"], choices) if kind == "auto" else kind for r in records]
    result: dict[str, Any] = {
        "name": name,
        "n": len(records),
        "kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
    }
    items = [{"id": r["id"], "answer": r["answer"], "kind": k} for r, k in zip(records, kinds)]
    ids: dict[str, list] = {}
    for modality in modalities:
        responses = generate_answers(
            adapter, records, modality, batch_size=batch_size, max_new_tokens=max_new_tokens,
            temperature=temperature, instruction=instruction, progress=progress,
            desc=f"{name}: {modality}", token_ids=ids.setdefault(modality, []),
        )
        scored = [
            score_response(resp, r["answer"], k, choices=choices)
            for resp, r, k in zip(responses, records, kinds)
        ]
        result[modality] = _modality_summary([c for c, _ in scored], [p for _, p in scored])
        for item, resp, (ok, _) in zip(items, responses, scored):
            item[f"{modality}_response"] = resp
            item[f"{modality}_correct"] = ok
    if "text" in result and "audio" in result:
        result["gap"] = result["text"]["accuracy"] - result["audio"]["accuracy"]
    if keep_responses:
        result["items"] = items
    if keep_ids:
        result["ids"] = ids
    return result


# --------------------------------------------------------------------------------------------
# The paper's gap metrics
# --------------------------------------------------------------------------------------------


def _benchmarks(run: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A run is one :func:`evaluate` result or ``{"benchmarks": {name: result}}``."""
    if "benchmarks" in run:
        return dict(run["benchmarks"])
    if "audio" in run or "text" in run:
        return {run.get("name", "benchmark"): run}
    raise ValueError("a run must be an evaluate() result or a dict with a 'benchmarks' key")


def _runs(value) -> list[Mapping[str, Any]]:
    """One run, or a list of runs (seeds) of the same method."""
    runs = list(value) if isinstance(value, (list, tuple)) else [value]
    if not runs:
        raise ValueError("a method needs at least one run")
    return runs


def modality_gaps(run: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, float]:
    """Δ_b = Acc_text_b(base) − Acc_audio_b(run) for every benchmark b of ``base``."""
    base_b, run_b = _benchmarks(base), _benchmarks(run)
    missing = [b for b in base_b if b not in run_b]
    if missing:
        raise ValueError(f"run lacks benchmark(s) {missing} that the base run has")
    return {b: base_b[b]["text"]["accuracy"] - run_b[b]["audio"]["accuracy"] for b in base_b}


def gap_reduction(mean_delta_method: float, mean_delta_base: float) -> float:
    """The paper's ``1 − mean Δ_method / mean Δ_base``; NaN when the base has no gap to close
    (Δ_base <= 0: a negative base gap would flip the sign, and a zero one divide by zero)."""
    if not mean_delta_base > 0:
        return float("nan")
    return 1.0 - mean_delta_method / mean_delta_base


def gap_summary(
    results_by_method: Mapping[str, Any], base: str | Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per method: accuracy per modality and benchmark, Δ per benchmark, mean Δ and the gap
    reduction against ``base``, each as a mean and a standard deviation over the method's runs.

    Args:
        results_by_method: ``{method: run or [runs over seeds]}``.
        base: the name of the base method in ``results_by_method``, or its run (single).
    """
    if isinstance(base, str):
        if base not in results_by_method:
            raise ValueError(f"base {base!r} is not one of the methods {list(results_by_method)}")
        base_runs = _runs(results_by_method[base])
    else:
        base_runs = [base]
    if len(base_runs) != 1:
        raise ValueError("the base must be a single run (its text accuracy is the fixed target)")
    base_run = base_runs[0]
    base_mean_delta = _mean(modality_gaps(base_run, base_run).values())
    summary: dict[str, dict[str, Any]] = {}
    for method, value in results_by_method.items():
        per_seed = []
        for run in _runs(value):
            deltas = modality_gaps(run, base_run)
            mean_delta = _mean(deltas.values())
            benches = _benchmarks(run)
            per_seed.append({
                "text": {b: benches[b]["text"]["accuracy"] for b in deltas if "text" in benches[b]},
                "audio": {b: benches[b]["audio"]["accuracy"] for b in deltas},
                "delta": deltas,
                "mean_delta": mean_delta,
                "reduction": gap_reduction(mean_delta, base_mean_delta),
            })  # fmt: skip
        summary[method] = _aggregate(per_seed)
    return summary


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _std(values) -> float:
    values = list(values)
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(per_seed), "per_run": per_seed}
    for key in ("text", "audio", "delta"):
        names = per_seed[0][key].keys()
        out[key] = {b: _mean(s[key][b] for s in per_seed) for b in names}
        out[f"{key}_std"] = {b: _std(s[key][b] for s in per_seed) for b in names}
    for key in ("mean_delta", "reduction"):
        out[key] = _mean(s[key] for s in per_seed)
        out[f"{key}_std"] = _std(s[key] for s in per_seed)
    return out


def _pct(mean: float, std: float | None = None, *, sign: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    s = f"{100 * mean:+.1f}" if sign else f"{100 * mean:.1f}"
    return f"{s} ± {100 * std:.1f}" if std else s


def gap_table(results_by_method: Mapping[str, Any], base: str | Mapping[str, Any]) -> str:
    """The paper's Table 1 as markdown: per benchmark the text and audio accuracy and
    Δ = Acc_text(base) − Acc_audio(method) with its change against the base (↓ closes the gap),
    then the mean Δ and the gap reduction. Percentages; ``mean ± std`` over seeds."""
    summary = gap_summary(results_by_method, base)
    base_name = base if isinstance(base, str) else None
    base_row = summary[base_name] if base_name else gap_summary({"base": base}, base)["base"]
    benches = list(base_row["delta"])
    header = ["Method"]
    for b in benches:
        header += [f"{b} text acc", f"{b} audio acc", f"{b} Δ"]
    header += ["mean Δ", "gap reduction"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in summary.items():
        cells = [method]
        for b in benches:
            cells.append(_pct(row["text"].get(b), row["text_std"].get(b)) if b in row["text"]
                         else "n/a")
            cells.append(_pct(row["audio"][b], row["audio_std"][b]))
            delta = _pct(row["delta"][b], row["delta_std"][b])
            change = row["delta"][b] - base_row["delta"][b]
            if method != base_name and abs(change) > 1e-12:
                delta += f" ({'↓' if change < 0 else '↑'}{100 * abs(change):.1f})"
            cells.append(delta)
        cells.append(_pct(row["mean_delta"], row["mean_delta_std"]))
        cells.append("—" if method == base_name else _pct(row["reduction"], row["reduction_std"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def training_info(model: str | Path) -> dict[str, Any] | None:
    """What ``cord train`` trained in a saved model folder (its ``training_info.json``), or
    None (a base model, ``tiny``, or a folder saved elsewhere)."""
    path = Path(model) / TRAINING_INFO_NAME
    if str(model) == "tiny" or not path.is_file():
        return None
    return json.loads(path.read_text())


def describe_training(info: Mapping[str, Any]) -> str:
    """``trained 2,112 of 224,896 parameters (0.9%, trainable=projector, objective=alarm)``."""
    trained, total = int(info["trained_parameters"]), int(info["total_parameters"])
    share = 100 * trained / total if total else math.nan
    return (f"trained {trained:,} of {total:,} parameters ({share:.1f}%, "
            f"trainable={info.get('trainable', '?')}, objective={info.get('objective', '?')})")


def run_checked(args: argparse.Namespace, data: Mapping[str, str]) -> int:
    """``cord eval`` once :func:`cord.eval.evaluate_cli.check_args` has checked ``args`` and
    given the benchmarks ``data`` (name -> path)."""
    device = resolve_device(args.device)  # a CUDA device that is not there fails here
    adapter = build_adapter(args.model, system_prompt=args.system_prompt,
                            long_audio=args.long_audio, device=device)
    print(f"cord eval: {args.model} on {device}")
    trained = training_info(args.model)
    if trained is not None:
        print(f"{args.model}: {describe_training(trained)}")
    sr = int(getattr(adapter, "sampling_rate", 16_000))
    benchmarks = {}
    for name, path in data.items():
        items = load_items(path, limit=args.limit, sampling_rate=sr,
                           audio_limit=adapter.audio_limit())
        benchmarks[name] = evaluate(
            adapter, items, name=name, kind=args.kind, choices=args.choices,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, instruction=args.instruction,
        )
        r = benchmarks[name]
        print(f"{name}: n={r['n']} text {100 * r['text']['accuracy']:.1f}% "
              f"(unparsed {100 * r['text']['unparsed']:.1f}%), audio "
              f"{100 * r['audio']['accuracy']:.1f}% (unparsed {100 * r['audio']['unparsed']:.1f}%)")
    method = args.name or args.model
    run_result = {"method": method, "model": args.model, "benchmarks": benchmarks}
    if trained is not None:
        run_result["training"] = trained
    methods: dict[str, Any] = {method: run_result}
    base_name = method
    if args.base:
        base_run = json.loads(Path(args.base).read_text())
        base_name = base_run.get("method", "base")
        if base_name == method:
            base_name = f"{base_name} (base)"
        methods = {base_name: base_run, method: run_result}
    summary = gap_summary(methods, base_name)
    run_result["gap"] = summary[method]
    table = gap_table(methods, base_name)
    Path(args.output).write_text(json.dumps(run_result, indent=2))
    print(table)
    if args.base:
        print(f"gap reduction: {_pct(summary[method]['reduction'])}%")
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(f"wrote {args.output}")
    return 0
