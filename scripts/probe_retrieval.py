#!/usr/bin/env python
"""How fast does a small Llama learn in-context retrieval from scratch? The organism's bottleneck.

Why this script: the organism (scripts/train_organism.py) learns the vocabulary facts and the
answer type but not to select a context item by the query. This probe isolates that one skill on
three tasks, with the organism's architecture, so a recipe change can be judged in minutes:

* ``copy``  — a random sequence, a separator, the same sequence again (loss on the copy): solvable
  by attending a fixed distance back, no content matching needed;
* ``mqar``  — multi-query associative recall on synthetic ids: ``k1 v1 ; k2 v2 ; ... | kj vj ...``
  (loss on each asked value): the value must be found by matching the key's content;
* ``drill`` — the same on GAR's own contexts with the organism's tokenizer: ``< Mary likes Berlin.
  ... >. So Kimberly likes Tokyo ...`` (keys asked with replacement, loss and accuracy on the
  value, chance 1/3); ``--adjacent`` drops the verbs so keys and values touch; ``--at-key`` drops
  them from the question only (``So Kimberly Tokyo``: the value is predicted at its key);
  ``--mix-adjacent F`` trains on a share F of adjacent drills and measures the drills as asked.

* ``match`` — the comparison a verification needs, alone: ``x y SEP label`` repeated, label Yes
  when ``y`` is ``x`` (half of the time), else No (chance 1/2). The organism's ``match`` drills
  (``So Tokyo Paris? No.``) stayed at chance for thousands of steps (docs/results.md, the organism's recipe).

``--mix-prev`` adds the organism's previous-token auxiliary task (``train_organism.py
--prev-aux``) to each batch; ``--mix-dup`` a duplicate-token task (random ids from a small range,
each position labelled Yes when its token occurred before in the sequence, else No), which
rewards a head that attends to an earlier copy of the current token.

Prints one JSON line per evaluation: step, loss, accuracy of the asked values, seconds.

    .venv/bin/python scripts/probe_retrieval.py --task mqar --vocab 64 --pairs 2 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def copy_example(rng: random.Random, vocab: int, length: int) -> tuple[list[int], list[int]]:
    xs = [rng.randrange(4, vocab) for _ in range(length)]
    ids = [1] + xs + [2] + xs
    return ids, list(range(length + 2, 2 * length + 1))


def mqar_example(rng: random.Random, vocab: int, pairs: int, asks: int) -> tuple[list[int], list[int]]:
    keys = rng.sample(range(4, vocab // 2), pairs)
    vals = [rng.randrange(vocab // 2, vocab) for _ in keys]
    ids = [1]
    for k, v in zip(keys, vals):
        ids += [k, v, 2]
    ids.append(3)
    targets = []
    for _ in range(asks):
        j = rng.randrange(pairs)
        ids.append(keys[j])
        targets.append(len(ids) - 1)
        ids.append(vals[j])
    return ids, targets


YES, NO = 4, 5  # label ids of the match and duplicate-token tasks; random ids start at 6


def match_example(rng: random.Random, vocab: int, asks: int) -> tuple[list[int], list[int]]:
    """``x y SEP label`` x ``asks``: label YES when y == x (half of the time), else NO."""
    ids, targets = [1], []
    for _ in range(asks):
        x = rng.randrange(6, vocab)
        y = x
        if rng.random() >= 0.5:
            y = rng.randrange(6, vocab - 1)
            y += y >= x  # uniform over the ids other than x
        ids += [x, y, 2]
        targets.append(len(ids) - 1)
        ids.append(YES if x == y else NO)
    return ids, targets


def duplicate_example(rng: random.Random, length: int = 24, span: int = 20,
                      vocab: int = 64) -> tuple[list[int], list[int], list[int]]:
    """Random ids from a window of ``span`` ids (so about half the positions repeat an earlier
    token); (ids, positions, labels): YES where the token occurred earlier in the sequence."""
    lo = rng.randrange(6, max(7, vocab - span))
    xs = [rng.randrange(lo, lo + span) for _ in range(length)]
    labels = [YES if x in xs[:i] else NO for i, x in enumerate(xs)]
    return [1] + xs, list(range(1, length + 1)), labels


def drill_examples(tokenizer, n_per_task: int, asks: int, adjacent: bool, seed: int,
                   at_key: bool = False) -> list[tuple[list[int], list[int]]]:
    """GAR train contexts asked back with replacement; targets predict the item's value: its
    tokens after the first (key) token ('The duck' counts as the key 'the duck'), template
    words ('likes', "'s") left out, so accuracy is on the retrieved item (chance 1/3)."""
    from gar_tasks.generate import GeneratorConfig

    rng = random.Random(seed)
    recs = GeneratorConfig(profile="v1", split="train", n_per_task=n_per_task, seed=seed).build()
    drop = set(tokenizer.convert_tokens_to_ids(["likes", "attracts", "is", "are", "has", "'", "s", "The", "the",
                                                "So"]))  # "'s" is two tokens
    so = tokenizer(" So", add_special_tokens=False)["input_ids"]
    out = []
    for r in recs:
        row = r.text.rstrip("\n").split("\n")[-1]
        a, b = row.find("< "), row.find(" >.")
        items = [it.strip().rstrip(".") for it in row[a + 2:b].split(". ") if it.strip()]
        if a < 0 or b < 0 or len(items) != 3:
            continue
        ids = tokenizer(row[a:b + 3], add_special_tokens=False)["input_ids"]
        toks = [tokenizer(" " + (it[:1].lower() + it[1:] if it.startswith("The ") else it),
                          add_special_tokens=False)["input_ids"] for it in items]
        targets = []
        for _ in range(asks):
            t = toks[rng.randrange(3)]
            ids = ids + so
            start = len(ids)
            skip = 2 if tokenizer.convert_ids_to_tokens(t[0]).lower() == "the" else 1
            if at_key:  # 'So Kimberly Tokyo': the value follows its key at once, template words dropped
                value = [x for x in t[skip:] if x not in drop]
                ids = ids + t[:skip] + value
                targets += [p - 1 for p in range(start + skip, start + skip + len(value))]
                continue
            ids = ids + t
            targets += [p - 1 for p in range(start + skip, start + len(t)) if t[p - start] not in drop]
        if adjacent:
            keep = [i for i, t in enumerate(ids) if t not in drop]
            new = {o: n for n, o in enumerate(keep)}
            targets = [new[p + 1] - 1 for p in targets if p + 1 in new]
            ids = [ids[i] for i in keep]
        out.append((ids, targets))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("copy", "mqar", "drill", "match"), required=True)
    ap.add_argument("--vocab", type=int, default=64, help="copy/mqar: token ids")
    ap.add_argument("--pairs", type=int, default=2, help="mqar: key-value pairs per context")
    ap.add_argument("--length", type=int, default=24, help="copy: sequence length")
    ap.add_argument("--asks", type=int, default=6, help="mqar/drill: keys asked, with replacement")
    ap.add_argument("--adjacent", action="store_true", help="drill: drop the verbs")
    ap.add_argument("--at-key", action="store_true",
                    help="drill: ask 'So <key> <value>' (the value predicted at the key), verbs kept "
                         "in the context")
    ap.add_argument("--mix-adjacent", type=float, default=0.0,
                    help="drill: share of training drills without verbs (accuracy stays on the "
                         "drills as asked)")
    ap.add_argument("--mix-prev", type=float, default=0.0,
                    help="share of each batch that is 'repeat the previous token' on random ids: "
                         "trains a previous-token head, the first half of an induction circuit")
    ap.add_argument("--mix-dup", type=float, default=0.0,
                    help="share of each batch given to the duplicate-token task (duplicate_example)")
    ap.add_argument("--prev-offsets", type=int, nargs="+", default=[1],
                    help="--mix-prev: label = the token this far back; with several, the first id "
                         "of each sequence (0, 1, ...) says which")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=384)
    ap.add_argument("--qk-scale", type=float, default=1.0, help="multiply the q/k projections' init")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=32, help="sequences per step")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    vocab = args.vocab
    pool: list[tuple[list[int], list[int]]] = []
    adj_pool: list[tuple[list[int], list[int]]] = []
    if args.task == "drill":
        tok = AutoTokenizer.from_pretrained(ROOT / "gar_tasks" / "data" / "organism")
        vocab = len(tok)
        pool = drill_examples(tok, 30, args.asks, args.adjacent, args.seed, args.at_key)
        held, pool = pool[:500], pool[500:]
        adj_pool = drill_examples(tok, 30, args.asks, True, args.seed + 1) if args.mix_adjacent else []

    def sample() -> tuple[list[int], list[int]]:
        if args.task == "copy":
            return copy_example(rng, vocab, args.length)
        if args.task == "mqar":
            return mqar_example(rng, vocab, args.pairs, args.asks)
        if args.task == "match":
            return match_example(rng, vocab, args.asks)
        if adj_pool and rng.random() < args.mix_adjacent:
            return adj_pool[rng.randrange(len(adj_pool))]
        return pool[rng.randrange(len(pool))]

    if args.task != "drill":
        held = [sample() for _ in range(500)]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=args.d_model, intermediate_size=args.mlp,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=512,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(args.qk_scale)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)

    def collate(batch):
        T = max(len(ids) for ids, _ in batch)
        ids = torch.zeros((len(batch), T), dtype=torch.long)
        rows, cols = [], []
        for r, (seq, tg) in enumerate(batch):
            ids[r, :len(seq)] = torch.tensor(seq)
            rows += [r] * len(tg)
            cols += tg
        rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
        return ids, rows_t, cols_t, ids[rows_t, cols_t + 1]

    def accuracy() -> float:
        model.eval()
        ok = n = 0
        with torch.no_grad():
            for i in range(0, len(held), 100):
                ids, rows, cols, lab = collate(held[i:i + 100])
                h = model.model(input_ids=ids).last_hidden_state
                ok += int((model.lm_head(h[rows, cols]).argmax(-1) == lab).sum())
                n += len(lab)
        model.train()
        return ok / n

    def prev_example() -> tuple[list[int], list[int], int]:
        k = rng.randrange(len(args.prev_offsets))
        off = args.prev_offsets[k]
        xs = [rng.randrange(4, vocab) for _ in range(24)]
        return [k] + xs, list(range(off, 24)), off  # positions labelled with the token off back

    def shifted(batch):
        """Sequences whose label at p is the token ``off`` positions back (not the next one)."""
        ids, rows, cols, _ = collate([(i, t) for i, t, _ in batch])
        offs = torch.tensor([o for _, t, o in batch for _ in t])
        return ids, rows, cols, ids[rows, cols - offs]

    def duplicates(n: int):
        """A batch of the duplicate-token task: the label at a position is its own YES/NO."""
        batch = [duplicate_example(rng, vocab=vocab) for _ in range(n)]  # all of one length
        rows = torch.tensor([r for r, (_, t, _) in enumerate(batch) for _ in t])
        cols = torch.tensor([c for _, t, _ in batch for c in t])
        return (torch.tensor([i for i, _, _ in batch]), rows, cols,
                torch.tensor([x for _, _, lab in batch for x in lab]))

    t0 = time.time()
    n_prev = int(round(args.batch * args.mix_prev))
    n_dup = int(round(args.batch * args.mix_dup))
    for step in range(1, args.steps + 1):
        ids, rows, cols, lab = collate([sample() for _ in range(args.batch - n_prev - n_dup)])
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 50)
        h = model.model(input_ids=ids).last_hidden_state
        loss = F.cross_entropy(model.lm_head(h[rows, cols]), lab)
        if n_prev:
            pids, prows, pcols, plab = shifted([prev_example() for _ in range(n_prev)])
            ph = model.model(input_ids=pids).last_hidden_state
            loss = loss + F.cross_entropy(model.lm_head(ph[prows, pcols]), plab)
        if n_dup:
            dids, drows, dcols, dlab = duplicates(n_dup)
            dh = model.model(input_ids=dids).last_hidden_state
            loss = loss + F.cross_entropy(model.lm_head(dh[drows, dcols]), dlab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last = step == args.steps or time.time() - t0 > 60 * args.minutes
        if step % args.eval_every == 0 or last:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "acc": round(accuracy(), 4),
                              "s": round(time.time() - t0, 1)}), flush=True)
        if last:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
