"""What the circuit engine reads: one left-padded batch of clean rows, their corruption, roles, metric.

The engine's narrow interface (no records, no tokenizer): token tensors with **left** padding
(the answer is predicted at the last column of every row) and explicit ``position_ids``, a
per-token role id (``-1`` for padding), the answer token ids of the logit difference
``m = logit(clean_target) - logit(corrupt_target)`` at the last position, and exactly one
corruption:

* ``corrupt_ids``: pair patching (the corrupted prompt, token-aligned with the clean one);
* ``corrupt_embeds``: a corrupted input embedding (tests: small corruptions; EAP-IG's baseline);
* ``role_means``: role-mean ablation, ``[S, R, d]`` (or ``[B, S, R, d]``, per row) mean output of
  every sender at every role (see :mod:`interp.circuit.counterfactual`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gar_tasks.errors import GARConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

CORRUPTIONS = ("corrupt_ids", "corrupt_embeds", "role_means")


@dataclass
class CircuitBatch:
    """One batch for edge attribution and edge patching (see the module docstring)."""

    input_ids: "torch.Tensor"
    attention_mask: "torch.Tensor"
    position_ids: "torch.Tensor"
    role_ids: "torch.Tensor"
    clean_target: "torch.Tensor"
    corrupt_target: "torch.Tensor"
    n_roles: int
    end_role: int
    corrupt_ids: "torch.Tensor | None" = None
    corrupt_embeds: "torch.Tensor | None" = None
    role_means: "torch.Tensor | None" = None

    def __post_init__(self) -> None:
        given = [c for c in CORRUPTIONS if getattr(self, c) is not None]
        if len(given) != 1:
            raise GARConfigError(f"a circuit batch needs exactly one corruption of {', '.join(CORRUPTIONS)}, "
                                 f"got {given or 'none'}")
        b, t = self.input_ids.shape
        for name in ("attention_mask", "position_ids", "role_ids"):
            if tuple(getattr(self, name).shape) != (b, t):
                raise GARConfigError(f"{name} has shape {tuple(getattr(self, name).shape)}, expected {(b, t)}")
        if self.corrupt_ids is not None and tuple(self.corrupt_ids.shape) != (b, t):
            raise GARConfigError(f"corrupt_ids has shape {tuple(self.corrupt_ids.shape)}, expected {(b, t)}")
        if not bool((self.attention_mask[:, -1] == 1).all()):
            raise GARConfigError("the batch must be left-padded (the last column real in every row)")
        real = self.attention_mask.bool()
        roles = self.role_ids
        if bool(((roles < 0) & real).any()) or bool(((roles >= 0) & ~real).any()):
            raise GARConfigError("role ids must be -1 exactly on padding")
        if bool((roles >= self.n_roles).any()):
            raise GARConfigError(f"a role id is >= n_roles ({self.n_roles})")
        if not bool((roles[:, -1] == self.end_role).all()):
            raise GARConfigError("the last token of every row must have the END role (the metric is read there)")

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def corruption(self) -> str:
        return next(c for c in CORRUPTIONS if getattr(self, c) is not None)

    def role_onehot(self, dtype: "torch.dtype") -> "torch.Tensor":
        """``[B, T, R]`` one-hot role indicator, all zero on padding."""
        import torch

        ids = self.role_ids.clamp(min=0)
        onehot = torch.nn.functional.one_hot(ids, self.n_roles).to(dtype)
        return onehot * (self.role_ids >= 0)[..., None].to(dtype)

    def first_difference(self) -> int | None:
        """First column where clean and corrupted token ids differ in any row (pair patching),
        else ``None`` (embeddings and means differ everywhere)."""
        if self.corrupt_ids is None:
            return None
        diff = (self.corrupt_ids != self.input_ids).any(0).nonzero()
        return int(diff[0]) if len(diff) else self.width


__all__ = ["CORRUPTIONS", "CircuitBatch"]
