"""torch.distributed plumbing: the process group under torchrun, collectives, the launcher.

A process started by `torchrun` (or by `--nproc N`, which starts torchrun) sees RANK,
WORLD_SIZE and LOCAL_RANK in its environment; `session()` then joins the process group (NCCL
on CUDA, gloo on CPU). Everything else in robeval asks `current()` for its rank and treats a
single process as a world of one, so the same code path runs with and without torchrun.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from robeval.errors import PeerError, RobevalError

T = TypeVar("T")
USER_ERROR_STATUS = 2   # what `robeval` exits with after printing a RobevalError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, results and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one rank (collectives are needed)."""
        return self.size > 1


SINGLE = World()


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    """The world of this process: the initialised process group, else a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


@contextmanager
def session(device: str = "auto") -> Iterator[World]:
    """Join the process group torchrun set up (no-op for a single process); leave it after."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield current()
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def main_only(log: Callable[[str], None], world: World) -> Callable[[str], None]:
    """`log` on rank 0, a log that drops its messages on the other ranks."""
    return log if world.is_main else (lambda _message: None)


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK for CUDA jobs, the given device otherwise."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def _object_device() -> torch.device | None:
    # NCCL moves pickled objects through GPU memory, gloo through CPU memory
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def broadcast(value: T, world: World) -> T:
    """Rank 0's `value` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_object_device())
    return box[0]


def gather(value: T, world: World) -> list[T] | None:
    """Every rank's `value`, in rank order, on rank 0 (None on the other ranks)."""
    if not world.distributed:
        return [value]
    out = [None] * world.size if world.is_main else None
    dist.gather_object(value, out, dst=0)
    return out


def all_sum(values: Sequence[float], world: World, device: torch.device) -> list[float]:
    """Elementwise sums of `values` over the ranks."""
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(world: World) -> None:
    """Wait for every rank."""
    if world.distributed:
        dist.barrier()


def on_main(work: Callable[[], T], world: World) -> T:
    """Run `work` on rank 0 and hand its result (or its RobevalError) to every rank."""
    if not world.distributed:
        return work()
    outcome: tuple[str, Any] = ("ok", None)
    if world.is_main:
        try:
            outcome = ("ok", work())
        except RobevalError as err:
            outcome = ("error", str(err))
    status, value = broadcast(outcome, world)
    if status == "error":
        if world.is_main:
            raise RobevalError(value)
        raise PeerError(value)
    return value


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: d(Σᵣ xᵣ)/dxᵣ = 1 on every rank."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def _summed(tensor: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(tensor)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics span every rank's batch, for gloo (CPU) jobs.

    torch's SyncBatchNorm runs on GPUs only; this one all-reduces per-channel sums with the
    a differentiable all-reduce, so forward, backward and running
    statistics equal those of one process holding the whole global batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = _summed(torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device))
        mean = _summed(x.sum(dims)) / count
        centred = x - mean[None, :, None, None]
        var = _summed(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(count))
        scale = torch.rsqrt(var + self.eps)[None, :, None, None]
        out = centred * scale
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                    else self.momentum)
        unbiased = var * count / max(count - 1, 1)
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers whose statistics span all ranks: SyncBatchNorm on CUDA, ours on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum,
                                       child.affine, child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced.to(device))
        else:
            sync_batchnorm(child, device)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when there are several ranks."""
    if not world.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def strip_option(args: Sequence[str], option: str) -> list[str]:
    """`args` without `option VALUE` / `option=VALUE` (the launcher must not relaunch itself)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def launch(nproc: int, args: Sequence[str], program: Sequence[str] = ("-m", "robeval"),
           hint: str = "rerun the same command to continue") -> None:
    """Run `python <program> <args>` on `nproc` local ranks under torchrun's launcher.

    A rank that fails or is killed ends the whole job (torchrun stops the others) and comes
    back as a one-line RobevalError naming the rank and how it ended; a rank that stopped on
    a user error has printed it already, so that comes back as a (silent) PeerError.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise RobevalError("--nproc must be at least 1")
    program = list(program)
    module = program[:1] == ["-m"]
    options = ["--standalone", f"--nproc-per-node={nproc}"] + (["--module"] if module else [])
    script = program[1:] if module else program
    parsed = get_args_parser().parse_args(options + script)
    parsed.training_script_args = list(args)  # kept from torchrun's own option parsing
    threads = os.environ.get("OMP_NUM_THREADS")
    # torchrun would pin every rank to one thread; share the cores out instead
    os.environ["OMP_NUM_THREADS"] = threads or str(max(1, (os.cpu_count() or 1) // nproc))
    try:
        run(parsed)
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        if failure.exitcode == USER_ERROR_STATUS:   # the rank printed its one-line error
            raise PeerError(describe_failure(err)) from None
        raise RobevalError(f"{describe_failure(err)}; {hint}") from None
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def lost_peer(err: BaseException) -> bool:
    """Whether `err` is a collective that failed because another rank went away."""
    if dist.is_available() and isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        marker in text for marker in ("connection closed by peer", "connection reset by peer",
                                      "broken pipe", "gloo"))


def describe_failure(err: Any) -> str:
    """'rank 1 was killed by SIGKILL' / 'rank 0 exited with status 2' for a ChildFailedError."""
    rank, failure = err.get_first_failure()
    if failure.exitcode is not None and failure.exitcode < 0:
        return f"rank {rank} was killed by {failure.signal_name()}"
    return f"rank {rank} exited with status {failure.exitcode}"
