"""The model contract, and rebuilding a trained model from its saved files outside the harness."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .data import InputSpec
from .task import Task


class AVModel(nn.Module):
    """Base class for every model, uni-modal or fused.

    Subclasses set ``modalities`` (the inputs they read) and ``head_latent`` (the latent ``head``
    consumes), and implement ``embed`` and ``head``. ``forward`` returns logits, never probabilities.
    """

    modalities: tuple[str, ...] = ()
    head_latent: str = "fused"

    def embed(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named latents: "audio", "video", "fused" (those the model has)."""
        raise NotImplementedError

    def head(self, latent: torch.Tensor) -> torch.Tensor:
        """Logits from the latent named ``head_latent``."""
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(inputs)[self.head_latent])


def model_spec(plugin: str, params: dict, task: Task, specs: dict[str, InputSpec]) -> dict:
    """The JSON-able description ``create_model`` rebuilds a model from."""
    return {
        "plugin": plugin,
        "params": dict(params),
        "task": task.to_dict(),
        "specs": {m: s.to_dict() for m, s in specs.items()},
    }


def create_model(spec: dict | str | Path) -> AVModel:
    """Build an (untrained) model from a spec dict or a ``model.json`` written by the harness."""
    from .plugins import get_registry

    if isinstance(spec, (str, Path)):
        spec = json.loads(Path(spec).read_text())
    factory = get_registry().get("model", spec["plugin"])
    task = Task.from_dict(spec["task"])
    specs = {m: InputSpec.from_dict(s) for m, s in spec["specs"].items()}
    model = factory(task=task, specs=specs, **spec.get("params", {}))
    if not isinstance(model, AVModel):
        raise TypeError(f"model plugin {spec['plugin']!r} returned {type(model).__name__}, not an AVModel")
    return model


def save_state_dict(model: nn.Module, path: str | Path) -> None:
    """Write the model's weights as a plain ``torch.save(state_dict)`` file (CPU tensors), atomically."""
    import io

    from .store import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def save_model(model: nn.Module, spec: dict, folder: str | Path) -> None:
    """Write ``model.pt`` (a plain state_dict) and ``model.json`` (its spec) atomically."""
    from .store import atomic_write_json

    folder = Path(folder)
    save_state_dict(model, folder / "model.pt")
    atomic_write_json(folder / "model.json", spec)


def load_model(folder: str | Path, map_location: str | torch.device = "cpu") -> AVModel:
    """Rebuild a trained model from a folder holding ``model.json`` and ``model.pt``."""
    folder = Path(folder)
    model = create_model(folder / "model.json")
    state = torch.load(folder / "model.pt", map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.eval()
