"""How the trainer spreads a model over processes: accelerate's engines, or FSDP2 applied here.

``distributed="accelerate"`` (the default) hands the model to ``Accelerator.prepare``: DDP,
FSDP (v1 or v2), DeepSpeed, whatever ``accelerate launch`` configured
(``examples/accelerate/*.yaml``).

``distributed="fsdp2"`` shards the model with ``torch.distributed.fsdp.fully_shard`` itself, over
whatever process group the launcher made (gloo on the CPU, NCCL on GPUs), or over a one-process
group it creates when there is none. accelerate does not offer FSDP on the CPU (with
``ACCELERATE_USE_CPU=true`` and ``distributed_type: FSDP`` it silently falls back to DDP), so
this is the path a CPU-only machine can test; on GPUs both paths shard the same way.

Sharding plan (both paths): every transformer block (the classes listed in the model's
``_no_split_modules``, outermost only) is its own FSDP unit, the rest (embeddings, final norm,
LM head, audio projector) belongs to the root unit. The root unit is not resharded after its
forward (FSDP2's default for the root), so the LM-head weight read after a forward with the head
bypassed (``ChatAdapter.completion_hidden``, the fused-linear losses) is the gathered weight, and
its gradient is reduce-scattered with the root's other gradients.

Checkpoints of ``fsdp2`` are torch distributed checkpoints (DCP): each process writes its shards
of the model and the optimizer to ``checkpoint-<step>/fsdp2/``, next to accelerate's files (RNG,
scheduler, trainer state, EMA teacher). DCP reshards on load, so a checkpoint saved by N
processes resumes on M.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from cord.config import DISTRIBUTED

#: The folder of a checkpoint that holds the DCP shards of ``distributed="fsdp2"``.
FSDP2_CHECKPOINT_DIR = "fsdp2"


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, outermost first-level ones only: modules whose class is in
    ``model._no_split_modules`` (transformers' list of blocks that must not be split) and that do
    not sit inside another such module."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    if not names:
        raise TypeError(f"{type(model).__name__} has no _no_split_modules: pass a transformers "
                        "model, or shard it yourself with fully_shard")
    blocks: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if type(module).__name__ in names and module is not model:
            blocks.append(module)
            inside.update(id(m) for m in module.modules())
    return blocks


def shard_fsdp2(model: nn.Module, *, device_type: str | None = None,
                bf16: bool = False) -> nn.Module:
    """Applies ``fully_shard`` to every block of ``model`` and then to the model (in place), over
    all processes of the default group.

    Args:
        device_type: "cuda" or "cpu" (default: where ``model``'s parameters are).
        bf16: compute in bf16 (``MixedPrecisionPolicy(param_dtype=bf16)``) while the sharded
            parameters, the optimizer and the gradient reduction stay in float32.
    """
    if not dist.is_initialized():
        raise RuntimeError("shard_fsdp2 needs an initialized process group "
                           "(see ensure_process_group)")
    if device_type is None:
        device_type = next(model.parameters()).device.type
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32 if bf16 else None)
    for block in block_modules(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def ensure_process_group(device: torch.device) -> bool:
    """Makes sure a default process group exists; creates a one-process group (gloo on the CPU,
    NCCL on CUDA) when the run was not started by a launcher. Returns True if it created one
    (then :meth:`FSDP2Strategy.close` destroys it)."""
    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return True


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) parameter: a collective for a DTensor."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor, the tensor itself otherwise (no communication)."""
    return t.to_local() if isinstance(t, DTensor) else t


@contextmanager
def transformers_class(model: nn.Module) -> Iterator[None]:
    """Gives an FSDP2-sharded model back its own class for the duration.

    ``fully_shard`` swaps the class for a subclass ``FSDP<Name>`` defined in torch, which
    transformers takes for custom code: ``save_pretrained`` would then skip converting the
    weight names back to the checkpoint's layout (Qwen2-Audio's ``language_model.lm_head``,
    the names transformers 4.x and vLLM read)."""
    if not isinstance(model, FSDPModule):
        yield
        return
    sharded_cls = type(model)
    model.__class__ = next(c for c in sharded_cls.__mro__ if not issubclass(c, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = sharded_cls


class AccelerateStrategy:
    """``distributed="accelerate"``: everything goes through ``Accelerator``."""

    name = "accelerate"

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    def prepare(self, model: nn.Module,
                make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], loader):
        """``(model, optimizer, loader)`` ready to train; the optimizer is made by
        ``make_optimizer(model)`` (after sharding, where there is sharding)."""
        return self.accelerator.prepare(model, make_optimizer(model), loader)

    def clip_grad_norm_(self, parameters, max_norm: float) -> float:
        return float(full_tensor(self.accelerator.clip_grad_norm_(parameters, max_norm)))

    def save(self, path: Path, model: nn.Module, optimizer) -> None:
        self.accelerator.save_state(str(path))

    def load(self, path: Path, model: nn.Module, optimizer) -> None:
        self.accelerator.load_state(str(path))

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict for ``save_pretrained`` (on the main process)."""
        return self.accelerator.get_state_dict(model)

    def save_pretrained(self, model: nn.Module, path: Path) -> None:
        """``save_pretrained`` of the whole model by the main process (every process calls
        it: gathering a sharded model is a collective)."""
        acc = self.accelerator
        state_dict = self.model_state_dict(model)
        bare = acc.unwrap_model(model)
        with transformers_class(bare):
            bare.save_pretrained(str(path), is_main_process=acc.is_main_process,
                                 save_function=acc.save, state_dict=state_dict)

    def close(self) -> None:
        pass


class FSDP2Strategy(AccelerateStrategy):
    """``distributed="fsdp2"``: ``fully_shard`` here, DCP checkpoints; accelerate still shards
    the data, seeds, logs and saves the non-model state."""

    name = "fsdp2"

    def __init__(self, accelerator: Accelerator, *, bf16: bool = False):
        super().__init__(accelerator)
        if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):
            raise ValueError(
                f"distributed='fsdp2' shards the model itself, but accelerate launch already "
                f"configured {accelerator.distributed_type.value}: use distributed=accelerate "
                "with that config, or launch with a plain multi-process config (ddp.yaml)")
        self.bf16 = bf16
        self._owns_group = ensure_process_group(accelerator.device)

    def prepare(self, model, make_optimizer, loader):
        units = len(block_modules(model)) + 1
        device = self.accelerator.device
        model = shard_fsdp2(model.to(device), device_type=device.type, bf16=self.bf16)
        self.accelerator.print(f"fsdp2: {units} units (the blocks and the root) sharded over "
                               f"{dist.get_world_size()} process(es)")
        # The loader alone goes through accelerate (per-process shards of the data); preparing
        # the model would wrap it in DDP.
        return model, make_optimizer(model), self.accelerator.prepare(loader)

    def clip_grad_norm_(self, parameters, max_norm: float) -> float:
        return float(full_tensor(torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)))

    def save(self, path: Path, model, optimizer) -> None:
        self.accelerator.save_state(str(path))  # RNG, scheduler, trainer state, teacher
        shards = Path(path) / FSDP2_CHECKPOINT_DIR
        if self.accelerator.is_main_process and shards.exists():
            shutil.rmtree(shards)  # an older save of the same step
        self.accelerator.wait_for_everyone()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(shards))

    def load(self, path: Path, model, optimizer) -> None:
        shards = Path(path) / FSDP2_CHECKPOINT_DIR
        if not shards.is_dir():
            raise FileNotFoundError(
                f"resume_from_checkpoint: {path} holds no {FSDP2_CHECKPOINT_DIR}/ shards; it was "
                "not saved with distributed=fsdp2")
        self.accelerator.load_state(str(path))
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(state, checkpoint_id=str(shards))  # reshards to this run's process count
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])

    def model_state_dict(self, model):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False


def build_strategy(name: str, accelerator: Accelerator, *, bf16: bool = False):
    """The strategy named by ``CordConfig.distributed``."""
    if name == "accelerate":
        return AccelerateStrategy(accelerator)
    if name == "fsdp2":
        return FSDP2Strategy(accelerator, bf16=bf16)
    raise ValueError(f"distributed must be one of {list(DISTRIBUTED)}, got {name!r}")


_ENGINES = {"MULTI_CPU": "DDP", "MULTI_GPU": "DDP", "MULTI_XPU": "DDP", "FSDP": "FSDP",
            "DEEPSPEED": "DeepSpeed", "MEGATRON_LM": "Megatron-LM"}


def describe_processes(acc, distributed: str) -> str:
    """``1 process, CPU``, ``8 processes, FSDP2, GPU``: the run's layout in words."""
    n = acc.num_processes
    engine = "FSDP2" if distributed == "fsdp2" else _ENGINES.get(acc.distributed_type.name)
    device = {"cpu": "CPU", "cuda": "GPU"}.get(acc.device.type, acc.device.type.upper())
    return ", ".join([f"{n} process{'es' if n != 1 else ''}", *([engine] if engine else []),
                      device])
