"""The model families of ``cord.models.families``, each end to end on a tiny random-init
checkpoint built and saved here (nothing downloaded). Test ids carry the family's name, so
``pytest -k voxtral`` runs one family's tests.

Per family: loading through the registry from a saved folder; the text teacher's prompt is the
same chat template with no audio; ``cord train`` with cord (fused-linear path, gradient
checkpointing), grpo_opd, sft, fkl and alarm; ``trainable=audio|projector`` trains exactly the
family's modules; ``cord eval`` and ``cord analyze``; long audio (an error naming the clip, or the
family's own chunking, where every GRPO copy of a chunked clip gets the single clip's logits);
the audio encoder running once per distinct clip. Then the loader's refusals: an unknown
``model_type``, missing weights, one family's weights under another's config, and hub ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_paired_dataset

from cord.cli import main
from cord.config import CordConfig
from cord.models.adapter import unwrap_model
from cord.models.families import UnknownFamilyError, build_adapter, get_family
from cord.models.hub import resolve_model_path
from cord.train.trainer import train

FAMILIES = ["qwen2_audio", "qwen2_5_omni", "qwen3_omni_moe", "voxtral", "audioflamingo3"]
#: What each family's chat template puts in the user turn for one audio (before expansion).
AUDIO_PLACEHOLDER = {
    "qwen2_audio": "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n",
    "qwen2_5_omni": "<|audio_bos|><|AUDIO|><|audio_eos|>",
    "qwen3_omni_moe": "<|audio_bos|><|AUDIO|><|audio_eos|>",
    "voxtral": "[BEGIN_AUDIO][AUDIO]",
    "audioflamingo3": "<sound>",
}
QUESTION = "What is 3 + 4?"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> folder of its saved tiny checkpoint (built once per module)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for name in FAMILIES:
        model, processor = get_family(name).build_tiny(seed=0)
        path = root / name
        model.save_pretrained(path)
        processor.save_pretrained(path)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Paired arithmetic questions (tone audio) with their answers."""
    path = write_paired_dataset(tmp_path_factory.mktemp("data"))
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r in rows:
        a, b = (int(t) for t in r["text"].removeprefix("What is ").rstrip("?").split(" + "))
        r["answer"] = str(a + b)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _waves(seconds, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in seconds]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_through_the_registry(family, saved):
    torch.set_num_threads(1)
    adapter = build_adapter(saved[family])
    module = get_family(family)
    assert type(adapter) is module.Adapter and adapter.family == family
    reference, _ = module.build_tiny(seed=0)
    for (name, p), (_, q) in zip(unwrap_model(adapter.model).state_dict().items(),
                                 reference.state_dict().items(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # FSDP wraps the family's own transformer blocks (both paths read _no_split_modules).
    from cord.train.distributed import block_modules

    blocks = {type(m).__name__ for m in block_modules(adapter.model)}
    assert blocks and blocks <= set(module.BLOCKS), blocks

    # The teacher's prompt is the same template with the question where the audio was.
    audio = adapter._render(adapter.audio_message(None))
    text = adapter._render(adapter.text_message(QUESTION, None))
    assert text == audio.replace(AUDIO_PLACEHOLDER[family], QUESTION, 1)
    x_t = adapter.text_prompts([QUESTION])
    assert adapter.tokenizer.decode(x_t.input_ids[0]) == text
    assert x_t.model_kwargs == {}
    assert AUDIO_PLACEHOLDER[family] not in text


@pytest.mark.parametrize("family", FAMILIES)
def test_family_scores_what_it_samples_on_every_path(family, saved):
    """Greedy generation agrees with the scored logits; the fused-linear path's hidden states
    through the family's LM head give the same logits."""
    torch.set_num_threads(1)
    adapter = build_adapter(saved[family])
    x_a = adapter.audio_prompts(_waves([2.0, 3.0]), sampling_rate=16000)
    ids = adapter.generate(x_a, max_new_tokens=4, temperature=0)
    mask = torch.ones_like(ids, dtype=torch.bool)
    logits = adapter.completion_logits(x_a, ids, mask)
    assert torch.equal(logits.argmax(-1), ids)
    hidden, weight, bias = adapter.completion_hidden(x_a, ids, mask)
    head = adapter.lm_head(unwrap_model(adapter.model))
    assert weight is head.weight
    fused = hidden @ weight.T + (0 if bias is None else bias)
    torch.testing.assert_close(fused, logits, rtol=1e-5, atol=1e-5)


def _trained(out: Path) -> dict[str, torch.Tensor]:
    """The weights a run saved, reloaded through the registry (so the saved model loads)."""
    return unwrap_model(build_adapter(out / "final").model).state_dict()


OBJECTIVES = {
    # cord: the fused-linear path and gradient checkpointing too
    "cord": ["objective=cord", "use_fused_linear=true", "gradient_checkpointing=true",
             "num_generations=2"],
    "grpo_opd": ["objective=grpo_opd", "num_generations=2"],
    "sft": ["objective=sft"],
    "fkl": ["objective=fkl"],
    "alarm": ["objective=alarm"],
}


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_with_each_objective(family, objective, saved, data, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    config = CordConfig.from_yaml(None, [
        f"model={saved[family]}", f"dataset={data}", f"output_dir={out}", "max_steps=1",
        "max_completion_length=3", "learning_rate=1e-2", "report_to=none", "logging_steps=1",
        "disable_tqdm=true", "seed=0", *OBJECTIVES[objective]])
    metrics = train(config)
    assert np.isfinite(metrics["loss"]) and metrics["weights_changed"] > 0
    weights = _trained(out)
    reference = get_family(family).build_tiny(seed=0)[0].state_dict()
    assert any(not torch.equal(weights[k], reference[k]) for k in reference)


@pytest.mark.parametrize("group", ["audio", "projector"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_trainable_groups_name_its_modules(family, group, saved, data, tmp_path):
    torch.set_num_threads(1)
    adapter = build_adapter(saved[family])
    chosen = {n for n, _ in adapter.parameter_group(group)}
    expected = {"audio": ("audio_tower", "multi_modal_projector"),
                "projector": ("multi_modal_projector", "audio_tower.proj")}[group]
    assert chosen and all(any(e in n for e in expected) for n in chosen), sorted(chosen)[:5]
    out = tmp_path / "run"
    train(CordConfig.from_yaml(None, [
        f"model={saved[family]}", f"dataset={data}", f"output_dir={out}", "max_steps=1",
        "objective=opd", f"trainable={group}", "max_completion_length=3",
        "learning_rate=1e-2", "report_to=none", "disable_tqdm=true", "seed=0"]))
    weights = _trained(out)
    before = get_family(family).build_tiny(seed=0)[0].state_dict()
    changed = {k for k in before if not torch.equal(weights[k], before[k])}
    assert changed and changed <= chosen, sorted(changed - chosen)[:5]
    if group == "projector":  # every projector weight gets a gradient
        assert changed == {n for n in chosen if n in before}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_cord_eval_and_analyze(family, saved, data, tmp_path):
    torch.set_num_threads(1)
    code = main(["eval", "--model", str(saved[family]), "--data", str(data), "--limit", "2",
                 "--max-new-tokens", "3", "--device", "cpu", "--output",
                 str(tmp_path / "eval.json")])
    assert code == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results
    code = main(["analyze", "--model", str(saved[family]), "--data", str(data), "--limit", "2",
                 "--max-new-tokens", "3", "--device", "cpu", "--output-dir",
                 str(tmp_path / "analysis")])
    assert code == 0 and list((tmp_path / "analysis").glob("*.png"))


# -- long audio ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_family_long_audio_errors_or_chunks(family, saved):
    """Every tiny family has an 8 s window (Qwen3-Omni: none, its encoder takes any length).
    A 19 s clip is an error naming it by default; with long_audio=chunk every GRPO copy of it
    gets exactly the logits of the clip scored alone."""
    torch.set_num_threads(1)
    short, long = _waves([2.0, 19.0])
    adapter = build_adapter(saved[family])
    if adapter.window_seconds is not None:
        with pytest.raises(ValueError, match=r"item 'q7'.*19\.0 s long.*8 s window"):
            adapter.audio_prompts([short, long], sampling_rate=16000, names=["item 'q1'",
                                                                              "item 'q7'"])
    chunked = build_adapter(saved[family], long_audio="chunk")
    x_a = chunked.audio_prompts([short, long], sampling_rate=16000)
    group = x_a.repeat_interleave(4)
    ids = torch.randint(10, 200, (1, 6), generator=torch.Generator().manual_seed(0))
    ids = ids.repeat(8, 1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    logits = chunked.completion_logits(group, ids, mask)
    alone = chunked.completion_logits(chunked.audio_prompts([long], sampling_rate=16000),
                                      ids[:1], mask[:1])
    for copy in range(4, 8):
        torch.testing.assert_close(logits[copy:copy + 1], alone, rtol=1e-5, atol=1e-5)
    # and generation takes the windows with their prompt (sampled copies have the right rows)
    out = chunked.generate(x_a, max_new_tokens=2, temperature=1.0, num_return_sequences=3)
    assert out.shape[0] == 6


# -- one encoder pass per clip ------------------------------------------------------------------


def _first_leaf(module, kinds):
    return next(m for m in module.modules() if isinstance(m, kinds))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_audio_encoder_runs_once_per_prompt(family, saved):
    """A GRPO group of N=4 copies of 2 prompts: the encoder's first layer and the projector's
    see the rows of 2 clips, not 8, when generating and when scoring; values are unchanged."""
    torch.set_num_threads(1)
    adapter = build_adapter(saved[family])
    bare = unwrap_model(adapter.model)
    tower = next(m for n, m in bare.named_modules() if n.endswith("audio_tower"))
    conv = _first_leaf(tower, (torch.nn.Conv1d, torch.nn.Conv2d))
    projector = next((m for n, m in bare.named_modules() if n.endswith("multi_modal_projector")),
                     None)
    last = _first_leaf(projector, torch.nn.Linear) if projector is not None else \
        [m for m in tower.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen = {"encoder": [], "projector": []}
    hooks = [conv.register_forward_hook(lambda m, i, o: seen["encoder"].append(i[0].shape[0])),
             last.register_forward_hook(lambda m, i, o: seen["projector"].append(
                 i[0].reshape(-1, i[0].shape[-1]).shape[0]))]
    x_a = adapter.audio_prompts(_waves([2.0, 3.0]), sampling_rate=16000)
    try:
        counts = {}
        for share in (True, False):
            adapter.share_audio_encoder = share
            for v in seen.values():
                v.clear()
            torch.manual_seed(0)
            ids = adapter.generate(x_a, max_new_tokens=3, temperature=1.0,
                                   num_return_sequences=4)
            group = x_a.repeat_interleave(4)
            logits = adapter.completion_logits(group, ids, torch.ones_like(ids, dtype=torch.bool))
            counts[share] = ({k: list(v) for k, v in seen.items()}, ids, logits)
    finally:
        for h in hooks:
            h.remove()
        adapter.share_audio_encoder = True
    (shared, ids_s, logits_s), (alone, ids_a, logits_a) = counts[True], counts[False]
    assert len(shared["encoder"]) == len(alone["encoder"]) == 2  # generate + scoring
    for part in ("encoder", "projector"):
        assert [4 * n for n in shared[part]] == alone[part], (part, shared, alone)
    assert torch.equal(ids_s, ids_a)
    torch.testing.assert_close(logits_s, logits_a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_audio_encoder_runs_twice_per_prompt_in_a_cord_step(family, saved, data,
                                                                   tmp_path):
    """One cord step (token-loss rollout + a GRPO group of N=4, 2 prompts): the encoder's
    first layer runs once on the 2 clips to sample (both rollouts) and once to score (both
    losses), instead of 2 + 2 + 8 + 8 rows; the step's loss is unchanged."""
    torch.set_num_threads(1)
    seen, losses = {}, {}
    for share in (True, False):
        adapter = build_adapter(saved[family])
        adapter.share_audio_encoder = share
        bare = unwrap_model(adapter.model)
        tower = next(m for n, m in bare.named_modules() if n.endswith("audio_tower"))
        conv = _first_leaf(tower, (torch.nn.Conv1d, torch.nn.Conv2d))
        rows = seen[share] = []
        conv.register_forward_hook(lambda m, i, o, rows=rows: rows.append(i[0].shape[0]))
        losses[share] = train(CordConfig.from_yaml(None, [
            f"dataset={data}", f"output_dir={tmp_path / str(share)}", "max_steps=1",
            "objective=cord", "num_generations=4", "per_device_train_batch_size=2",
            "max_completion_length=3", "report_to=none", "disable_tqdm=true", "seed=0"]),
            adapter=adapter)["loss"]
    r = seen[True][0]
    assert seen[True] == [r, r] and seen[False] == [r, r, 4 * r, 4 * r], seen
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_encoder_reuse_step_time_qwen2_audio(data, tmp_path, capsys):
    """The step time of a GRPO step (N=8) with and without the shared encoder pass on the
    tiny Qwen2-Audio with a bigger encoder (printed with -s; the shared one is not slower)."""
    torch.set_num_threads(1)
    from cord.models.adapter import Qwen2AudioAdapter
    from cord.models.tiny import build_tiny_qwen2_audio

    times = {}
    for share in (False, True):
        model, processor = build_tiny_qwen2_audio(seed=0, audio_d_model=128, audio_layers=4,
                                                  audio_heads=4)
        adapter = Qwen2AudioAdapter(model, processor)
        adapter.share_audio_encoder = share
        out = tmp_path / f"share{share}"
        train(CordConfig.from_yaml(None, [
            f"dataset={data}", f"output_dir={out}", "max_steps=3", "objective=grpo",
            "num_generations=8", "max_completion_length=4", "report_to=none",
            "logging_steps=1", "disable_tqdm=true", "seed=0"]), adapter=adapter)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        times[share] = float(np.median([r["step_seconds"] for r in rows]))
    with capsys.disabled():
        print(f"\nGRPO step (N=8), tiny Qwen2-Audio with a 4-layer d=128 encoder: "
              f"{times[False]:.3f} s without encoder reuse, {times[True]:.3f} s with it")
    assert times[True] < times[False] * 1.2


# -- refusals -----------------------------------------------------------------------------------


def test_unknown_model_type_is_one_line_exit_2(saved, tmp_path, capsys):
    bad = tmp_path / "llama"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UnknownFamilyError, match="'llama'.*qwen2_audio.*docs/models.md"):
        build_adapter(bad)
    code = main(["train", f"model={bad}", "report_to=none", f"output_dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    for name in ("'llama'", "voxtral", "audioflamingo3", "docs/models.md"):
        assert name in err


def test_missing_weights_are_an_error_naming_them_qwen2_audio(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in saved["qwen2_audio"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "model.safetensors")
    kept = {k: v for k, v in weights.items() if "multi_modal_projector" not in k}
    assert len(kept) < len(weights)
    save_file(kept, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError,
                       match=r"newly initialised: .*multi_modal_projector\.linear\.weight"):
        build_adapter(broken)


@pytest.mark.parametrize("wrong", ["audioflamingo3", "qwen2_audio"])
def test_one_family_under_another_fails_loudly_voxtral(wrong, saved, tmp_path):
    """Voxtral's weights under another family's config.json: refused, not half-loaded."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in saved["voxtral"].iterdir():
        (mixed / f.name).write_bytes(f.read_bytes())
    (mixed / "config.json").write_bytes((saved[wrong] / "config.json").read_bytes())
    with pytest.raises(ValueError, match="newly initialised|another shape"):
        build_adapter(mixed)


def _hub_cache(root: Path, repo: str, source: Path) -> None:
    """``source`` placed as the snapshot of ``repo`` in a Hugging Face cache layout."""
    repo_dir = root / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)


def test_hub_id_loads_from_the_offline_cache_audioflamingo3(saved, tmp_path, monkeypatch):
    _hub_cache(tmp_path / "hf", "tiny-org/af3-tiny", saved["audioflamingo3"])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter = build_adapter("tiny-org/af3-tiny")
    assert adapter.family == "audioflamingo3"
    CordConfig(model="tiny-org/af3-tiny").check_paths(dataset=False)  # what cord train checks
    with pytest.raises(ValueError, match="nothing is cached.*hf download tiny-org/missing"):
        resolve_model_path("tiny-org/missing")
    with pytest.raises(ValueError, match="no such directory"):
        resolve_model_path("./not/here/at/all")


def test_missing_hub_id_is_one_line_exit_2_from_cord_train(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["train", "model=Qwen/Qwen2-Audio-7B-Instruct", "report_to=none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "nothing is cached" in err and "hf download Qwen/Qwen2-Audio-7B-Instruct" in err


def test_omni_full_checkpoint_loads_the_thinker_without_a_talker_qwen2_5_omni(tmp_path):
    """A full Qwen2.5-Omni checkpoint (model_type qwen2_5_omni) loads its thinker only; an
    image token in a prompt is refused."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    module = get_family("qwen2_5_omni")
    thinker, processor = module.build_tiny(seed=0)
    config = Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(),
                               enable_audio_output=False)
    full = Qwen2_5OmniForConditionalGeneration(config)
    full.thinker.load_state_dict(thinker.state_dict())
    full.save_pretrained(tmp_path / "full")
    processor.save_pretrained(tmp_path / "full")
    adapter = build_adapter(tmp_path / "full")
    thinker_class = type(unwrap_model(adapter.model)).__name__
    assert thinker_class == "Qwen2_5OmniThinkerForConditionalGeneration"
    with pytest.raises(ValueError, match="image or video token"):
        adapter.text_prompts(["look <|IMAGE|> here"])



# -- FSDP2 on two processes, every family ------------------------------------------------------

# Each rank writes its block classes to its own file (blocks-<rank>.json), never to the pipe
# both ranks share.
FSDP2_SCRIPT = """
import json, os, sys
from cord.cli import main
from cord.models.families import build_adapter
from cord.train.distributed import block_modules

model = sys.argv[1]
blocks = sorted({type(m).__name__ for m in block_modules(build_adapter(model).model)})
with open(f"blocks-{os.environ['RANK']}.json", "w") as f:
    json.dump(blocks, f)
sys.exit(main(["train", f"model={model}", *sys.argv[2:]]))
"""


def test_fsdp2_two_processes_every_family(saved, data, tmp_path):
    """2-process (gloo) launches train every family with distributed=fsdp2, each block of
    the family's decoder (and encoder) layer classes its own unit; its losses match one
    process with the whole batch (greedy rollouts, prompts of equal length)."""
    from helpers import launch_two_cpu, logged

    torch.set_num_threads(1)
    options = [f"dataset={data}", "objective=cord", "cord_seq_weight=0", "judge=none",
               "temperature=0", "max_completion_length=4", "max_steps=2",
               "learning_rate=1e-3", "report_to=none", "logging_steps=1",
               "use_fused_linear=true", "disable_tqdm=true", "seed=0", "save_steps=0"]
    script = tmp_path / "fsdp2_family.py"
    script.write_text(FSDP2_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    for family in FAMILIES:  # one launch each: a process trains one model
        two, here = tmp_path / family / "two", tmp_path / family
        here.mkdir()
        proc = launch_two_cpu(root, here, [
            str(script), str(saved[family]), f"output_dir={two}", *options,
            "per_device_train_batch_size=1", "distributed=fsdp2"])
        assert proc.returncode == 0, proc.output
        assert "sharded over 2 process(es)" in proc.ranks[0]  # rank 0 prints it
        blocks = [json.loads((here / f"blocks-{rank}.json").read_text()) for rank in (0, 1)]
        assert blocks[0] == blocks[1], (family, blocks)
        assert blocks[0] and set(blocks[0]) <= set(get_family(family).BLOCKS), (family, blocks)
        one = tmp_path / family / "one"
        train(CordConfig.from_yaml(None, [f"model={saved[family]}", f"output_dir={one}",
                                          "per_device_train_batch_size=2", *options]))
        for key in ("loss", "grad_norm"):
            assert logged(two, key) == pytest.approx(logged(one, key), rel=1e-3), (family, key)


def test_softcapped_logits_are_refused_not_skipped_qwen2_audio(saved):
    """A model that softcaps its logits after the LM head (Gemma 3n) cannot be scored through
    the bypassed head (the softcap would be skipped): refused on both scoring paths."""
    adapter = build_adapter(saved["qwen2_audio"])
    x_t = adapter.text_prompts([QUESTION])
    ids = torch.tensor([[5, 6]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    adapter.completion_logits(x_t, ids, mask)  # fine without a softcap
    unwrap_model(adapter.model).config.get_text_config().final_logit_softcapping = 30.0
    for score in (adapter.completion_logits, adapter.completion_hidden):
        with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
            score(x_t, ids, mask)
