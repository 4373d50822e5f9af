"""grpo_loss against hand-worked examples of paper eqs. 8-10."""

from __future__ import annotations

import pytest
import torch

from cord_kernels import GRPOLoss, grpo_loss


def test_hand_worked_group_of_four():
    # One prompt, N=4, rewards [1, 0, 0, 1] -> mean 0.5, A = [.5, -.5, -.5, .5].
    lp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0], [-3.0, -1.0], [-1.0, -1.0]],
                      requires_grad=True)
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, True]])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = grpo_loss(lp, mask, rewards, group_size=4)
    # seq log-probs: [-3, -0.5, -4, -2]; L = -(1/4)(.5*-3 - .5*-.5 - .5*-4 + .5*-2) = 0.0625
    assert loss.item() == pytest.approx(-(0.5 * -3 - 0.5 * -0.5 - 0.5 * -4 + 0.5 * -2) / 4)
    loss.backward()
    expect = torch.tensor([[-0.125, -0.125], [0.125, 0.0], [0.125, 0.125], [-0.125, -0.125]])
    torch.testing.assert_close(lp.grad, expect)


def test_groups_are_consecutive_rows_and_averaged_over_prompts():
    lp = torch.tensor([[-1.0], [-2.0], [-1.0], [-4.0]])
    mask = torch.ones(4, 1, dtype=torch.bool)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])  # group 2 all correct -> zero advantage
    loss = grpo_loss(lp, mask, rewards, group_size=2)
    assert loss.item() == pytest.approx(-(0.5 * -1 + -0.5 * -2) / 4)


def test_unjudged_rewards_are_excluded():
    lp = torch.tensor([[-1.0], [-2.0], [-3.0]])
    mask = torch.ones(3, 1, dtype=torch.bool)
    rewards = torch.tensor([1.0, float("nan"), 0.0])  # mean over judged = 0.5
    loss = grpo_loss(lp, mask, rewards, group_size=3)
    assert loss.item() == pytest.approx(-(0.5 * -1 + -0.5 * -3) / 3)


def test_uniform_rewards_give_zero_loss_and_gradient():
    lp = torch.randn(8, 5, requires_grad=True)
    loss = grpo_loss(lp, torch.ones(8, 5, dtype=torch.bool), torch.ones(8), group_size=4)
    loss.backward()
    assert loss.item() == 0.0 and (lp.grad == 0).all()


def test_module_and_int_rewards():
    lp = torch.randn(4, 3)
    mask = torch.ones(4, 3, dtype=torch.bool)
    a = GRPOLoss(group_size=2)(lp, mask, torch.tensor([1, 0, 0, 1]))
    b = grpo_loss(lp, mask, torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=2)
    torch.testing.assert_close(a, b)


def test_bad_input():
    lp = torch.randn(6, 3)
    mask = torch.ones(6, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="group_size"):
        grpo_loss(lp, mask, torch.ones(6), group_size=4)
    with pytest.raises(ValueError, match="rewards"):
        grpo_loss(lp, mask, torch.ones(5), group_size=3)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(lp, mask[:, :2], torch.ones(6), group_size=3)
    with pytest.raises(ValueError, match="group_size"):
        grpo_loss(lp, mask, torch.ones(6), group_size=0)
