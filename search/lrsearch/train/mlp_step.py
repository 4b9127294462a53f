"""A hand-derived training step for plain MLPs under cross-entropy: autograd's gradients, in fewer operations.

For an objective that opts in (`fast_mlp_step = True`: its model is an `nn.Sequential` of `Linear`, `ReLU` and
a leading `Flatten`, trained with the default cross-entropy loss), `MLPStep` computes the forward pass, the loss
and every parameter's gradient directly, as `loss.backward()` would (the same operations up to float rounding),
without building an autograd graph. On a CPU core that saves about a sixth of the default objective's step:
autograd's bookkeeping, and a weight-gradient matmul that autograd runs on a transposed layout at half the speed
(benchmarks/epoch_speed.py compares both). The opt-in is the objective's promise, since no check can see
everything that changes what autograd computes; `for_model` still refuses anything it can see that the step
ignores. Every other objective, model or loss is trained by autograd, unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.train.objective import Objective


class MLPStep:
    """Call with a batch: sets `.grad` of every parameter of the model and returns (loss, outputs), detached."""

    def __init__(self, layers: list[nn.Linear | nn.ReLU], flatten: bool):
        self.layers, self.flatten = layers, flatten

    @classmethod
    def for_model(cls, model: nn.Module, objective: Objective, targets: torch.Tensor) -> MLPStep | None:
        """The step for `model`, or None when the objective did not opt in or anything would make it differ.

        It runs only for an objective with `fast_mlp_step = True` and only where nothing it ignores is present:
        the objective's own `loss` (a subclass's method or one set on the instance), targets that are not class
        ids >= 0 (cross-entropy ignores -100), a module reused or a parameter shared (weight tying), a module
        other than Linear, ReLU and a leading Flatten (dropout, other activations, subclasses), a forward or
        backward hook on any module, a global module hook, a `forward` set on an instance, a parameter that is
        frozen, not float32 or has a gradient hook.
        """
        if not getattr(objective, "fast_mlp_step", False) or not _default_loss(objective):
            return None
        if targets.dtype != torch.long or targets.dim() != 1 or (len(targets) and int(targets.min()) < 0):
            return None
        if type(model) is not nn.Sequential or _global_hooks():
            return None
        children = list(model)
        modules = [model, *children]
        if len({id(m) for m in modules}) != len(modules) or any(_customised(m) for m in modules):
            return None
        first = children[0] if children else None
        flatten = type(first) is nn.Flatten
        if isinstance(first, nn.Flatten) and (first.start_dim, first.end_dim) != (1, -1):
            return None
        layers = children[1:] if flatten else children
        if not layers or type(layers[0]) is not nn.Linear or any(type(m) not in (nn.Linear, nn.ReLU) for m in layers):
            return None
        owned = [p for m in layers for p in m.parameters(recurse=False)]
        if len({id(p) for p in owned}) != len(owned) or len(owned) != len(list(model.parameters())):
            return None
        if any(type(p) is not nn.Parameter or not p.requires_grad or p.dtype != torch.float32 for p in owned):
            return None
        if any(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None) for p in owned):
            return None
        return cls(layers, flatten)  # type: ignore[arg-type]

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = inputs.flatten(1) if self.flatten else inputs
        saved = []  # what each layer's backward needs: a Linear's input, a ReLU's output
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                saved.append(h)
                weight_t = layer.weight.t()
                h = h @ weight_t if layer.bias is None else torch.addmm(layer.bias, h, weight_t)
            else:
                h = torch.relu(h)
                saved.append(h)
        log_probs = F.log_softmax(h, dim=1)
        loss = F.nll_loss(log_probs, targets)  # F.cross_entropy, as its two steps
        # d(mean cross-entropy)/d(logits) = (softmax - one_hot(targets)) / batch
        grad = log_probs.exp()
        grad.scatter_add_(1, targets[:, None], torch.full_like(targets[:, None], -1, dtype=grad.dtype))
        grad.div_(len(targets))
        for index in range(len(self.layers) - 1, -1, -1):
            layer, kept = self.layers[index], saved[index]
            if isinstance(layer, nn.Linear):
                layer.weight.grad = grad.t() @ kept  # autograd's layout for this product runs at half the speed
                if layer.bias is not None:
                    layer.bias.grad = grad.sum(0)
                if index > 0:
                    grad = grad @ layer.weight
            else:
                grad = torch.ops.aten.threshold_backward(grad, kept, 0)  # what autograd's ReLU backward runs
        return loss, h


def _default_loss(objective: Objective) -> bool:
    """The objective's `loss` is lrsearch's own cross-entropy: not overridden, not replaced on the instance."""
    loss = getattr(objective, "loss", None)
    return getattr(loss, "__func__", None) is Objective.loss and getattr(loss, "__self__", None) is objective


def _customised(module: nn.Module) -> bool:
    """Hooks or an instance `forward` change what calling the module computes (or its gradients)."""
    hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
    return any(hooks) or "forward" in vars(module)


def _global_hooks() -> bool:
    from torch.nn.modules import module

    hooks = (
        module._global_forward_hooks,
        module._global_forward_pre_hooks,
        module._global_backward_hooks,
        module._global_backward_pre_hooks,
    )
    return any(hooks)
