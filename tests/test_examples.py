"""The drop-in recipes under examples/: TRL's GKDTrainer with cord_kernels.jsd as its loss, and
a plain-PyTorch on-policy distillation step between two different models."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from helpers import rel_err

from cord_kernels import jsd

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    """The recipe as a module; examples/ is on sys.path, as when the recipe runs as a script
    (recipes import what they share from one another)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fresh_accelerate_state():
    """TRL's trainer sets accelerate's process-wide state (mixed precision among it); later
    tests build their own Accelerator, which refuses a state it did not set: reset it."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def test_gkd_trainer_loss_equals_trls(tmp_path, one_torch_thread, fresh_accelerate_state):
    pytest.importorskip("trl")
    gkd = _load("trl_gkd_jsd")
    trainer = gkd.build_trainer(str(tmp_path), steps=1)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    with torch.no_grad():
        s = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        u = trainer.teacher_model(input_ids=batch["input_ids"],
                                  attention_mask=batch["attention_mask"]).logits
    for beta in (0.0, 0.5, 1.0):
        trainer.beta = beta
        with torch.no_grad():
            ours = trainer.compute_loss(model, batch)
            ours_n = trainer.compute_loss(model, batch, num_items_in_batch=7)
        trl = gkd.GKDTrainer.generalized_jsd_loss(s[:, :-1], u[:, :-1],
                                                  labels=batch["labels"][:, 1:], beta=beta)
        trl_n = gkd.GKDTrainer.generalized_jsd_loss(s[:, :-1], u[:, :-1],
                                                    labels=batch["labels"][:, 1:], beta=beta,
                                                    num_items_in_batch=7)
        assert ours > 0 and rel_err(ours, trl) < 1e-5, (beta, ours, trl)
        assert rel_err(ours_n, trl_n) < 1e-5
    trainer.beta = 0.5
    trainer.train()  # one real optimizer step through TRL's loop
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))


def test_opd_step_between_two_different_models(one_torch_thread):
    opd = _load("opd_fused_distill")
    student, teacher = opd.tiny_lm(32, seed=0), opd.tiny_lm(48, seed=1)
    teacher.requires_grad_(False)
    before = copy.deepcopy(student)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    prompts = torch.randint(1, 97, (3, 5), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out = opd.distill_step(student, teacher, opt, prompts, max_new_tokens=6, jsd_beta=0.3)
    # The same loss on materialised logits, with the pre-step student.
    seq, P = out["sequences"], prompts.shape[1]
    with torch.no_grad():
        s = before(seq).logits[:, P - 1:-1]
        u = teacher(seq).logits[:, P - 1:-1]
    d = jsd(s, u, beta=0.3)
    w = out["weights"]
    assert teacher.config.hidden_size != student.config.hidden_size
    assert (w[out["mask"]] > 1).all() and not w.requires_grad
    assert rel_err(out["per_token"], d) < 1e-4
    assert rel_err(out["loss"], (w * d).sum() / seq.shape[0]) < 1e-4
    moved = (student.lm_head.weight - before.lm_head.weight).abs().max()
    assert moved > 0


def test_trl_server_batch_into_the_fused_sparse_loss(one_torch_thread):
    """A TRL-style server batch (topk_logprobs, topk_token_ids, -inf at unused slots) through
    the example's step equals TRL's own server loss (_add_tail_bucket, _jsd_divergence with
    beta 0, masked batchmean) on the student's materialised logits, and moves the student."""
    pytest.importorskip("trl")
    from trl.experimental.server_distillation import server_distillation_trainer as sd

    ex = _load("trl_server_sparse_distill")
    student, teacher = ex.tiny_lm(32, seed=0), ex.tiny_lm(48, seed=1)
    before = copy.deepcopy(student)
    ids = torch.randint(1, 97, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 3:] = False
    batch = ex.fake_server_batch(teacher, ids, 4, k=5, unused_from=3)
    assert (batch["topk_logprobs"][..., 3:] == float("-inf")).all()
    loss, per_token = ex.distill_step(student, torch.optim.SGD(student.parameters(), lr=0.1),
                                      ids, mask, batch, 4)
    with torch.no_grad():
        log_p = torch.log_softmax(before(ids).logits[:, 3:-1], dim=-1)
    lp, top = batch["topk_logprobs"], batch["topk_token_ids"]
    valid = lp > float("-inf")
    a = torch.where(valid, log_p.gather(-1, top), float("-inf"))
    a, support = sd._add_tail_bucket(a, valid)
    b, _ = sd._add_tail_bucket(torch.where(valid, lp, float("-inf")), valid)
    d = sd._jsd_divergence(a, b, 0.0, support).sum(-1)
    trl = sd.ServerDistillationTrainer._reduce_divergence_loss(d, completion_mask=mask)
    assert rel_err(loss, trl) < 1e-4 and rel_err(per_token[mask], d[mask]) < 1e-4
    assert (student.lm_head.weight - before.lm_head.weight).abs().max() > 0
