from __future__ import annotations

import torch

from captioner.models.shared_linear import SharedWeight


def test_gradients_equal_those_of_a_plain_linear_used_at_every_step() -> None:
    torch.manual_seed(0)
    weight = torch.randn(5, 4, requires_grad=True)
    start = torch.randn(3, 4, requires_grad=True)

    def unroll(apply) -> torch.Tensor:
        h, outputs = start, []
        for _ in range(6):
            h = torch.tanh(apply(h)[:, :4] + h)
            outputs.append(h)
        return torch.stack(outputs).pow(2).sum()

    shared = SharedWeight(weight, torch.float32)
    grads = torch.autograd.grad(unroll(shared), (weight, start))
    expected = torch.autograd.grad(unroll(lambda x: x @ weight.t()), (weight, start))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_forward_without_backward_keeps_nothing() -> None:
    weight = torch.randn(5, 4, requires_grad=True)
    shared = SharedWeight(weight, torch.float32)
    with torch.no_grad():
        shared(torch.randn(2, 4))
    assert shared.records == []
