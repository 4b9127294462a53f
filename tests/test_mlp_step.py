from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lrsearch.train.mlp_step import MLPStep
from synthetic_objective import Synthetic

OBJECTIVE = Synthetic()
TARGETS = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))


def mlp(*layers: nn.Module) -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(*layers)


ELIGIBLE = {
    "one hidden layer": lambda: mlp(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10)),
    "flatten, two hidden layers": lambda: mlp(
        nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(inplace=True), nn.Linear(16, 10)
    ),
    "no biases": lambda: mlp(nn.Linear(20, 32, bias=False), nn.ReLU(), nn.Linear(32, 10, bias=False)),
    "linear only": lambda: mlp(nn.Linear(20, 10)),
    "relu last": lambda: mlp(nn.Linear(20, 10), nn.ReLU()),
}


@pytest.mark.parametrize("make", ELIGIBLE.values(), ids=ELIGIBLE.keys())
def test_loss_outputs_and_gradients_equal_autograds(make: object) -> None:
    model = make()  # type: ignore[operator]
    inputs = torch.randn(64, 4, 5) if isinstance(model[0], nn.Flatten) else torch.randn(64, 20)
    reference = copy.deepcopy(model)
    outputs = reference(inputs)
    loss = torch.nn.functional.cross_entropy(outputs, TARGETS)
    loss.backward()  # type: ignore[no-untyped-call]

    step = MLPStep.for_model(model, OBJECTIVE, TARGETS)
    assert step is not None
    for _ in range(2):  # the second call writes into the gradient buffers of the first
        mine, my_outputs = step(inputs, TARGETS)
        assert mine.item() == pytest.approx(loss.item(), rel=1e-6)
        assert torch.allclose(my_outputs, outputs.detach(), rtol=1e-5, atol=1e-6)
        assert not mine.requires_grad and not my_outputs.requires_grad
        for (name, theirs), (_, p) in zip(reference.named_parameters(), model.named_parameters(), strict=True):
            assert p.grad is not None and torch.allclose(p.grad, theirs.grad, rtol=1e-4, atol=1e-7), name


class Smoothed(Synthetic):
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)


class MySequential(nn.Sequential):
    pass


def test_anything_else_is_left_to_autograd() -> None:
    usual = mlp(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))
    assert MLPStep.for_model(usual, OBJECTIVE, TARGETS) is not None
    assert MLPStep.for_model(usual, Smoothed(), TARGETS) is None  # its own loss
    assert MLPStep.for_model(usual, OBJECTIVE, TARGETS.float()) is None  # not class ids
    others = [
        mlp(nn.Linear(20, 32), nn.Dropout(0.1), nn.Linear(32, 10)),
        mlp(nn.Linear(20, 32), nn.GELU(), nn.Linear(32, 10)),
        mlp(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.Linear(32, 10)),
        mlp(nn.Flatten(start_dim=2), nn.Linear(20, 10)),
        MySequential(nn.Linear(20, 10)),
        nn.Linear(20, 10),
        mlp(nn.ReLU(), nn.Linear(20, 10)),
        mlp(),
    ]
    for model in others:
        assert MLPStep.for_model(model, OBJECTIVE, TARGETS) is None, model
    hooked = mlp(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))
    hooked[1].register_forward_hook(lambda *args: None)
    assert MLPStep.for_model(hooked, OBJECTIVE, TARGETS) is None
    frozen = mlp(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))
    frozen[0].weight.requires_grad_(False)
    assert MLPStep.for_model(frozen, OBJECTIVE, TARGETS) is None
    assert MLPStep.for_model(usual.double(), OBJECTIVE, TARGETS) is None
