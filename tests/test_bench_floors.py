"""The floor arithmetic of ``bench.floors`` on cases small enough to check by hand, and the
committed H200 numbers recomputed on the valid rows (what docs/performance.md and the README
quote)."""

from __future__ import annotations

import pytest

from bench import floors


@pytest.mark.parametrize("loss, passes, elements", [
    ("reverse_kl", 2, 5),  # read s, u twice, write ds: 10 B/entry in bf16 (SPEC section 3)
    ("reverse_kl", 1, 3),  # the one-pass floor: 6 B/entry
    ("cord_token_loss", 2, 5),
    ("jsd", 2, 5),
    ("token_logprobs", 2, 3),  # one input
    ("sparse_teacher_loss[k8]", 2, 3),
    ("sparse_teacher_loss[k8]", 1, 2),
])
def test_entry_elements(loss, passes, elements):
    assert floors.entry_elements(loss, passes) == elements


def test_a_loss_given_the_mask_is_charged_only_the_gradient_write_on_masked_rows():
    # 4 rows, 3 valid, V = 10, bf16: valid rows 3 x 5 x 10 x 2 = 300 B, the masked row's
    # zero gradient 10 x 2 = 20 B; every row in full 4 x 100 = 400 B
    assert floors.logits_floor_bytes("cord_token_loss", 4, 3, 10, 2) == {"valid": 320,
                                                                         "all": 400}
    assert floors.logits_floor_bytes("token_logprobs", 4, 3, 10, 2) == {"valid": 200,
                                                                        "all": 240}
    # one pass: 3 x 3 x 10 x 2 + 20 = 200
    assert floors.logits_floor_bytes("cord_token_loss", 4, 3, 10, 2, passes=1)["valid"] == 200


def test_a_loss_without_a_mask_computes_every_row():
    for loss in ("reverse_kl", "jsd"):
        assert not floors.skips_masked_rows(loss)
        assert floors.logits_floor_bytes(loss, 4, 3, 10, 2) == {"valid": 400, "all": 400}
    assert floors.skips_masked_rows("sparse_teacher_loss[k1]")
    assert floors.skips_masked_rows("fused_linear_cord_token_loss")


def test_gemm_floor_counts_the_projected_rows():
    # 4 GEMMs of 2 x rows x H x V: 4 x 2 x 2 x 5 = 80 flops a row
    assert floors.gemm_floor_flops("fused_linear_cord_token_loss", 4, 3, 2, 5) == {
        "valid": 240, "all": 320}
    # the sparse teacher and log-probs project the student only: 3 GEMMs
    assert floors.gemm_floor_flops("fused_linear_sparse_teacher_loss[k8]", 4, 3, 2, 5) == {
        "valid": 180, "all": 240}
    assert floors.gemm_count("fused_linear_token_logprobs") == 3
    assert floors.gemm_count("fused_linear_distill_loss[jsd]", "fwd") == 2


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="n_valid must be in"):
        floors.logits_floor_bytes("cord_token_loss", 4, 5, 10, 2)
    with pytest.raises(ValueError, match="n_valid must be in"):
        floors.gemm_floor_flops("fused_linear_cord_token_loss", 4, -1, 2, 5)
    with pytest.raises(ValueError, match="passes must be 1 or 2"):
        floors.entry_elements("reverse_kl", 3)


