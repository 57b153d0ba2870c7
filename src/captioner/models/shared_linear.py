"""A linear layer applied at every step of a recurrence, whose weight gradient is computed once per sequence.

Autograd treats the 13 or so uses of a recurrent weight as 13 separate matmuls: each backward step computes a
small (K = batch) weight gradient, casts it to fp32 and adds it into the accumulator. On a CPU that overhead is
a sixth of an attention decoder's training step. Here every step only records its input and output gradient,
and the weight gradient is one large matmul over all steps: the same number, computed in one go.

    shared = SharedWeight(layer.weight, dtype)     # once per forward pass
    y_t = shared(x_t)                              # at every step: x_t @ weight.T
"""

from __future__ import annotations

import torch


class _Gather(torch.autograd.Function):
    """Identity on the weight; its backward runs after every step's backward and returns the summed gradient."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, records: list) -> torch.Tensor:
        ctx.records = records
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, unused: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        records, ctx.records = ctx.records, None
        if not records:
            return None, None
        inputs = torch.cat([x for x, _ in records])  # (steps * B, in)
        grads = torch.cat([g for _, g in records])  # (steps * B, out)
        records.clear()
        return grads.t().mm(inputs), None


class _Step(torch.autograd.Function):
    """x @ weight.T whose backward hands the weight gradient's ingredients to _Gather instead of computing it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, records: list) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.records = records
        return x.mm(weight.t())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        ctx.records.append((x, grad))
        return grad.mm(weight) if ctx.needs_input_grad[0] else None, None, None


class SharedWeight:
    """One forward pass's view of a weight used at every step; `dtype` is the compute precision (bf16 under
    autocast), cast once here rather than at every step."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
        self.records: list = []
        self.weight = _Gather.apply(weight.to(dtype), self.records)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _Step.apply(x.to(self.weight.dtype), self.weight, self.records)
