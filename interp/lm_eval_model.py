"""``gar-hf-intervened``: lm-eval's HF model with a head intervention installed (label-free modes).

Usage (the plain ``lm_eval`` CLI finds it once gar-eval is installed, see below)::

    lm_eval --model gar-hf-intervened \\
        --model_args pretrained=ORG/NAME,heads=14:0;15:3,mode=ablate --tasks gar_cls_nr0_gender_city
    # mode=scale,factor=0.5   multiply the heads' outputs by 0.5
    # mode=mean,means=FILE.pt replace them by a mean activation ([layers, heads, head_dim] tensor,
    #                         e.g. torch.save(interp.intervene.head_means(model, ids), FILE.pt))

``heads``: ``layer:head`` pairs separated by ``;`` (0-based). lm-eval splits ``--model_args`` on
``,`` and turns number-like values into numbers, so ``,`` cannot separate heads and a single
``14.0`` would arrive as a float: ``:`` is the documented separator (``14.0;15.3`` also works
when there are two or more heads). Quote the whole ``--model_args`` in a shell (``;`` ends a
command). ``pretrained`` is any model name of :func:`interp.core.loader.load_model` (an embedded
model such as ``smollm2``, a folder, or a Hub id, fetched as lm-eval would), loaded by that one
loader: ``dtype`` ``float32`` | ``bfloat16`` | ``float16`` (default: what the config declares, else
float32) and ``device`` ``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` (default ``auto``: accelerate's
``device_map="auto"`` over every visible GPU, one model split over several; plain CPU without a GPU).
Every other argument is HFLM's (``batch_size`` ...).

Registration: ``gar_tasks.lm_eval_hook`` (run by the installed ``.pth`` file) registers the lazy
placeholder ``"gar-hf-intervened" -> "interp.lm_eval_model:InterventionHFLM"`` in lm-eval's
``model_registry`` right after ``lm_eval.models`` is first imported (lm-eval's ``get_model`` does
that), so this module (and torch) is only imported when the model is actually requested.
"""

from __future__ import annotations

from typing import Any

from lm_eval.models.huggingface import HFLM

from gar_tasks.errors import GARConfigError

from .core.loader import config_dtype, load_model, resolve_model
from .intervene import LABEL_FREE_MODES, install, parse_heads

MODEL_NAME = "gar-hf-intervened"


class InterventionHFLM(HFLM):
    """HFLM whose model carries :func:`interp.intervene.install` hooks for its whole life."""

    def __init__(self, pretrained: Any = None, heads: Any = None, mode: str = "ablate", factor: float = 0.0,
                 means: Any = None, dtype: str | None = None, device: str | None = None, **kwargs: Any) -> None:
        if mode not in LABEL_FREE_MODES:
            raise GARConfigError(f"{MODEL_NAME}: mode must be one of {', '.join(LABEL_FREE_MODES)} "
                                 f"(label-guided needs gold labels: use interp.intervene), got {mode!r}")
        self.gar_heads = parse_heads(heads)
        if not self.gar_heads:
            raise GARConfigError(f"{MODEL_NAME}: give heads=layer:head;layer:head (e.g. heads=14:0;15:3)")
        self.gar_mode, self.gar_factor = mode, float(factor)
        if mode == "mean":
            if means is None:
                raise GARConfigError(f"{MODEL_NAME}: mode=mean needs means=FILE.pt "
                                     "(a [layers, heads, head_dim] tensor, see interp.intervene.head_means)")
            if isinstance(means, str):
                import torch

                means = torch.load(means, map_location="cpu", weights_only=True)
        if isinstance(pretrained, str):  # our one loader; HFLM takes the loaded model as it is
            if dtype in (None, "auto"):
                dtype = config_dtype(resolve_model(pretrained, download=True))
            loaded = load_model(pretrained, dtype, device or "auto", nnsight=False, download=True)
            pretrained = loaded.hf
            kwargs.setdefault("tokenizer", loaded.tokenizer)
        elif dtype is not None or device is not None:
            kwargs.update({k: v for k, v in (("dtype", dtype), ("device", device)) if v is not None})
        super().__init__(pretrained=pretrained, **kwargs)
        self.intervention = install(self.model, self.gar_heads, mode, factor=self.gar_factor, means=means)

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["gar_intervention"] = {"heads": [list(h) for h in self.gar_heads], "mode": self.gar_mode,
                                    "factor": self.gar_factor}
        return info


__all__ = ["InterventionHFLM", "MODEL_NAME"]
