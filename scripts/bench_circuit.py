"""Benchmark of the circuit engine on the embedded SmolLM2-135M (CPU, float32).

One batch of ``--n`` gen n_r = 0 query-swap pairs (paper profile, default role schema;
``--counterfactual context`` or ``mean`` for the other corruptions: the context values swapped, or
role-mean ablation with means fitted on the 400 records' items):

* edge attribution (EAP, one nnsight session) vs a plain forward + backward of the same batch
  (the metric's gradient w.r.t. the input embeddings, parameters frozen): median seconds;
* one exact edge-patching evaluation (``EdgePatcher.evaluate``) of random circuits of 1, 10, 50
  and 100 % of the edges vs a plain forward;
* edge counts at role level (existing in the data) and at token level;
* optionally (``--spot K``) exact single-edge patching of the top-K residual edges by |EAP| and
  K random ones: Pearson / Spearman of EAP vs exact;
* with ``--methods``, the costlier attributions (``exact_softmax``, EAP-IG with 5 steps) as ratios to
  AtP's own cost (a corrupted forward + a clean forward and backward);
* peak resident memory of the process (ru_maxrss) after each stage, and (Linux) the peak of each
  stage alone (the high-water mark reset before it: ``stage_peak_mb``).

``--arch TYPE`` replaces SmolLM2 by a random model of that architecture (``config.model_type`` of the
architecture table) of SmolLM2's vocabulary and equal width for every type (``--layers``, ``--width``,
``--heads``, ``--kv``), on the same batch; ``--arch all`` runs every type in one process and prints one
JSON object per type (ratios side by side from one run). Timings do not depend on the weights.

Prints one JSON object. Usage: ``.venv/bin/python scripts/bench_circuit.py --n 8 --repeats 3``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_stage_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux ``clear_refs`` 5), so the next
    :func:`_stage_peak_mb` is the peak of one stage; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _stage_peak_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


#: types benchmarked by ``--arch all`` (gemma3 is the same text model as gemma3_text inside a wrapper)
ALL_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "gpt2",
             "gpt_neox")


def random_model(model_type: str, vocab: int, layers: int, width: int, heads: int, kv: int):
    """A random float32 causal LM of ``model_type`` with these sizes (head_dim = width / heads)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hd = width // heads
    if model_type == "gpt2":
        kw = dict(n_embd=width, n_layer=layers, n_head=heads, n_positions=2048)
    elif model_type == "gpt_neox":
        kw = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=4 * width, max_position_embeddings=2048)
    else:
        kw = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                  intermediate_size=4 * width, head_dim=hd, max_position_embeddings=2048)
        if model_type.startswith("gemma"):
            kw["query_pre_attn_scalar"] = hd
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab, **kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="pairs in the batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spot", type=int, default=0, help="top-K + K random residual edges checked exactly")
    ap.add_argument("--methods", action="store_true", help="also time --exact-softmax and 5 EAP-IG steps")
    ap.add_argument("--counterfactual", default="pair", choices=("pair", "context", "mean"))
    ap.add_argument("--arch", default="smollm2", help="smollm2, a model type of the architecture table, or all")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv", type=int, default=2)
    args = ap.parse_args()
    for arch in (ALL_ARCHS if args.arch == "all" else (args.arch,)):
        bench(args, arch)


