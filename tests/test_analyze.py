"""cord analyze on a hand-made rollouts file: statistics by hand, the PNGs, and the KL source."""

from __future__ import annotations

import json
import math
from argparse import Namespace

import pytest
import torch

from cord.eval.analyze import (
    Rollout,
    kl_statistics,
    load_rollouts,
    pearson_r,
    pick_rollout,
    token_kl,
)
from cord.eval.analyze_cli import run

# Two rollouts, 5 + 3 tokens. All KL values: 0.01 0.5 0.02 0.03 2.0 | 0.04 1.0 0.05
ROLLOUTS = [
    {"tokens": ["so", " the", " answer", " is", " 9"], "kl": [0.01, 0.5, 0.02, 0.03, 2.0],
     "correct": False, "prompt": "what is seven plus two"},
    {"tokens": ["so", " answer", " 9"], "kl": [0.04, 1.0, 0.05], "correct": True},
]


@pytest.fixture
def rollouts_file(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROLLOUTS) + "\n")
    return path


def test_statistics_by_hand(rollouts_file):
    stats = kl_statistics(load_rollouts(rollouts_file))
    assert stats["n_tokens"] == 8 and stats["n_rollouts"] == 2
    # Sorted: .01 .02 .03 .04 .05 .5 1 2; the 80th percentile (linear) sits at rank 0.8*7 = 5.6,
    # i.e. 0.5 + 0.6 * (1.0 - 0.5) = 0.8.
    assert stats["threshold"] == pytest.approx(0.8)
    assert stats["high_fraction"] == pytest.approx(2 / 8)  # 1.0 and 2.0
    assert dict(map(tuple, stats["high_tokens"])) == {" 9": 1, " answer": 1}
    assert dict(map(tuple, stats["low_tokens"]))["so"] == 2
    # Pearson r of position (0..4, 0..2) against KL, worked out by hand.
    x = [0, 1, 2, 3, 4, 0, 1, 2]
    y = [0.01, 0.5, 0.02, 0.03, 2.0, 0.04, 1.0, 0.05]
    mx, my = sum(x) / 8, sum(y) / 8
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    r = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert stats["pearson_r_position"] == pytest.approx(r)
    assert stats["mean_kl_correct"] == pytest.approx((0.04 + 1.0 + 0.05) / 3)
    assert stats["mean_kl_incorrect"] == pytest.approx(2.56 / 5)


def test_pearson_r_extremes():
    assert pearson_r([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson_r([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert math.isnan(pearson_r([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError, match="same length"):
        pearson_r([1, 2], [1, 2, 3])


def test_cli_writes_the_figures(rollouts_file, tmp_path, capsys):
    out = tmp_path / "figs"
    assert run(Namespace(rollouts=str(rollouts_file), model=None, output_dir=str(out),
                         percentile=80.0)) == 0
    for name in ("kl_distribution.png", "kl_tokens.png", "kl_rollout.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    stats = json.loads((out / "kl_stats.json").read_text())
    assert stats["threshold"] == pytest.approx(0.8)
    assert stats["drawn_rollout"] == 0  # the (longest) incorrect rollout is the one drawn
    assert "Pearson r" in capsys.readouterr().out


def test_bad_rollouts(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        Rollout(tokens=["a", "b"], kl=[0.1])
    with pytest.raises(ValueError, match="non-negative"):
        Rollout(tokens=["a"], kl=[-1.0])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"tokens": ["a"]}]))
    with pytest.raises(ValueError, match="'kl'"):
        load_rollouts(bad)
    with pytest.raises(ValueError, match="no tokens"):
        kl_statistics([Rollout(tokens=[], kl=[])])
    with pytest.raises(ValueError, match="does not exist"):
        load_rollouts(tmp_path / "missing.jsonl")
    assert pick_rollout([Rollout(["a"], [0.1]), Rollout(["a", "b"], [0.1, 0.2])]) == 1


def test_token_kl_is_reverse_kl_and_masked():
    torch.manual_seed(0)
    s, u = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    d = token_kl(s, u, mask)
    p, logq = s.log_softmax(-1), u.log_softmax(-1)
    ref = (p.exp() * (p - logq)).sum(-1)
    assert torch.allclose(d[mask], ref[mask], atol=1e-5)
    assert (d[~mask] == 0).all()
