"""Process groups: one process per device under ``torchrun``, and what the processes agree on.

``torchrun --nproc_per_node=N main.py ...`` starts N copies of main.py with RANK, WORLD_SIZE and
LOCAL_RANK in their environment; ``from_environment`` reads them and ``start`` joins the group:
gloo on CPU, NCCL on CUDA (one GPU per local rank). Without torchrun there is no group and every
function here does nothing, so a plain ``python main.py`` run is unchanged.

Also here: the sums and agreements the ranks make (epoch totals, evaluation counts, stop requests,
the budget's plan, the start-up checks all must pass), and a synchronized batch norm for CPU,
where torch's SyncBatchNorm does not run.
"""
import contextlib
import dataclasses
import datetime
import os
import re

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(RuntimeError):
    """The process group cannot be joined, or a peer was lost."""


class PeerRefused(Exception):
    """On rank 0: another rank refused during checks every rank must pass (``all_or_none``);
    rank 0 says why, naming that rank."""

    def __init__(self, rank: int, reason: str):
        super().__init__(reason)
        self.rank = rank


class StandDown(Exception):
    """On every rank but 0: some rank refused during checks every rank must pass, and rank 0 says
    why and answers for the run. This rank leaves quietly, with status 0: a rank that fails makes
    torchrun stop the others at once, perhaps before rank 0 has said anything."""


@dataclasses.dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = None  # "gloo" or "nccl" once started; None in a single process

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"on {self.world_size} processes ({self.backend})" if self.distributed else ""


SINGLE = Context()


def from_environment(environ=None) -> Context:
    """The rank, world size and local rank torchrun set; the single-process context without them."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return SINGLE
    values = {}
    for key in ENV_KEYS:
        text = environ.get(key, "0")
        try:
            values[key] = int(text)
        except ValueError:
            raise DistributedError(f"the environment variable {key}={text!r} is not a whole number; "
                                   f"start the processes with torchrun, which sets it.") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"RANK {rank}, WORLD_SIZE {world} and LOCAL_RANK {local} do not "
                               f"make sense together; start the processes with torchrun.")
    return Context(rank, world, local)


def device_for(context: Context, name: str) -> str:
    """The device a rank uses: cuda:LOCAL_RANK where CUDA is asked for (or auto finds it)."""
    if not context.distributed:
        return name
    if name in ("auto", "cuda") and torch.cuda.is_available():
        # Checked here, before the device is: a rank without a GPU says so itself, while the
        # refusals every rank shares are said by rank 0 alone.
        if context.local_rank >= torch.cuda.device_count():
            raise DistributedError(f"local rank {context.local_rank} has no GPU of its own (this "
                                   f"machine has {torch.cuda.device_count()}); start at most that "
                                   f"many processes per node with --nproc_per_node.")
        return f"cuda:{context.local_rank}"
    if name == "auto":
        return "cpu"
    return name


def start(context: Context, device: torch.device, timeout_seconds: float) -> Context:
    """Join the process group of a torchrun launch; return the context with its backend."""
    if not context.distributed:
        return context
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, rank=context.rank, world_size=context.world_size,
                                timeout=datetime.timedelta(seconds=timeout_seconds))
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"rank {context.rank} could not join the process group ({e}); "
                               f"check that every process was started by the same torchrun.") \
            from None
    return dataclasses.replace(context, backend=backend)


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def lost_contact(e: BaseException) -> DistributedError:
    rank = dist.get_rank() if dist.is_initialized() else "?"
    return DistributedError(f"rank {rank} lost contact with the other processes ({_reason(e)}); "
                            f"one of them has stopped or died. The last checkpoint is kept; "
                            f"resume with --resume.")


MAX_REASON = 200  # characters of a backend's error kept in a message


def _reason(e: BaseException) -> str:
    """The first sentence of a backend's error, without the source location gloo puts first
    ("[.../pair.cc:537] Read error ...: Connection reset by peer. This is typically caused by
    ..."), shortened at a word if it is still long."""
    lines = str(e).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else ""
    text = re.split(r"(?<=\w)\.\s", text, maxsplit=1)[0].strip() or type(e).__name__
    if len(text) > MAX_REASON:
        text = text[:MAX_REASON].rsplit(" ", 1)[0].rstrip(" ,;:") + " ..."
    return text


def is_lost_contact(e: BaseException) -> bool:
    """Whether an error raised inside a collective means a peer is gone (or timed out)."""
    kinds = tuple(getattr(dist, name) for name in ("DistError", "DistBackendError")
                  if hasattr(dist, name))
    text = str(e).lower()
    return isinstance(e, kinds) or any(w in text for w in ("gloo", "nccl", "connection", "timed out"))


def _all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; returned for convenience. Identity alone."""
    if active():
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        except RuntimeError as e:  # torch's DistBackendError is one
            raise lost_contact(e) from None
    return tensor


def sum_over_ranks(values, device="cpu") -> list:
    """A few numbers (Python numbers or one-element tensors: counts, loss sums) each added up over
    all ranks in one collective, in float64 -> a list of floats, in order; alone, the numbers
    themselves as floats. ``device`` is where the backend sums (the GPU under NCCL, else "cpu").

    The one place a distributed epoch or evaluation adds up its totals, in the spirit of
    torchvision's ``reduce_across_processes``."""
    totals = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(()).to(device)
                          for v in values])
    return _all_sum(totals).tolist()