def bench(args: argparse.Namespace, arch: str) -> None:
    """One JSON object of figures for ``arch`` (see the module docstring)."""

    import numpy as np
    import torch

    from gar_tasks.generate import GeneratorConfig
    from gar_tasks.models import embedded_model_path, load_embedded
    from interp.circuit.counterfactual import RoleMeans, make_counterfactuals
    from interp.circuit.eap import attribution_batch, edge_presence
    from interp.circuit.patch import EdgePatcher, full_masks
    from interp.circuit.roles import load_schema
    from interp.core.model import as_nnsight

    torch.set_num_threads(args.threads)
    if arch == "smollm2":
        model, tok = load_embedded("smollm2", "float32")
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(embedded_model_path("smollm2"))
        model = random_model(arch, len(tok), args.layers, args.width, args.heads, args.kv)
    model.requires_grad_(False)
    embed = model.get_input_embeddings()
    nn_model = as_nnsight(model, tok)
    schema = load_schema("default")
    records = [r for r in GeneratorConfig(profile="paper").build() if r.family == "gen" and r.n_r == 0]
    cf = make_counterfactuals(records[:400], tok, schema, "context" if args.counterfactual == "context" else "pair")
    order = cf.batch_indices(args.n)
    if args.counterfactual == "mean":
        batch = cf.batch(order[len(order) // 2], means=RoleMeans.fit(model, cf, args.n), model=model)
    else:
        batch = cf.batch(order[len(order) // 2])
    out: dict = {"arch": arch, "counterfactual": args.counterfactual, "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                 "torch": torch.__version__,
                 "pairs": batch.size, "width": batch.width, "roles": len(schema.roles),
                 "counterfactual_counts": cf.counts}

    def fwd_bwd():
        emb = embed(batch.input_ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits[:, -1]
        m = (logits.gather(1, batch.clean_target[:, None]) - logits.gather(1, batch.corrupt_target[:, None])).sum()
        m.backward()

    def fwd():
        with torch.no_grad():
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)

    out["stage_peak_mb"] = {}
    _reset_stage_peak()
    fwd_bwd()
    out["forward_backward_s"] = _median_time(fwd_bwd, args.repeats)
    out["forward_s"] = _median_time(fwd, args.repeats)
    out["peak_mb_plain"] = _peak_mb()
    out["stage_peak_mb"]["plain"] = _stage_peak_mb()
    result = {}
    _reset_stage_peak()

    def eap():
        result["scores"] = attribution_batch(nn_model, batch)

    out["eap_s"] = _median_time(eap, args.repeats)
    out["eap_over_forward_backward"] = out["eap_s"] / out["forward_backward_s"]
    # AtP's own cost: a graph-free corrupted forward + a clean forward and backward
    out["eap_over_atp_estimate"] = out["eap_s"] / (out["forward_s"] + out["forward_backward_s"])
    out["peak_mb_after_eap"] = _peak_mb()
    out["stage_peak_mb"]["eap"] = _stage_peak_mb()
    if args.methods:  # the costlier attributions, as ratios to AtP's own cost
        atp = out["forward_s"] + out["forward_backward_s"]
        for name, kw in (("exact_softmax", {"exact_softmax": True}), ("ig_5", {"ig_steps": 5})):
            sec = _median_time(lambda: attribution_batch(nn_model, batch, **kw), args.repeats)
            out.setdefault("methods_s", {})[name] = sec
            out.setdefault("methods_over_atp_estimate", {})[name] = sec / atp
    _reset_stage_peak()
    t = time.perf_counter()
    patcher = EdgePatcher(model, batch)
    out["patcher_setup_s"] = time.perf_counter() - t
    full = full_masks(patcher.shape, batch.n_roles)
    has_r0, has_a0 = edge_presence(patcher.shape, [batch], batch.n_roles, batch.end_role)
    rng0 = np.random.default_rng(1)
    out["evaluate_s"] = {}
    for frac in (0.01, 0.1, 0.5, 1.0):  # random circuits of these fractions of the existing edges
        masks = ((rng0.random(has_r0.shape) < frac) & has_r0, (rng0.random(has_a0.shape) < frac) & has_a0)
        out["evaluate_s"][str(frac)] = _median_time(lambda: patcher.evaluate(*masks), args.repeats)
    out["evaluate_over_forward"] = {k: v / out["forward_s"] for k, v in out["evaluate_s"].items()}
    out["peak_mb_after_patcher"] = _peak_mb()
    out["stage_peak_mb"]["patcher"] = _stage_peak_mb()
    shape = patcher.shape
    has_r, has_a = edge_presence(shape, [batch], batch.n_roles, batch.end_role)
    T = batch.width
    exists = shape.edge_exists()
    out["edges_role_level"] = {"resid": int(has_r.sum()), "attn": int(has_a.sum()),
                               "total": int(has_r.sum() + has_a.sum())}
    out["edges_token_level"] = {"resid": int(exists[:, :-1].sum() * T + exists[:, -1].sum()),
                                "attn": int(shape.n_layers * shape.n_heads * 3 * T * (T + 1) // 2)}
    out["edges_position_agnostic"] = int(exists.sum() + shape.n_layers * shape.n_heads * 3)
    out["reachability"] = cf.reachability()
    if args.spot:
        resid = result["scores"][0]
        idx = np.argwhere(has_r)
        vals = np.abs(resid[tuple(idx.T)])
        top = idx[np.argsort(-vals)[:args.spot]]
        rng = np.random.default_rng(0)
        rand = idx[rng.choice(len(idx), args.spot, replace=False)]
        chosen = np.concatenate([top, rand])
        base = patcher.metrics(*full).sum()
        exact = []
        for e in chosen:
            m = full[0].copy()
            m[tuple(e)] = False
            exact.append(patcher.metrics(m, full[1]).sum() - base)
        est = resid[tuple(chosen.T)]
        rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731 (no ties in practice)
        out["spot"] = {"n": len(chosen), "pearson": float(np.corrcoef(est, exact)[0, 1]),
                       "spearman": float(np.corrcoef(rank(est), rank(np.array(exact)))[0, 1]),
                       "sign_agreement": float(np.mean(np.sign(est) == np.sign(exact)))}
    print(json.dumps(out, indent=1), flush=True)


if __name__ == "__main__":
    main()
