"""Built-in defenses (training recipes). ``standard``: plain empirical-risk minimisation, the
undefended baseline every other recipe is compared with."""

from __future__ import annotations

import math
import time

import torch

from avharness import AVModel, Dataset, FitContext, NumericalError, UserError, generator

OPTIMIZERS = ("adam", "adamw", "sgd")


def _make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def model_inputs(model: AVModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the modalities the model reads (all of them when it declares none)."""
    wanted = getattr(model, "modalities", ()) or tuple(inputs)
    missing = [m for m in wanted if m not in inputs]
    if missing:
        raise UserError(
            f"model {type(model).__name__} reads {missing} but the dataset gives only {sorted(inputs)}"
        )
    return {m: inputs[m] for m in wanted}


@torch.no_grad()
def split_accuracy(model: AVModel, data: Dataset, split: str, device, batch_size: int = 256) -> tuple[float, int]:
    """(accuracy, samples) of ``model`` on ``split`` in eval mode."""
    model.eval()
    correct = total = 0
    for batch in data.batches(split, batch_size):
        batch = batch.to(device)
        logits = model(model_inputs(model, batch.inputs))
        correct += int(data.task.correct(logits, batch.target).sum())
        total += len(batch)
    return (correct / total if total else float("nan")), total


def _number(value, name: str) -> float:
    # YAML 1.1 reads "1e-3" (no dot) as a string: accept any finite number spelled as one
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if isinstance(value, bool) or not math.isfinite(out):
        raise UserError(f"standard: {name} must be a finite number, got {value!r}")
    return out


class Standard:
    """Mini-batch training on the clean ``train`` split with the task's loss.

    Seeded from the run: ``torch.manual_seed(ctx.seed)`` (dropout and any other torch draw) and one
    shuffle generator per epoch, ``avharness.generator(seed, "shuffle", epoch)``, so a given seed
    trains the same weights from the same initial weights.
    """

    def __init__(self, optimizer: str = "adam", lr: float = 1e-3, epochs: int = 10, batch_size: int = 64,
                 weight_decay: float = 0.0):
        if optimizer not in OPTIMIZERS:
            raise UserError(f"standard: unknown optimizer {optimizer!r} (allowed: {', '.join(OPTIMIZERS)})")
        lr = _number(lr, "lr")
        if not lr > 0:
            raise UserError(f"standard: lr must be a positive number, got {lr!r}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"standard: {name} must be a positive integer, got {value!r}")
        weight_decay = _number(weight_decay, "weight_decay")
        if not weight_decay >= 0:
            raise UserError(f"standard: weight_decay must be >= 0, got {weight_decay!r}")
        self.optimizer, self.lr, self.epochs = optimizer, float(lr), epochs
        self.batch_size, self.weight_decay = batch_size, float(weight_decay)

    name = "standard"

    # --- hooks for training recipes built on this loop (defenses/robust_training.py)
    def _prepare(self, model: AVModel, data: Dataset) -> None:
        """Checks that need the model and the data, before the first step."""

    def _batch_loss(self, model: AVModel, task, batch, ctx: FitContext, epoch: int, step: int):
        """(scalar loss to minimise, rows that went through the training forward pass)."""
        return task.loss(model(model_inputs(model, batch.inputs)), batch.target).mean(), len(batch)

    def _facts(self) -> dict:
        """Recipe-specific facts added to what ``fit`` returns."""
        return {}

    def fit(self, model: AVModel, data: Dataset, ctx: FitContext) -> dict:
        torch.manual_seed(ctx.seed)
        device = torch.device(ctx.device)
        model.to(device)
        self._prepare(model, data)
        opt = _make_optimizer(self.optimizer, model.parameters(), self.lr, self.weight_decay)
        n = data.size("train")
        if n == 0:
            raise UserError(f"{self.name}: the dataset's train split is empty")
        steps_per_epoch = math.ceil(n / self.batch_size)
        advance = ctx.progress(f"{self.name} {type(model).__name__}", self.epochs * steps_per_epoch)

        start = time.perf_counter()
        steps = forward = backward = 0
        epoch_losses: list[float] = []
        for epoch in range(self.epochs):
            model.train()
            loss_sum, seen = 0.0, 0
            shuffle = generator(ctx.seed, "shuffle", epoch)
            for index, batch in enumerate(data.batches("train", self.batch_size, shuffle=shuffle)):
                batch = batch.to(device)
                loss, rows = self._batch_loss(model, data.task, batch, ctx, epoch, index)
                if not torch.isfinite(loss):
                    raise NumericalError(
                        f"{self.name}: training loss became {loss.item()} at epoch {epoch + 1}, step {steps + 1} "
                        f"(optimizer {self.optimizer}, lr {self.lr:g}); lower lr or check the inputs for NaN/inf"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                forward += rows
                backward += rows
                loss_sum += float(loss.detach()) * len(batch)
                seen += len(batch)
                advance()
            epoch_losses.append(loss_sum / max(seen, 1))

        val_accuracy, val_n = (split_accuracy(model, data, "val", device)
                               if "val" in data.splits() else (None, 0))
        model.eval()
        return {
            "epochs": self.epochs,
            "steps": steps,
            "wall_s": round(time.perf_counter() - start, 3),
            "forward_samples": forward + val_n,
            "backward_samples": backward,
            "final_train_loss": epoch_losses[-1] if epoch_losses else None,
            "epoch_train_loss": epoch_losses,
            "val_accuracy": val_accuracy,
            **self._facts(),
        }


def standard(optimizer: str = "adam", lr: float = 1e-3, epochs: int = 10, batch_size: int = 64,
             weight_decay: float = 0.0) -> Standard:
    return Standard(optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay)


class NoTraining:
    """Evaluate a model as loaded from its checkpoint: no training step, no data read.

    ``trains = False`` tells the harness every model under this defense needs a ``checkpoint``
    (a model with random weights is not worth attacking), which ``avharness validate`` checks.
    """

    trains = False

    def fit(self, model, data, ctx) -> dict:
        return {"epochs": 0, "steps": 0, "forward_samples": 0, "backward_samples": 0,
                "note": "evaluated as loaded from its checkpoint (defense none)"}


def none() -> NoTraining:
    return NoTraining()


def register_defenses(register):
    register("standard", standard)
    register("none", none)
