"""cord_weights against hand-worked examples of paper eqs. 4-6."""

from __future__ import annotations

import pytest
import torch

from cord_kernels import cord_weights


def _w(kl, mask, **kw):
    return cord_weights(torch.tensor(kl, dtype=torch.float32), torch.tensor(mask), **kw)


def test_hand_worked_top1():
    # T=3, positions w_pos = [2, 1.5, 1]; the top-1 D is position 2 -> alpha=2 there.
    w = _w([[0.1, 0.5, 0.3]], [[True, True, True]], top_k=1, alpha=2.0, beta=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 3.0, 1.0]]))


def test_hand_worked_five_tokens():
    # T=5, beta=3: w_pos = 3 - 2 (t-1)/4 = [3, 2.5, 2, 1.5, 1]; top-2 D at positions 4 and 1.
    w = _w([[0.9, 0.1, 0.2, 1.5, 0.0]], [[True] * 5], top_k=2, alpha=1.5, beta=3.0)
    expect = torch.tensor([[3 * 1.5, 2.5, 2.0, 1.5 * 1.5, 1.0]])
    torch.testing.assert_close(w, expect)


def test_ties_go_to_the_earlier_position():
    w = _w([[0.5, 0.5, 0.5, 0.5]], [[True] * 4], top_k=2, alpha=2.0, beta=1.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 2.0, 1.0, 1.0]]))


def test_right_and_left_padding_count_valid_positions_only():
    kl = [[0.3, 0.1, 0.2, 9.0, 9.0], [9.0, 9.0, 0.3, 0.1, 0.2]]
    mask = [[True, True, True, False, False], [False, False, True, True, True]]
    w = _w(kl, mask, top_k=1, alpha=2.0, beta=2.0)
    # Valid T=3 in both rows: w_pos = [2, 1.5, 1]; top-1 is the first valid token (0.3);
    # the large D at masked positions is ignored.
    expect = torch.tensor([[4.0, 1.5, 1.0, 0.0, 0.0], [0.0, 0.0, 4.0, 1.5, 1.0]])
    torch.testing.assert_close(w, expect)


def test_gaps_inside_the_mask():
    w = _w([[0.1, 7.0, 0.2, 0.3]], [[True, False, True, True]], top_k=1, alpha=2.0, beta=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.0, 1.5, 2.0]]))


def test_t_le_k_gives_alpha_everywhere_and_t1_gives_beta():
    w = _w([[0.1, 0.2, 0.3], [0.4, 0.0, 0.0]], [[True] * 3, [True, False, False]],
           top_k=20, alpha=2.0, beta=2.0)
    torch.testing.assert_close(w, torch.tensor([[4.0, 3.0, 2.0], [4.0, 0.0, 0.0]]))


def test_all_masked_sequence_and_top_k_zero():
    w = _w([[1.0, 2.0], [1.0, 2.0]], [[False, False], [True, True]], top_k=0, alpha=5.0,
           beta=1.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


def test_alpha_beta_one_is_uniform_opd():
    kl = torch.rand(3, 30)
    mask = torch.rand(3, 30) > 0.2
    w = cord_weights(kl, mask, alpha=1.0, beta=1.0)
    torch.testing.assert_close(w, mask.float())


def test_matches_a_loop_over_sequences(device):
    """The batched version against a direct transcription of eqs. 4-6."""
    g = torch.Generator().manual_seed(0)
    kl = torch.rand(6, 40, generator=g).round(decimals=1)  # rounding makes ties common
    mask = torch.rand(6, 40, generator=g) > 0.4
    mask[0] = False
    mask[1, 1:] = False
    K, a, b = 5, 2.0, 3.0
    w = cord_weights(kl.to(device), mask.to(device), top_k=K, alpha=a, beta=b).cpu()
    for i in range(6):
        pos = mask[i].nonzero().flatten().tolist()
        T = len(pos)
        top = sorted(range(T), key=lambda j: (-kl[i, pos[j]].item(), j))[:K]
        for j, p in enumerate(pos):
            w_pos = b if T == 1 else b - (b - 1) * j / (T - 1)
            assert w[i, p].item() == pytest.approx((a if j in top else 1.0) * w_pos)
        assert (w[i][~mask[i]] == 0).all()


def test_no_grad_and_dtype():
    kl = torch.rand(2, 4, dtype=torch.bfloat16, requires_grad=True)
    w = cord_weights(kl, torch.ones(2, 4, dtype=torch.bool))
    assert w.dtype == torch.float32 and not w.requires_grad


def test_integer_mask_accepted():
    w1 = cord_weights(torch.rand(2, 5), torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]]))
    assert (w1[0, [2, 4]] == 0).all() and (w1[1, 0] == 0)
