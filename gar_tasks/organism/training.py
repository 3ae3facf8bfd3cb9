"""The organism's training: the model (a small grouped-query Llama), the phases (drill phases by
step, then epochs of the main data), the losses, the validation metric as lm-eval computes it,
and ``train``, the loop that writes a model folder with its training record.

``train`` takes the options of ``gar organism train`` (an ``argparse.Namespace``; see
``gar_tasks.organism.cli``) and is seeded by them alone: the same options on the same machine
give the same weights. torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GARConfigError
from .data import (SPECIALS, build_contrast, build_question_drills, build_records, build_tokenizer, encode,
                   entity_tokens, fact_sentences, pack_facts, vocabulary_words)
from .drills import DRILL_FORMS, LABEL_FORMS, association_drills, compare_forms, drill_indices
from .record import check_output_folder, check_resume, training_record, write_record

def phase_batch(step: int, phases: list[tuple[int, list[list[int]]]]) -> list[int] | None:
    """The batch of ``step`` in the drill phases ((steps, batches) in order, each cycling through
    its batches), or None once they are over: the main phase's batches follow the epoch instead."""
    for n, order in phases:
        if step < n:
            return order[step % len(order)]
        step -= n
    return None


def with_retrieval(idx: list[int], pool: list[int], ratio: float, seed: int, phase: int) -> list[int]:
    """A comparison phase's sequences ``idx`` plus a seeded sample of ``ratio`` x as many from
    ``pool`` (the retrieval drills), so the phase keeps retrieval. Why: from trained weights a
    phase of ``match`` alone forms the comparison and erases retrieval (measured: at-key 0.00 after such a phase)."""
    n = round(ratio * len(idx))
    if n <= 0 or not pool:
        return list(idx)
    rng = random.Random(f"compare-keep|{seed}|{phase}")
    extra = rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]
    return list(idx) + extra


