"""Argument checks shared by every public function.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape,
device or value) with a message that names the argument and says what was expected, so that a
mistake in a training script fails at the call, not as a NaN three hours later.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def check_tensor(name: str, x, *, ndim: int | None = None, min_ndim: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}"
        )


def check_float(name: str, x: torch.Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")


def check_logits(name: str, x) -> None:
    check_tensor(name, x, min_ndim=1)
    check_float(name, x)
    if x.shape[-1] < 1:
        raise ValueError(
            f"{name} must have a non-empty vocabulary (last) dimension, got {tuple(x.shape)}"
        )


def check_logits_pair(student, teacher, names=("student_logits", "teacher_logits")) -> None:
    a, b = names
    check_logits(a, student)
    check_logits(b, teacher)
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"vocabulary mismatch: {a} has V={student.shape[-1]} but {b} has V={teacher.shape[-1]}"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"{a} and {b} must have the same shape, got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    check_same_device((a, student), (b, teacher))
    if student.dtype != teacher.dtype:
        raise TypeError(
            f"{a} and {b} must have the same dtype, got {student.dtype} and {teacher.dtype}"
        )


def check_same_device(*named: tuple[str, torch.Tensor]) -> None:
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; "
                "move them to the same device"
            )


def check_mask(mask, shape: tuple[int, ...], *, name: str = "mask", like: str = "") -> torch.Tensor:
    """Returns the mask as bool. A bool mask is taken as is; an integer or float mask must
    hold only 0 and 1 (attention-mask style). TRL-style labels passed as a mask (-100, token
    ids) would otherwise count as valid positions and silently change the loss, so any other
    value is a ValueError. Checking the values costs one host sync; a bool mask costs none."""
    check_tensor(name, mask)
    if mask.dtype.is_complex:
        raise TypeError(f"{name} must be a bool, integer or float tensor of 0/1, got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        where = f" (the leading dimensions of {like})" if like else ""
        raise ValueError(f"{name} must have shape {tuple(shape)}{where}, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        values = torch.unique(mask[bad]).tolist()
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise ValueError(
            f"{name} must be bool, or hold only 0 and 1, but it holds {shown}; labels are not "
            f"a mask: pass {name}=(labels != -100), or labels= where the loss takes it"
        )
    return mask != 0


def check_mask_or_labels(mask, labels, ignore_index, shape: tuple[int, ...], *,
                         like: str) -> torch.Tensor:
    """The bool mask of a distillation loss given either ``mask`` or TRL-style ``labels``
    (valid where ``labels != ignore_index``), exactly one of them; ``ignore_index`` is
    checked by ``LossOptions``."""
    if labels is None:
        if mask is None:
            raise ValueError("pass mask= (bool, True at the positions that count) or labels= "
                             "(valid where labels != ignore_index)")
        if ignore_index != -100:  # an option of labels alone: never silently dropped
            raise ValueError(f"ignore_index={ignore_index} is used with labels= only; pass "
                             "labels=, or leave ignore_index at -100")
        return check_mask(mask, shape, like=like)
    if mask is not None:
        raise ValueError("pass mask= or labels=, not both (labels give the mask "
                         "labels != ignore_index)")
    check_labels(labels, shape, like)
    return labels != ignore_index


def check_real(name: str, value) -> float:
    """A real number (not a bool), as a float; the range checks below build on it."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def check_positive(name: str, value) -> float:
    v = check_real(name, value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_temperature(temperature) -> float:
    return check_positive("temperature", temperature)


def check_nonneg_number(name: str, value) -> float:
    v = check_real(name, value)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_unit(name: str, value) -> float:
    """A number in [0, 1] (the JSD's beta)."""
    v = check_real(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_labels(labels, shape: tuple[int, ...], like: str = "logits") -> None:
    check_tensor("labels", labels)
    if labels.dtype not in INT_DTYPES:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(
            f"labels must have shape {tuple(shape)} (the leading dimensions of {like}), "
            f"got {tuple(labels.shape)}"
        )


def check_token_weights(token_weights, mask: torch.Tensor) -> torch.Tensor | None:
    if token_weights is None:
        return None
    check_tensor("token_weights", token_weights)
    if not token_weights.dtype.is_floating_point:
        raise TypeError(f"token_weights must be a float tensor, got {token_weights.dtype}")
    if tuple(token_weights.shape) != tuple(mask.shape):
        raise ValueError(f"token_weights must have shape {tuple(mask.shape)} (the (B, T) of "
                         f"mask), got {tuple(token_weights.shape)}")
    check_same_device(("mask", mask), ("token_weights", token_weights))
    if token_weights.requires_grad:
        raise ValueError("token_weights must not require grad (they are fixed weights; pass "
                         "token_weights.detach())")
    bad = ~torch.isfinite(token_weights) | (token_weights < 0)
    if bool((bad & mask).any()):  # one host sync, next to the one that finds the valid rows
        raise ValueError("token_weights must be finite and >= 0 at every valid position")
    return token_weights
