"""``gar-ndif``: an lm-eval model whose log-likelihoods are computed on NDIF (``remote=True``).

Usage (the plain ``lm_eval`` CLI finds it once gar-eval is installed)::

    export NDIF_HOST=...                # or NDIF_API_KEY for the public service
    lm_eval --model gar-ndif --model_args pretrained=meta-llama/Llama-3.1-70B --tasks gar --batch_size 16

GAR's log-likelihood tasks (``gar``, ``gar_v1``, ``gar_sub`` and their groups: the generation answer's
log-likelihood and the Yes/No choice) need nothing but ``loglikelihood``; the chat route
(``gar_chat``) and free generation are for chat/API models (``local-chat-completions``) and are
refused here. Requests are tokenized exactly as lm-eval's ``hf`` model does (its ``_encode_pair``,
the tokenizer's own special tokens, the same truncation), right-padded into batches of
``batch_size`` sequences, one NDIF request per batch; inside the trace only each row's summed
continuation log-probability and whether the continuation is the greedy one are computed and sent
back (``[rows]`` numbers, whatever the vocabulary and length), so a run costs the bytes of its
prompts. ``remote``: ``true`` (default; NDIF, the model by its Hub id), ``local`` (the same traced
code through nnsight's serialise/deserialise path on a model loaded here: for tests).
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import has_bos_prefix

from gar_tasks.errors import GARConfigError

from .core.loader import load_model
from .core.model import frozen
from .core.remote import server_errors

MODEL_NAME = "gar-ndif"
DEFAULT_MAX_LENGTH = 2048


def _flag(value: Any) -> bool | str:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text == "local":
        return "local"
    raise GARConfigError(f"{MODEL_NAME}: remote must be true or local, got {value!r}")


class NDIFLM(TemplateLM):
    """lm-eval's ``loglikelihood`` on a model that runs on NDIF (see the module docstring)."""

    def __init__(self, pretrained: str | None = None, batch_size: Any = 16, max_length: int | None = None,
                 remote: Any = True, dtype: str = "float32", **kwargs: Any) -> None:
        super().__init__()
        if not pretrained:
            raise GARConfigError(f"{MODEL_NAME}: give pretrained=ORG/NAME (the model's Hub id)")
        unknown = sorted(k for k in kwargs if k not in ("device", "max_batch_size", "trust_remote_code"))
        if unknown:
            raise GARConfigError(f"{MODEL_NAME}: unknown model_args {', '.join(unknown)}")
        self.remote = _flag(remote)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 0 else 16
        m = (load_model(pretrained, remote=True) if self.remote is True else
             load_model(pretrained, dtype, kwargs.get("device") or "cpu"))
        self.model, self.tokenizer, self.desc, self.server = m.model, m.tokenizer, m.desc, m.server
        cfg = self.model.config
        self.max_length = int(max_length or getattr(cfg, "max_position_embeddings", 0) or DEFAULT_MAX_LENGTH)

    # ---- lm-eval's tokenization contract (as its hf model)

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        extra = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            extra = {"add_special_tokens": False}
        return self.tokenizer.encode(string, **extra)

    # ---- scoring

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list:
        from tqdm import tqdm

        rows = []
        for _, context_enc, continuation_enc in requests:  # truncated on the left, as lm-eval's hf model does
            inp = (context_enc + continuation_enc)[-(self.max_length + 1):][:-1]
            rows.append((inp, continuation_enc[-min(len(continuation_enc), len(inp)):]))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths together
        out: list = [None] * len(rows)
        with server_errors(self.remote):
            for lo in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc=MODEL_NAME):
                idx = order[lo:lo + self.batch_size]
                for i, res in zip(idx, self._batch([rows[i] for i in idx])):
                    out[i] = res
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], res)
        return out

    def _batch(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """One traced forward of right-padded rows: per row the continuation's summed log-probability
        and whether every continuation token is the argmax (only these travel back)."""
        import nnsight
        import torch

        width = max(len(inp) for inp, _ in rows)
        n_cont = max(len(cont) for _, cont in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), n_cont), dtype=torch.long)  # where each continuation token is scored
        targets = torch.zeros((len(rows), n_cont), dtype=torch.long)
        valid = torch.zeros((len(rows), n_cont), dtype=torch.bool)
        for b, (inp, cont) in enumerate(rows):
            ids[b, :len(inp)] = torch.tensor(inp)
            mask[b, :len(inp)] = 1
            k = len(cont)
            positions[b, :k] = torch.arange(len(inp) - k, len(inp))
            targets[b, :k] = torch.tensor(cont)
            valid[b, :k] = True
        model = self.model  # the traced block may name only torch, tensors and envoys: not this object
        with frozen(model), model.trace({"input_ids": ids, "attention_mask": mask}, remote=self.remote):
            logits = model.output.logits
            dev = logits.device
            picked = logits.gather(1, positions.to(dev)[:, :, None].expand(-1, -1, logits.shape[-1]))
            logp = torch.log_softmax(picked.float(), -1)
            tok = logp.gather(2, targets.to(dev)[:, :, None])[..., 0]
            v = valid.to(dev)
            total = torch.where(v, tok, torch.zeros_like(tok)).sum(-1)
            greedy = (picked.argmax(-1) == targets.to(dev)) | ~v
            res = nnsight.save((total.detach().double().cpu(), greedy.all(-1).cpu()))
        return [(float(t), bool(g)) for t, g in zip(*res)]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list:
        raise GARConfigError(f"{MODEL_NAME} scores continuations (loglikelihood); rolling perplexity is not "
                             "part of GAR")

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list:
        raise GARConfigError(f"{MODEL_NAME} scores log-likelihoods: use the gar / gar_v1 / gar_sub tasks (the "
                             "chat route gar_chat is for chat/API models)")

    def get_model_info(self) -> dict:
        return {"model": self.desc, "remote": self.remote, "server": self.server}


__all__ = ["MODEL_NAME", "NDIFLM"]