def _agree(value: float, op: str, device) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    try:
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    except RuntimeError as e:
        raise lost_contact(e) from None
    return t.item()


def agree_max(value: int, device="cpu") -> int:
    """The largest of the ranks' values (a stop request: 0, or a signal number)."""
    return int(_agree(value, "MAX", device))


def agree_min(value: int, device="cpu") -> int:
    """The smallest of the ranks' values (the budget's epoch count: every rank must fit it)."""
    return int(_agree(value, "MIN", device))


def barrier() -> None:
    if active():
        try:
            dist.barrier()
        except RuntimeError as e:
            raise lost_contact(e) from None


@contextlib.contextmanager
def all_or_none(*refusals: type):
    """Checks every rank must pass before any goes on: an exception of the ``refusals`` types on
    one rank stops every rank, and rank 0 alone says why. Rank 0 raises the refusal of the
    lowest rank that refused (its own, or a PeerRefused naming that rank); every other rank
    raises StandDown. It ends with the ranks in step, as a barrier does; alone, it does nothing.

    Without it, a rank that refuses (rank 0 finding --modeldir locked) leaves the others waiting
    in their next collective, which then fails with a "lost contact" of its own."""
    if not active():
        yield
        return
    refusal = None
    try:
        yield
    except refusals as e:
        refusal = e
    reasons = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(reasons, None if refusal is None else str(refusal))
    except RuntimeError as e:
        raise lost_contact(e) from None
    refused = [(rank, reason) for rank, reason in enumerate(reasons) if reason is not None]
    if not refused:
        return
    if dist.get_rank() != 0:
        raise StandDown() from refusal
    if refusal is not None:
        raise refusal
    raise PeerRefused(*refused[0])


def gather_arrays(array: np.ndarray) -> np.ndarray:
    """Every rank's array, concatenated in rank order, on every rank."""
    if not active():
        return array
    parts = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(parts, array)
    except RuntimeError as e:
        raise lost_contact(e) from None
    return np.concatenate(parts)


def share(n: int, rank: int, world_size: int) -> slice:
    """The contiguous part [start, stop) of n items that ``rank`` evaluates: the parts of all ranks
    are disjoint and cover every item once, the first n % world_size ranks taking one more."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def broadcast_buffers(network: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics). DDP does so at each
    forward, but each rank then updates them from its own share of the batch; before evaluating,
    all ranks must hold what rank 0 holds and saves."""
    if not active():
        return
    try:
        for buffer in network.buffers():
            dist.broadcast(buffer, src=0)
    except RuntimeError as e:
        raise lost_contact(e) from None


def parameters_agree(network: nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters and buffers (a check after training)."""
    if not active():
        return True
    values = [v.detach().double().sum() for v in network.state_dict().values()
              if v.is_floating_point()]
    local = torch.stack(values).cpu()
    low, high = local.clone(), local.clone()
    try:
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
    except RuntimeError as e:
        raise lost_contact(e) from None
    return bool(torch.equal(low, high))


# --------------------------------------------------------------------------------------------
# Synchronized batch norm

class _CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch: per-channel sums and
    sums of squares are added over all ranks (differentiably, so the gradients are the global
    batch's too). For CPU and gloo; on CUDA torch's own nn.SyncBatchNorm is used. Its state dict is
    a plain batch norm's, so checkpoints load into the plain network."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        wide = x.double()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        stats = torch.cat([wide.sum(dims), (wide * wide).sum(dims), count])
        stats = differentiable_all_reduce(stats)
        c = x.shape[1]
        total = stats[-1]
        mean = stats[:c] / total
        var = stats[c:2 * c] / total - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else \
                    1.0 / self.num_batches_tracked.item()
                unbiased = var * total / max(total.item() - 1, 1)
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = (wide - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(network: nn.Module, device: torch.device) -> nn.Module:
    """The network with every batch norm synchronized over the process group."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(network)
    return _replace_batchnorm(network)


def _replace_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
            not isinstance(module, _CpuSyncBatchNorm):
        synced = _CpuSyncBatchNorm(module.num_features, module.eps, module.momentum,
                                   module.affine, module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        for name, param in synced.named_parameters():  # a fixed scale (airbench's) stays fixed
            param.requires_grad_(getattr(module, name).requires_grad)
        synced.to(next(iter(module.state_dict().values())).device)
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        setattr(module, name, _replace_batchnorm(child))
    return module
