from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from lrsearch.strategy.strategy import LRStrategy
from lrsearch.train.loop import train
from lrsearch.train.mlp_step import MLPStep
from lrsearch.train.objective import Objective
from lrsearch_objectives.mnist_mlp import MnistMLP
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


# Each case is something the hand-derived step would ignore: training must take autograd there and end as
# autograd does. `fast_kernels=False` trains by autograd (and unfused optimizers: the same updates up to rounding).
STRATEGY = LRStrategy("sgd", 0.1, "constant", 2, {"momentum": 0.9})


class Custom(Synthetic):
    def __init__(self, make: Callable[[], nn.Module]):
        super().__init__(samples=512)
        self.make = make

    def make_model(self) -> nn.Module:
        return self.make()


def plain() -> nn.Sequential:
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


def tied() -> nn.Sequential:
    shared = nn.Linear(32, 32)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(32, 10))


def shared_weight() -> nn.Sequential:
    model = plain()
    extra = nn.Linear(32, 32)
    extra.weight = model[2].weight
    return nn.Sequential(*model[:4], extra, nn.ReLU(), model[4])


def hooked(register: Callable[[nn.Sequential], object], flatten: bool = False) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        model = nn.Sequential(nn.Flatten(), *plain()) if flatten else plain()
        register(model)
        return model

    return make


def instance_forward() -> nn.Sequential:
    model = plain()
    first = model[0]
    model[0].forward = lambda x: nn.functional.linear(x, first.weight * 0.5, first.bias)  # type: ignore[method-assign]
    return model


def halve(*args: object) -> object:
    """A hook that halves what passes it (output, input or gradient): the trained weights then differ."""
    value = args[-1]
    if isinstance(value, tuple):
        return tuple(v * 0.5 if v is not None else None for v in value)
    return value * 0.5  # type: ignore[operator]


def halve_input_grads(module: nn.Module, grad_input: tuple[torch.Tensor | None, ...], _: object) -> object:
    """A backward hook: halves the gradient a Linear passes to the layers before it."""
    if type(module) is not nn.Linear or grad_input[0] is None:
        return None
    return (grad_input[0] * 0.5,)


def linear_only(hook: Callable[..., object]) -> Callable[..., object]:
    return lambda module, *args: hook(*args) if type(module) is nn.Linear else None


def with_instance_loss(loss: nn.Module) -> Synthetic:
    objective = Custom(plain)
    objective.loss = loss  # type: ignore[method-assign]
    return objective


OBJECTIVES: dict[str, Callable[[], Synthetic]] = {
    "same Linear twice (weight tying)": lambda: Custom(tied),
    "one weight in two Linears": lambda: Custom(shared_weight),
    "loss set on the instance: label smoothing": lambda: with_instance_loss(nn.CrossEntropyLoss(label_smoothing=0.1)),
    "loss set on the instance: class weights": lambda: with_instance_loss(
        nn.CrossEntropyLoss(weight=torch.linspace(0.2, 3.0, 10))
    ),
    "loss of a subclass": lambda: Smoothed(),
    "forward pre-hook on the first module": lambda: Custom(hooked(lambda m: m[0].register_forward_pre_hook(halve))),
    "forward hook on the first module": lambda: Custom(hooked(lambda m: m[0].register_forward_hook(halve))),
    "forward hook on a leading Flatten": lambda: Custom(hooked(lambda m: m[0].register_forward_hook(halve), True)),
    "backward pre-hook on the first module": lambda: Custom(
        hooked(lambda m: m[0].register_full_backward_pre_hook(halve))
    ),
    "backward hook on a hidden Linear": lambda: Custom(hooked(lambda m: m[2].register_full_backward_hook(halve))),
    "forward hook on the model": lambda: Custom(hooked(lambda m: m.register_forward_hook(halve))),
    "gradient hook on a weight": lambda: Custom(hooked(lambda m: m[0].weight.register_hook(halve))),
    "forward set on an instance": lambda: Custom(instance_forward),
    "frozen weight": lambda: Custom(hooked(lambda m: m[0].weight.requires_grad_(False))),
    "dropout": lambda: Custom(lambda: nn.Sequential(nn.Linear(20, 32), nn.Dropout(0.3), nn.Linear(32, 10))),
    "GELU": lambda: Custom(lambda: nn.Sequential(nn.Linear(20, 32), nn.GELU(), nn.Linear(32, 10))),
    "no biases (fast step)": lambda: Custom(
        lambda: nn.Sequential(nn.Linear(20, 32, bias=False), nn.ReLU(), nn.Linear(32, 10, bias=False))
    ),
    "plain MLP (fast step)": lambda: Custom(plain),
}

GLOBAL_HOOKS: dict[str, Callable[[], torch.utils.hooks.RemovableHandle]] = {
    "global forward hook": lambda: module_hooks.register_module_forward_hook(linear_only(halve)),
    "global forward pre-hook": lambda: module_hooks.register_module_forward_pre_hook(linear_only(halve)),
    "global backward hook": lambda: module_hooks.register_module_full_backward_hook(halve_input_grads),
    "global backward pre-hook": lambda: module_hooks.register_module_full_backward_pre_hook(linear_only(halve)),
}


def epochs(objective: Synthetic, fast: bool) -> list[float]:
    """Each epoch's train loss, val loss and val accuracy."""
    data = objective.load_data(torch.device("cpu"), None)
    records = train(STRATEGY, objective, data, seed=5, fast_kernels=fast)
    return [x for r in records for x in (r.train_loss, r.val_loss, r.val_acc)]


def used_fast_step(objective: Synthetic) -> bool:
    torch.manual_seed(0)
    return MLPStep.for_model(objective.make_model(), objective, TARGETS) is not None


@pytest.mark.parametrize("make", OBJECTIVES.values(), ids=OBJECTIVES.keys())
def test_training_ends_as_autograds(make: Callable[[], Synthetic]) -> None:
    objective = make()
    assert epochs(objective, fast=True) == pytest.approx(epochs(objective, fast=False), rel=1e-4)
    assert used_fast_step(objective) == ("(fast step)" in next(k for k, v in OBJECTIVES.items() if v is make))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # the first Linear's input needs no gradient
@pytest.mark.parametrize("register", GLOBAL_HOOKS.values(), ids=GLOBAL_HOOKS.keys())
def test_global_module_hooks_take_autograd(register: Callable[[], torch.utils.hooks.RemovableHandle]) -> None:
    objective = Custom(plain)
    handle = register()
    try:
        assert epochs(objective, fast=True) == pytest.approx(epochs(objective, fast=False), rel=1e-4)
        assert not used_fast_step(objective)
    finally:
        handle.remove()
    assert used_fast_step(objective)


def test_only_objectives_that_opt_in_get_the_fast_step() -> None:
    class Plain(Objective):
        def make_model(self) -> nn.Module:
            return plain()

    assert MLPStep.for_model(plain(), Plain(), TARGETS) is None
    assert MLPStep.for_model(plain(), OBJECTIVE, TARGETS) is not None
    assert MLPStep.for_model(plain(), OBJECTIVE, TARGETS.clone().fill_(-100)) is None  # cross-entropy ignores -100
    mnist = MnistMLP()
    assert MLPStep.for_model(mnist.make_model(), mnist, TARGETS) is not None  # the default objective keeps it