def test_floor_columns_at_the_measured_rates():
    # 320 B at 0.32 MB/s is 1 ms: a 1 ms call is at 100% of its valid-rows floor, and at
    # 125% of the all-rows one (400 B)
    row = {"loss": "cord_token_loss", "n_tokens": 4, "n_valid": 3, "vocab": 10, "time_ms": 1.0}
    cols = floors.floor_columns(row, copy_gb_s=320e-9 * 1e3, gemm_tflops=None, elt=2)
    assert cols["pct_floor"] == pytest.approx(100.0)
    assert cols["pct_floor_all_rows"] == pytest.approx(125.0)
    assert cols["pct_one_pass_floor"] == pytest.approx(62.5)  # 200 B
    assert cols["floor_ms"] == pytest.approx(1.0)
    # 240 flops at 0.24 Gflop/s is 1 us: a 2 us call is at 50%, all rows (320 flops) 66.7%
    fused = {"loss": "fused_linear_cord_token_loss", "n_tokens": 4, "n_valid": 3, "vocab": 5,
             "hidden": 2, "time_ms": 2e-3}
    cols = floors.floor_columns(fused, copy_gb_s=None, gemm_tflops=240e-12 * 1e6, elt=2)
    assert cols["pct_floor"] == pytest.approx(50.0)
    assert cols["pct_floor_all_rows"] == pytest.approx(200 / 3)
    assert floors.floor_columns(fused, copy_gb_s=1.0, gemm_tflops=None, elt=2) == {}


def test_valid_rows_is_the_mask_of_the_bench_cases():
    import torch

    from bench.inputs import make_hidden_case, make_logits_case

    for n in (64, 300, 512):
        c = make_logits_case(n, 8, dtype=torch.float32, device=torch.device("cpu"))
        h = make_hidden_case(n, 8, 4, dtype=torch.float32, device=torch.device("cpu"))
        assert floors.valid_rows(n) == int(c.mask.sum()) == int(h.mask.sum())
        assert 0 < floors.valid_rows(n) < n


def test_the_committed_h200_numbers_on_the_valid_rows():
    rows = floors.recompute()
    cord = floors.find(rows, "cord_token_loss")
    assert cord["n_valid"] == 11653 and cord["pct_floor_all_rows"] == pytest.approx(99.7, 1e-3)
    # by hand: 99.7% x (10 x 11653 + 2 x 4731) / (10 x 16384)
    assert cord["pct_floor"] == pytest.approx(cord["pct_floor_all_rows"] * (
        10 * 11653 + 2 * 4731) / (10 * 16384))
    rkl = floors.find(rows, "reverse_kl")
    assert rkl["pct_floor"] == rkl["pct_floor_all_rows"]  # no mask: every row is its work
    fused = floors.find(rows, "fused_linear_cord_token_loss")
    assert fused["pct_floor"] == pytest.approx(fused["pct_floor_all_rows"] * 11653 / 16384)
    assert 70 < fused["pct_floor"] < 72 and 73 < fused["pct_timed_valid_gemms"] < 74
    drop_in = floors.drop_in_rows(gemm_tflops=690.9)
    assert {(r["beta"], r["backend"]) for r in drop_in} == {(b, k) for b in (1.0, 0.5)
                                                          for k in ("trl", "cord_kernels")}
    assert next(r for r in drop_in if r["backend"] == "trl")["x_trl"] == 1.0


def test_the_docs_prose_quotes_the_recomputed_numbers():
    """README.md and docs/performance.md's prose quote numbers of the generated block: each
    is the recomputation's (python -m bench.floors), never typed in on its own."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    h = floors.headline(floors.recompute())
    timed = floors.find(floors.recompute(), "fused_linear_cord_token_loss")[
        "pct_timed_valid_gemms"]
    cord, fused = h["cord_token_loss"], h["fused_linear_cord_token_loss"]
    readme = " ".join((root / "README.md").read_text().split())
    assert (f"CORD loss runs at {cord[0]}% of the memory floor of the rows it must compute "
            f"({cord[1]}% if") in readme
    assert f"at {fused[0]}% of its 4-GEMM floor on the rows it projects ({fused[1]}%" in readme
    page = " ".join((root / "docs" / "performance.md").read_text().split())
    rkl = h["reverse_kl"][0]
    assert (f"the CORD loss is at {cord[0]}%, not the {cord[1]}% that charging the masked rows "
            f"it skips made it look (and below reverse KL's {rkl}%)") in page
    assert (f"loss is {fused[0]}% of the 4 GEMMs on the rows it projects ({timed:.1f}% of the "
            f"same GEMMs timed there), not {fused[1]}%") in page
