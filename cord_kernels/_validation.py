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
REDUCTIONS = ("batchmean", "sum", "mean", "none")
IMPLS = (None, "triton", "torch")


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
    """Returns the mask as bool. Integer 0/1 masks (attention-mask style) are accepted."""
    check_tensor(name, mask)
    if mask.dtype != torch.bool and (mask.dtype.is_floating_point or mask.dtype.is_complex):
        raise TypeError(f"{name} must be a bool (or integer 0/1) tensor, got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        where = f" (the leading dimensions of {like})" if like else ""
        raise ValueError(f"{name} must have shape {tuple(shape)}{where}, got {tuple(mask.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    t = float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def check_nonneg_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_unit(name: str, value) -> float:
    """A number in [0, 1] (the JSD's beta)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_top_k(top_k) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    return top_k


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


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_labels(labels, shape: tuple[int, ...]) -> None:
    check_tensor("labels", labels)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(
            f"labels must have shape {tuple(shape)} (the leading dimensions of logits), "
            f"got {tuple(labels.shape)}"
        )
