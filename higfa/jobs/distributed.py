"""Who am I in a multi-process job, which items are mine, and the few collectives a dataset job needs.

Launchers only set environment variables, so any of them works:

- torchrun (one node or many): RANK, WORLD_SIZE, LOCAL_RANK (LOCAL_RANK picks the GPU);
- a SLURM job array: SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT (and _MIN, _STEP);
- both (each array task runs torchrun): rank = task · WORLD_SIZE + RANK;
- an explicit `--shard i/n` (shell loops).

Sharding is static and round-robin over a deterministic list: `items[rank::world]` — no
duplicates, no gaps, and no item's content depends on who computes it. SIGTERM (a scheduler's
preemption) raises `Terminated` inside `stop_on_sigterm()`, for every long job of the CLI.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Mapping, Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"  # single | torchrun | slurm-array | slurm-array+torchrun | explicit
    torchrun: bool = False  # launched by torchrun (a process group can be formed)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world_size} processes: "
                             "check RANK/WORLD_SIZE, SLURM_ARRAY_TASK_ID/COUNT or --shard i/n")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    v = env.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def detect_ranks(env: Mapping[str, str] | None = None, shard: str | None = None) -> Ranks:
    """The process's place in the job, from `--shard i/n` or the launcher's environment."""
    env = os.environ if env is None else env
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard {shard!r}: write it as i/n, e.g. 0/4 for the first of four shards") from None
        return Ranks(i, n, 0, "explicit")
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    local = _int(env, "LOCAL_RANK", 0)
    torchrun = rank is not None and world is not None
    task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and count is not None:
        first, step = _int(env, "SLURM_ARRAY_TASK_MIN", 0), _int(env, "SLURM_ARRAY_TASK_STEP", 1)
        task_rank = (task - first) // max(step, 1)
        if torchrun:
            return Ranks(task_rank * world + rank, count * world, local, "slurm-array+torchrun", True)
        return Ranks(task_rank, count, 0, "slurm-array")
    if torchrun:
        return Ranks(rank, world, local, "torchrun", True)
    return Ranks()


def shard(items: Sequence[T], info: Ranks) -> list[T]:
    """This rank's share: items[rank::world]."""
    return list(items[info.rank::info.world_size])


def pick_device(requested: str, info: Ranks) -> torch.device:
    """'auto': cuda:LOCAL_RANK when CUDA is available, else the CPU; otherwise the named device."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {requested}: not a device torch knows; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        backend = getattr(torch, dev.type, None) if dev.type != "mps" else getattr(torch.backends, "mps", None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ValueError(f"--device {requested}: no {dev.type} device in this torch build/machine; use auto, cpu, "
                             "cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available in this torch build/machine; use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return dev


class ProcessGroup:
    """A gloo process group for barrier and object gathering (never for tensors: generation is
    embarrassingly parallel). Formed only under torchrun; otherwise every call is local."""

    def __init__(self, info: Ranks, timeout_hours: float = 72.0):
        self.info = info
        self.active = False
        if info.torchrun and info.world_size > 1 and info.launcher == "torchrun":
            import torch.distributed as dist

            if not dist.is_initialized():
                # gloo on CPU whatever the device: only barriers and small objects travel; a long
                # timeout because shards finish at different times.
                dist.init_process_group("gloo", timeout=timedelta(hours=timeout_hours))
            self.active = True

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (only this rank's when no group is formed)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.active = False


# ---------------------------------------------------------------------------- SIGTERM
class Terminated(BaseException):
    """SIGTERM arrived (e.g. SLURM preemption): stop like Ctrl-C. `cli` exits 143."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread (where the loop runs) while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        raise Terminated()

    before = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
