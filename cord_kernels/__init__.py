"""cord_kernels: fused losses for CORD, on-policy cross-modal self-distillation.

Logits in:   reverse_kl, forward_kl, jsd, token_logprobs, cord_weights, cord_token_loss,
             grpo_loss
Hidden in:   fused_linear_distill_loss, fused_linear_cord_token_loss,
             fused_linear_token_logprobs
Sparse:      sparse_teacher_loss, fused_linear_sparse_teacher_loss, student_topk_distill_loss,
             fused_linear_student_topk_distill_loss, teacher_topk, sampled_token_reverse_kl
Modules:     ReverseKL, ForwardKL, JSD, TokenLogprobs, CordTokenLoss, FusedLinearDistillLoss,
             FusedLinearCordTokenLoss, FusedLinearTokenLogprobs, GRPOLoss, SparseTeacherLoss,
             FusedLinearSparseTeacherLoss

Every function takes keyword-only options and ``impl="triton" | "torch" | None``; None runs the
Triton kernels on CUDA tensors (or under ``TRITON_INTERPRET=1``) and the torch reference
otherwise. Importing this package never touches a GPU.
"""

from cord_kernels.cord_token_loss import cord_token_loss
from cord_kernels.fused_cord import fused_linear_cord_token_loss
from cord_kernels.fused_distill import fused_linear_distill_loss
from cord_kernels.fused_logprobs import fused_linear_token_logprobs
from cord_kernels.fused_sparse_teacher import fused_linear_sparse_teacher_loss
from cord_kernels.fused_student_topk import fused_linear_student_topk_distill_loss
from cord_kernels.grpo import grpo_loss
from cord_kernels.jsd import jsd
from cord_kernels.kl import forward_kl, reverse_kl
from cord_kernels.modules import (
    JSD,
    CordTokenLoss,
    ForwardKL,
    FusedLinearCordTokenLoss,
    FusedLinearDistillLoss,
    FusedLinearTokenLogprobs,
    GRPOLoss,
    ReverseKL,
    TokenLogprobs,
)
from cord_kernels.sampled_token_kl import sampled_token_reverse_kl
from cord_kernels.sparse_modules import FusedLinearSparseTeacherLoss, SparseTeacherLoss
from cord_kernels.sparse_teacher import sparse_teacher_loss
from cord_kernels.student_topk import student_topk_distill_loss
from cord_kernels.teacher_topk import teacher_topk
from cord_kernels.token_logprobs import token_logprobs
from cord_kernels.weights import cord_weights

__version__ = "0.1.0"

__all__ = [
    "reverse_kl",
    "forward_kl",
    "jsd",
    "token_logprobs",
    "cord_weights",
    "cord_token_loss",
    "fused_linear_distill_loss",
    "fused_linear_cord_token_loss",
    "fused_linear_token_logprobs",
    "grpo_loss",
    "sparse_teacher_loss",
    "fused_linear_sparse_teacher_loss",
    "student_topk_distill_loss",
    "fused_linear_student_topk_distill_loss",
    "teacher_topk",
    "sampled_token_reverse_kl",
    "ReverseKL",
    "ForwardKL",
    "JSD",
    "TokenLogprobs",
    "CordTokenLoss",
    "FusedLinearDistillLoss",
    "FusedLinearCordTokenLoss",
    "FusedLinearTokenLogprobs",
    "GRPOLoss",
    "SparseTeacherLoss",
    "FusedLinearSparseTeacherLoss",
]
