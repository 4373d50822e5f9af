"""The drop-in recipes under examples/: TRL's GKDTrainer with cord_kernels.jsd as its loss, and
a plain-PyTorch on-policy distillation step between two different models."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import rel_err

from cord_kernels import jsd

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
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
