"""The collective operations the engine needs: identity in one process, torch.distributed in Ray Train workers."""

from __future__ import annotations

import torch

from gd_provider.core.tasks.metrics import ranking_metrics, ranking_metrics_numpy  # noqa: F401 (former home)


class Collective:
    """Collectives of a single process: all identities. ``TorchDistCollective`` is the distributed one."""

    rank = 0
    world_size = 1

    def max_int(self, value: int) -> int:
        return value

    def sum_floats(self, values: list[float]) -> list[float]:
        return list(values)

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather_ints(self, values: list[int]) -> list[list[int]]:
        return [list(values)]

    def broadcast_flag(self, flag: bool) -> bool:
        return flag


class TorchDistCollective(Collective):
    """Collectives over the default ``torch.distributed`` process group (every rank must call each one)."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device

    def max_int(self, value: int) -> int:
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def sum_floats(self, values: list[float]) -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu().tolist()]

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= self.world_size
        return tensor

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_ints(self, values: list[int]) -> list[list[int]]:
        import torch.distributed as dist

        t = torch.zeros((self.world_size, len(values)), dtype=torch.int64, device=self.device)
        t[self.rank] = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [[int(v) for v in row] for row in t.cpu().tolist()]

    def broadcast_flag(self, flag: bool) -> bool:
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())
