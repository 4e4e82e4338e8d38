"""A frozen torchvision ResNet that embeds decoded video frames into per-second features [T, D].

The seed's video features are 2048-d per-second ImageNet ResNet pool5 vectors whose backbone was
never published (docs/seed_code.md §1.4); avharness lets the user pick the ResNet depth and supply the
weights. Nothing is ever downloaded: the network is built with ``weights=None`` and its state dict
is read from a local file with ``torch.load(path, weights_only=True)``. The classifier (``fc``) is
replaced by an identity, so the output is the global-average-pooled last stage (post-ReLU, hence
>= 0): 512-d for resnet18/34, 2048-d for resnet50/101/152.

Frames are prepared with torchvision's own evaluation preset of the ImageNet weights
(``IMAGENET1K_V1.transforms()``: resize the shorter side to 256, centre-crop 224, ImageNet mean/std
normalisation), so the statistics come from the library rather than being typed in here. The
model is loaded on first use, kept in eval mode and run under ``torch.no_grad``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from avharness import UserError
from avharness.weights import file_sha256

#: output width of each supported architecture (known without building it, for the dataset spec)
ARCHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}


def how_to_get(arch: str) -> str:
    return (f"save a torchvision {arch} state dict on a machine that can download, e.g. "
            f"torch.save(torchvision.models.{arch}(weights='IMAGENET1K_V1').state_dict(), '{arch}.pth'), "
            f"and pass its local path, e.g. --set data.video_weights=/path/to/{arch}.pth (avharness never downloads)")


def check_arch(arch, owner: str) -> str:
    if arch not in ARCHS:
        raise UserError(f"{owner}: video_backbone must be one of {', '.join(ARCHS)}, got {arch!r}")
    return arch


def check_weights(path, arch: str, owner: str, param: str = "video_weights") -> Path:
    """The weights file as a Path; UserError naming the file and what to provide when it is absent."""
    if path is None or str(path).strip() == "":
        raise UserError(f"{owner}: the {arch} video backbone needs {param}: a local weights file; {how_to_get(arch)}")
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise UserError(f"{owner}: {param} {p} {what}; it must be a local {arch} weights file: {how_to_get(arch)}")
    return p


class FrameEmbedder:
    """Embed frames with a frozen ResNet. Cheap to construct: the weights are read on first use."""

    def __init__(self, arch: str, weights: str | Path, device: str = "cpu", chunk: int = 64,
                 owner: str = "video backbone"):
        self.arch = check_arch(arch, owner)
        self.weights = check_weights(weights, arch, owner)
        self.device = torch.device(device)
        self.chunk = int(chunk)
        self.owner = owner
        self.dim = ARCHS[arch]
        self._model = None
        self._preset = None
        self._sha256: str | None = None
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable: the model is reloaded from the file on first use
        state = dict(self.__dict__)
        state.update(_model=None, _preset=None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _load(self):
        import torchvision

        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"{self.owner}: cannot read video weights {self.weights} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            f"it must be a torch.save'd state dict: {how_to_get(self.arch)}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # a training checkpoint that wraps the state dict
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"{self.owner}: video weights {self.weights} are not a state dict of tensors; "
                            f"{how_to_get(self.arch)}")
        # DataParallel checkpoints prefix every key with "module."
        state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is dropped
        model = getattr(torchvision.models, self.arch)(weights=None)
        model.fc = torch.nn.Identity()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).replace("\n", " ")[:240]
            raise UserError(f"{self.owner}: video weights {self.weights} do not fit torchvision's {self.arch} "
                            f"({first}); pass weights of that architecture or change video_backbone") from None
        model.eval().requires_grad_(False)
        self._preset = torchvision.models.get_model_weights(self.arch).IMAGENET1K_V1.transforms()
        return model.to(self.device)

    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    @torch.no_grad()
    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, H, W, 3] RGB frames (or float [T, 3, H, W] in [0, 1]) -> float32 [T, D] on the CPU."""
        model = self.model()
        x = frames.permute(0, 3, 1, 2) if frames.dtype == torch.uint8 else frames
        out = []
        for start in range(0, x.shape[0], self.chunk):
            part = x[start:start + self.chunk].to(self.device)
            out.append(model(self._preset(part)).float().cpu())
        return torch.cat(out)

    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.weights)
        return self._sha256

    def identity(self) -> dict:
        """What determines the embeddings, cheaply (no hashing): for manifests."""
        st = self.weights.stat()
        return {"arch": self.arch, "weights": self.weights.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def describe(self) -> dict:
        return {
            "backbone": f"torchvision {self.arch}, fc replaced by identity (global-average-pooled last stage)",
            "dim": self.dim,
            "weights": str(self.weights),
            "weights_sha256": self.sha256(),
            "preprocessing": "torchvision IMAGENET1K_V1 preset: resize shorter side 256 (bilinear, antialias), "
                             "centre crop 224, ImageNet mean/std",
            "mode": "eval, frozen, no grad",
            "device": str(self.device),
        }
