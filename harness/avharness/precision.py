"""Mixed precision for attacks and evaluation (the suite's ``precision: fp32 | bf16 | fp16``).

``with_precision(model, precision, device)`` wraps a trained model so that its forward pass (and
``embed``/``head``) runs under ``torch.autocast`` and hands back float32 outputs. Everything around
the model stays in float32: the inputs and their gradients (autocast casts a float32 input down for
the matmuls and convolutions, and the cast's backward hands float32 gradients back), the attack's
state (perturbation, step, projection) and the loss (computed on the float32 logits). Training is
always float32; only attacks and evaluation use the suite's precision.

No GradScaler: a GradScaler scales the loss so that small *parameter* gradients survive float16,
and unscales them before the optimiser step. An attack needs only the input gradient, and the
attacks of this harness use its sign (L∞) or its direction (L2), which a constant scale does not
change, so there is nothing to unscale. What float16 can do is overflow: activations or logits
above 65,504 become inf. The executor refuses non-finite logits (``NumericalError``), so an
overflow stops the cell with a message instead of a wrong number; use bf16 (float32's range) on
hardware that has it, and fp16 only for models known to stay in range. Gradients that underflow to
zero in float16 show up in the report's ``zero_gradient_share`` check.
"""

from __future__ import annotations

import torch

from .model import AVModel

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Autocast(AVModel):
    """A model whose forward, embed and head run under autocast and return float32."""

    def __init__(self, model: AVModel, dtype: torch.dtype, device_type: str):
        super().__init__()
        self.inner = model
        self.modalities = tuple(model.modalities)
        self.head_latent = model.head_latent
        self._dtype, self._device_type = dtype, device_type

    def _cast(self):
        return torch.autocast(device_type=self._device_type, dtype=self._dtype)

    def embed(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self._cast():
            return {k: v.float() for k, v in self.inner.embed(inputs).items()}

    def head(self, latent: torch.Tensor) -> torch.Tensor:
        with self._cast():
            return self.inner.head(latent).float()

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with self._cast():
            return self.inner(inputs).float()

    def __getattr__(self, name):  # anything else a plugin reads of its model (a frontend, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def with_precision(model: AVModel, precision: str, device: torch.device) -> AVModel:
    if precision == "fp32":
        return model
    return Autocast(model, DTYPES[precision], torch.device(device).type).eval()