def make_model(args, vocab_size: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=args.d_model, intermediate_size=args.mlp,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=512,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def load_weights(model, folder: Path) -> None:
    """Start ``model`` from a saved model folder's weights (any storage dtype); ValueError when
    they do not fit its shape, rather than a partial load."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        src = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.load_state_dict(src.state_dict())
    except (RuntimeError, ValueError, OSError) as e:
        raise ValueError(f"its weights do not fit this model ({str(e).splitlines()[0]})") from None


def cosine_lr(lr: float, step: int, warmup: int, frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``lr`` as ``frac`` (the
    share of the schedule done: of the steps, or of the time budget) goes from 0 to 1."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, frac)))))


def batches_for_epoch(lengths: list[int], batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-grouped batches (little padding), in a seeded random order."""
    rng = random.Random(f"organism|{seed}|{epoch}")
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    out = []
    mega = 4096
    for m in range(0, len(idx), mega):
        part = sorted(idx[m:m + mega], key=lambda i: lengths[i])
        cur: list[int] = []
        cur_max = 0
        for i in part:
            L = max(cur_max, lengths[i])
            if cur and L * (len(cur) + 1) > batch_tokens:
                out.append(cur)
                cur, L = [], lengths[i]
            cur.append(i)
            cur_max = L
        if cur:
            out.append(cur)
    rng.shuffle(out)
    return out


def subset_batches(lengths: list[int], idx: list[int], batch_tokens: int, seed: int,
                   epoch: int) -> list[list[int]]:
    """``batches_for_epoch`` over the sequences ``idx`` alone (a training phase's own data)."""
    return [[idx[j] for j in b] for b in batches_for_epoch([lengths[i] for i in idx], batch_tokens, seed, epoch)]


def main_phase_indices(n: int, drill_idx: range, share: float, seed: int, epoch: int) -> list[int]:
    """The sequences of one main-phase epoch: all of them, except that only a seeded ``share`` of
    the drills (fresh each epoch) is kept, so the GAR data and facts get more of the steps once
    retrieval has formed in the drill phases."""
    if share >= 1.0:
        return list(range(n))
    rng = random.Random(f"main-drills|{seed}|{epoch}")
    kept = set(rng.sample(drill_idx, round(share * len(drill_idx))))
    return [i for i in range(n) if i not in drill_idx or i in kept]


def collate(data, batch, pad_id: int):
    import torch

    T = max(len(data[i][0]) for i in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    rows, cols = [], []
    for r, i in enumerate(batch):
        seq, tg = data[i]
        ids[r, :len(seq)] = torch.tensor(seq)
        rows += [r] * len(tg)
        cols += tg
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    return ids, rows_t, cols_t, ids[rows_t, cols_t + 1]


def target_loss(model, ids, rows, cols, labels, pad_id: int = -100, lm_weight: float = 0.0):
    """Cross-entropy on the answer positions, plus ``lm_weight`` x the next-token loss on every
    position: the dense signal teaches in-context retrieval (names and items repeat between
    context and question) far sooner than the answers alone (measured: answer-only training
    was still at chance after 400 steps)."""
    import torch.nn.functional as F

    # right padding + causal attention: real positions never see the pads, so no mask is needed
    h = model.model(input_ids=ids).last_hidden_state
    logits = model.lm_head(h[rows, cols])
    loss = F.cross_entropy(logits.float(), labels)
    if lm_weight > 0:
        nxt = ids[:, 1:].masked_fill(ids[:, 1:] == pad_id, -100)
        all_logits = model.lm_head(h[:, :-1])
        loss = loss + lm_weight * F.cross_entropy(all_logits.flatten(0, 1).float(), nxt.flatten(),
                                                  ignore_index=-100)
    return loss, logits


def previous_token_loss(model, n: int, length: int, low: int, high: int, device):
    """Auxiliary task: on random token ids, output the token *before* the current one.

    Why: selecting a context item by its key needs the value's position to carry its key (a
    previous-token head) and a later head to match the query against it. Neither is rewarded
    until the other exists, so both sit on a plateau where the model answers any context item
    of the right type (1/3). A previous-token head is rewarded by this task at once; with it the
    matching head forms (scripts/probe_retrieval.py, multi-query recall of 2 pairs: 0.50 for
    3000 steps without, 0.96 from step 2400 with; docs/results.md). The global torch RNG draws
    the ids, so a resumed run continues the same stream."""
    import torch
    import torch.nn.functional as F

    ids = torch.randint(low, high, (n, length + 1)).to(device)
    h = model.model(input_ids=ids).last_hidden_state[:, 1:]
    return F.cross_entropy(model.lm_head(h).flatten(0, 1).float(), ids[:, :-1].flatten())


def evaluate(model, tokenizer, records, max_n: int | None = None) -> dict:
    """Accuracy as lm-eval computes it: cls = argmax over {' Yes', ' No'} of the label
    log-likelihood; gen = greedy decoding reproduces every answer token (teacher forced)."""
    import torch

    by: dict[str, list[int]] = {}
    model.eval()
    yes, no = tokenizer.convert_tokens_to_ids(["Yes", "No"])
    recs = records if max_n is None else records[:max_n]
    with torch.no_grad():
        for i in range(0, len(recs), 64):
            chunk = recs[i:i + 64]
            p = tokenizer([r.prompt for r in chunk], add_special_tokens=False)["input_ids"]
            a = tokenizer([" " + r.answer for r in chunk], add_special_tokens=False)["input_ids"]
            seqs = [x + y for x, y in zip(p, a)]
            T = max(map(len, seqs))
            ids = torch.full((len(seqs), T), tokenizer.pad_token_id, dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s)
            logits = model(input_ids=ids.to(model.device)).logits.float().cpu()
            for r, rec in enumerate(chunk):
                n0 = len(p[r])
                if rec.family == "cls":
                    ok = bool((logits[r, n0 - 1, yes] > logits[r, n0 - 1, no]) == (rec.answer == "Yes"))
                else:
                    pred = logits[r, n0 - 1:n0 - 1 + len(a[r])].argmax(-1).tolist()
                    ok = pred == a[r]
                for key in (rec.family, f"{rec.family}_nr{rec.n_r}"):
                    by.setdefault(key, []).append(int(ok))
    model.train()
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(by.items())} | {
        f"n_{k}": len(v) for k, v in sorted(by.items()) if "_" not in k}


@dataclass
class TrainingData:
    """The examples of a run and where each phase's sequences are among them."""

    examples: list[tuple]
    tokenizer_texts: list[str]
    drill_idx: range
    warm_idx: list[int]
    then_idx: list[int]
    compare_idx: list[list[int]]
    counts: dict[str, int] = field(default_factory=dict)
    data_seconds: float = 0.0


def build_training_data(args) -> TrainingData:
    """Every example of a run in training order (GAR records, fact packs, association drills,
    contrast instances, question drills, classification question drills) and the phase index
    lists: drill-first (``FIRST_FORMS``), drills-then, and one comparison phase per Yes/No form
    (one for them all when mixed), each with its share of retrieval drills kept."""
    t0 = time.time()
    examples = build_records(args.n_per_task, args.chunks, args.work, args.gen_procs)
    t_data = time.time() - t0
    facts = fact_sentences("v1")
    fact_examples = pack_facts(facts, args.facts_per_seq, args.fact_repeats, args.seed)
    drills = (association_drills(examples, args.seed, asks=args.drill_asks, forms=tuple(args.drill_forms),
                                 label_cue=args.label_cue) if args.drills else [])
    contrast = build_contrast(args.contrast_per_cell, args.contrast_chunks, args.contrast_ctx,
                              args.contrast_q, args.work, args.gen_procs)
    off = len(examples) + len(fact_examples)  # where the drills start among the examples
    drill_idx = range(off, off + len(drills))
    warm_idx = drill_indices(off, drills)
    # with comparison phases the Yes/No drills wait for their own phases, one form each
    # (mixed: one phase for them all, and they stay in the drills-then phase)
    then_idx = drill_indices(off, drills, tuple(
        f for f in DRILL_FORMS if args.compare_mixed or not (any(args.drill_compare) and f in LABEL_FORMS)))
    compare_idx = ([drill_indices(off, drills, LABEL_FORMS)] if args.compare_mixed and compare_forms(args.drill_forms)
                   else [drill_indices(off, drills, (f,)) for f in compare_forms(args.drill_forms)])
    examples = examples + fact_examples + drills + contrast
    tokenizer_texts = [e[0] for e in examples]  # question drills add no word: same ids with or without
    questions = build_question_drills(args.question_drills, args.contrast_chunks, args.work, args.gen_procs)
    then_idx += list(range(len(examples), len(examples) + len(questions)))
    examples += questions
    cls_questions = build_question_drills(args.cls_question_drills, args.contrast_chunks, args.work,
                                          args.gen_procs, family="cls", n_rs=tuple(args.cls_question_nr))
    if cls_questions:  # the last comparison phase, after the Yes/No drills
        compare_idx.append(list(range(len(examples), len(examples) + len(cls_questions))))
    examples += cls_questions
    compare_idx = [with_retrieval(idx, then_idx, args.compare_keep, args.seed, k) for k, idx in enumerate(compare_idx)]
    counts = {"facts": len(facts), "fact_sequences": len(fact_examples), "association_drills": len(drills),
              "question_drills": len(questions), "cls_question_drills": len(cls_questions),
              "contrast_instances": len(contrast)}
    return TrainingData(examples, tokenizer_texts, drill_idx, warm_idx, then_idx, compare_idx, counts, t_data)


def check_init_from(folder: Path, args) -> None:
    """Refuse (GARConfigError) a starting model folder without a config, or whose shape is not
    this run's, before any data is generated (the weights themselves are checked on loading)."""
    import json

    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        raise GARConfigError(f"{folder}: no model folder (config.json) there") from None
    want = {"hidden_size": args.d_model, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
            "num_key_value_heads": args.kv_heads, "intermediate_size": args.mlp}
    diff = [f"{k} {cfg.get(k)} (this run: {v})" for k, v in want.items() if cfg.get(k) != v]
    if diff:
        raise GARConfigError(f"{folder}: its weights do not fit this model: {', '.join(diff)}")


def resolve_device(name: str):
    """The torch device ``name`` (cpu | cuda | cuda:N | auto) stands for; GARConfigError when it
    is not there, so a run asking for a GPU on a machine without one stops before any work."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise GARConfigError(f"device {name!r}: not cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise GARConfigError(f"device {name}: torch sees {torch.cuda.device_count()} CUDA device(s) here; "
                             "train on cpu, or on a machine with that GPU")
    if device.type not in ("cpu", "cuda"):
        raise GARConfigError(f"device {name!r}: not cpu, cuda, cuda:N or auto")
    return device


def machine_name(device, threads: int) -> str:
    """The machine a run trained on, as the record and the lineage name it."""
    import torch

    return (f"{os.cpu_count()} cores, torch threads {threads}" if device.type == "cpu"
            else torch.cuda.get_device_name(device))


def train(args, command: str) -> dict:
    """Train one run as ``args`` says and write ``args.out`` (model folder, tokenizer, training
    record); return the record. ``command``: the command line the record names. Everything that
    can refuse the run (the output folder, the checkpoint to resume, the starting model) is
    checked before any data is generated or any file written; ``args.out`` is replaced only when
    it holds an organism record, and only once the new folder is complete."""
    import torch
    from tqdm import tqdm

    check_output_folder(args.out)
    device = resolve_device(args.device)
    if args.init_from:
        check_init_from(args.init_from, args)
    ckpt = args.work / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False, map_location="cpu") if args.resume and ckpt.is_file() else None
    if state:
        check_resume(state.get("args", {}), vars(args), args.work)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: the model is small, steps are many
    prev_wall = state["wall_s"] if state else 0.0

    td = build_training_data(args)
    examples = td.examples
    tok_dir = args.work / "tokenizer"
    if (state and tok_dir.is_dir()) or args.tokenizer_from:
        from transformers import PreTrainedTokenizerFast
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir if state else args.tokenizer_from)
        tokenizer.save_pretrained(tok_dir)
    else:
        tokenizer = build_tokenizer(td.tokenizer_texts + vocabulary_words("v1"), entity_tokens("v1"))
        tokenizer.save_pretrained(tok_dir)
    data = encode(tokenizer, examples, tokenizer.eos_token_id, candidates=args.candidate_targets)
    lengths = [len(d[0]) for d in data]
    n_targets = sum(len(d[1]) for d in data)
    c = td.counts
    print(f"data: {len(data)} sequences, {sum(lengths)} tokens, {n_targets} target tokens, "
          f"vocab {len(tokenizer)}, generated in {td.data_seconds:.0f} s; of these {c['fact_sequences']} "
          f"sequences of {c['facts']} vocabulary facts x {args.fact_repeats} and {c['association_drills']} "
          f"association drills, {c['contrast_instances']} contrast instances, {c['question_drills']} question drills, "
          f"{c['cls_question_drills']} classification question drills", flush=True)

    from gar_tasks.generate import GeneratorConfig
    val = GeneratorConfig(profile="v1", split="validation").build()
    random.Random(1).shuffle(val)

    model = make_model(args, len(tokenizer), tokenizer)
    if args.init_from and not state:  # a resumed run has its own weights
        try:
            load_weights(model, args.init_from)
        except ValueError as e:
            raise GARConfigError(f"{args.init_from}: {e}") from None
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if args.lr_schedule == "minutes":  # the share of the time left when the loop began
            frac = (time.time() - t_loop) / max(1.0, 60 * args.max_minutes - prev_wall - (t_loop - t_start))
        else:
            frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return cosine_lr(args.lr, step, args.warmup, frac)

    step, epoch, pos = 0, 0, 0
    history: list[dict] = []
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, epoch, pos, history = state["step"], state["epoch"], state["pos"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step}", flush=True)

    def main_order(ep: int) -> list[list[int]]:
        keep = main_phase_indices(len(lengths), td.drill_idx, args.main_drill_share, args.seed, ep)
        return subset_batches(lengths, keep, args.batch_tokens, args.seed, ep)

    order = main_order(epoch)
    # the drill phases: a batch depends on the step alone, so a resumed run continues them
    phases = ([(args.drill_first, td.warm_idx), (args.drill_then, td.then_idx)]
              + list(zip(args.drill_compare, td.compare_idx)))
    phase_orders = [(n, subset_batches(lengths, idx, args.batch_tokens, args.seed, -1 - k) if n else [])
                    for k, (n, idx) in enumerate(phases)]

    def save_ckpt() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "epoch": epoch,
                    "pos": pos, "history": history, "torch_rng": torch.get_rng_state(),
                    "wall_s": prev_wall + time.time() - t_start, "args": vars(args)}, tmp)
        os.replace(tmp, ckpt)

    model.train()
    stopped_early = None
    t_loop = time.time()
    bar = tqdm(total=args.steps, initial=step, desc="train", mininterval=5, file=sys.stdout)
    ema = None
    while step < args.steps:
        batch = phase_batch(step, phase_orders)
        if batch is None:
            if pos >= len(order):
                epoch, pos = epoch + 1, 0
                order = main_order(epoch)
            batch = order[pos]
            pos += 1
        ids, rows, cols, labels = (t.to(device) for t in collate(data, batch, tokenizer.pad_token_id))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            loss, _ = target_loss(model, ids, rows, cols, labels, tokenizer.pad_token_id, args.lm_weight)
            if args.prev_aux > 0:
                loss = loss + previous_token_loss(model, args.prev_aux, args.prev_aux_len,
                                                  len(SPECIALS), len(tokenizer), device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.4f}", epoch=epoch)
        if step % args.eval_every == 0 or step == args.steps:
            m = evaluate(model, tokenizer, val, args.eval_n)
            history.append({"step": step, "loss_ema": round(ema, 5), "val": m,
                            "wall_s": round(prev_wall + time.time() - t_start, 1)})
            print(f"\nstep {step}: loss {ema:.4f} val {m}", flush=True)
        out_of_time = (args.max_minutes is not None
                       and prev_wall + time.time() - t_start > 60 * args.max_minutes)
        if step % args.ckpt_every == 0 or step == args.steps or out_of_time:
            save_ckpt()
        if out_of_time:
            stopped_early = step
            print(f"\nstopping at step {step}: the time budget of {args.max_minutes} minutes is reached", flush=True)
            break
    bar.close()

    # the shipped folder: weights in the storage dtype, evaluated as shipped
    wall = prev_wall + time.time() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.tmp-", dir=args.out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp_out.chmod(0o777 & ~umask)  # a folder like any other, not mkdtemp's private one
        model.to("cpu").to(getattr(torch, args.dtype)).save_pretrained(tmp_out)
        tokenizer.save_pretrained(tmp_out)
        from transformers import AutoModelForCausalLM, AutoTokenizer
        shipped = AutoModelForCausalLM.from_pretrained(tmp_out, dtype=torch.float32).eval()
        shipped_tok = AutoTokenizer.from_pretrained(tmp_out)
        final_val = evaluate(shipped, shipped_tok, val, args.final_eval_n)
        print(f"shipped weights on {args.final_eval_n} v1 validation records: {final_val}", flush=True)
        data_facts = {"sequences": len(data), "tokens": sum(lengths), "target_tokens": n_targets, **c,
                      "phases": [(n, len(idx)) for n, idx in phases],
                      "epochs_seen": round(epoch + pos / max(1, len(order)), 3)}
        run = {"parameters": n_params, "vocab_size": len(tokenizer), "steps_done": step,
               "stopped_early_at_step": stopped_early, "wall_time_s": wall, "data_generation_s": td.data_seconds,
               "machine": machine_name(device, args.threads), "device": device.type, "history": history,
               "final_validation": final_val}
        record = training_record(args, command, data_facts, run, tmp_out)
        write_record(tmp_out, record)
        replace_folder(tmp_out, args.out)
    except BaseException:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise
    print(f"wrote {args.out} ({wall:.0f} s)", flush=True)
    return record


def replace_folder(new: Path, out: Path) -> None:
    """Put the complete folder ``new`` at ``out``; an earlier ``out`` is removed only when it is
    (still) empty or an organism folder (``check_output_folder``), and only after ``new`` is in place."""
    check_output_folder(out)
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
