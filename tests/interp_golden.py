"""Float32 scores of every interp command on the tiny random Llama, recorded from the code before the
interp core refactor (commit 3cb0bed) and compared bit for bit by ``test_interp_device.py``.

Only the ``gar`` command line is used (stable across the refactor), so the same function ran on the
old code to make the recording and runs on the new code with ``--device cpu`` / ``--device auto``::

    PYTHONPATH=<old checkout>:tests .venv/bin/python tests/interp_golden.py tests/data/interp_golden_f32.npz

Floats of the JSON outputs are kept as float64 arrays; arrays of the npz outputs as they are.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

GOLDEN = Path(__file__).parent / "data" / "interp_golden_f32.npz"
TASKS = "gar_cls_nr1_gender_city,gar_gen_nr0_gender_city"


def tiny_folder(path: Path) -> Path:
    """The tiny random Llama and its BPE tokenizer as a model folder (same as conftest's tiny_dir)."""
    from tiny_models import tiny_model
    from tiny_tokenizers import bpe_tokenizer

    tiny_model("llama").save_pretrained(path)
    bpe_tokenizer().save_pretrained(path)
    return path


def mlp_folder(path: Path, n: int = 12) -> Path:
    """A miniature copy of the seed's zero-shot layout (SNLI splits + one GoT file)."""
    snli, got = path / "SNLI_zero_shot", path / "GoT_zero_shot"
    snli.mkdir(parents=True)
    got.mkdir(parents=True)
    pairs = [("A man sleeps on a couch.", "A person rests.", "Yes"), ("A dog runs in a field.", "A cat sleeps.", "No"),
             ("Two girls read books.", "Children are reading.", "Yes"), ("A chef cooks soup.", "A pilot flies.", "No"),
             ("A woman sings on stage.", "Someone performs.", "Yes")]
    for split in ("train", "validation", "test"):
        items = [[f"{p} So {h}", lab] for p, h, lab in (pairs * 3)[:n]]
        (snli / f"snli_YesNo_head_feature_3000_{split}_zero_shot.jsonl").write_text(json.dumps(items))
    words = [("rosa", "rose", "Yes"), ("muy", "temperature", "No"), ("perro", "dog", "Yes"), ("gato", "house", "No")]
    got_items = [f"Please answer with Yes or No. Is it true that The Spanish word '{s}' means '{e}'? Answer: {lab}"
                 for s, e, lab in (words * 4)[:n]]
    (got / "sp_en_trans.jsonl").write_text(json.dumps(got_items))
    return path


def _gar(*argv: Any) -> None:
    from gar_tasks.cli import main

    rc = main([str(a) for a in argv])
    if rc != 0:
        raise RuntimeError(f"gar {' '.join(map(str, argv))} exited {rc}")


def _floats(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    """Every number of a JSON tree, flattened under dotted keys (timings and versions left out)."""
    import numpy as np

    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in ("timings_s", "versions", "seconds"):
                _floats(f"{prefix}.{k}", v, out)
    elif isinstance(obj, list) and obj and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in obj):
        out[prefix] = np.asarray(obj, dtype=np.float64)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _floats(f"{prefix}.{i}", v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = np.asarray(obj, dtype=np.float64)


def run_all(root: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run patch, heads, intervene (two modes) and probe on the tiny Llama; return their numbers."""
    import numpy as np

    root = Path(root)
    model = tiny_folder(root / "model") if not (root / "model").exists() else root / "model"
    mlp = mlp_folder(root / "mlp") if not (root / "mlp").exists() else root / "mlp"
    tag = "_".join(a.strip("-").replace(":", "") for a in extra) or "default"
    d = root / tag
    out: dict[str, Any] = {}
    _gar("patch", "--model", model, "--tasks", TASKS, "--n", 6, "--batch-size", 2, "--verify-top", 3, "--grad-drop",
         "-q", "--out", d / "patch", *extra)
    with np.load(d / "patch" / "scores.npz") as z:
        for k in z.files:
            if z[k].dtype.kind == "f":
                out[f"patch.{k}"] = z[k]
    _gar("heads", "--model", model, "--tasks", "gender_city", "--n", 4, "--batch-size", 4, "--min-consistency", 0.5,
         "--top", 3, "-q", "--out", d / "heads", *extra)
    with np.load(d / "heads" / "directions.npz") as z:
        for k in z.files:
            if z[k].dtype.kind == "f":
                out[f"heads.{k}"] = z[k]
    for mode, flags in (("ablate", ["--heads", "0:1;1:2"]), ("label", ["--heads", d / "heads"]),
                        ("mean", ["--heads", d / "heads", "--which", "both"])):
        _gar("intervene", "--model", model, "--mode", mode, *flags, "--tasks", "gender_city", "--n", 4,
             "--batch-size", 3, "--random-draws", 2, "-q", "--out", d / f"intervene_{mode}", *extra)
        info = json.loads((d / f"intervene_{mode}" / "intervene.json").read_text())
        _floats(f"intervene_{mode}", {"tasks": info["tasks"], "overall": info["overall"]}, out)
    _gar("probe", "--model", model, "--heads", d / "heads", "--mlp-dir", mlp, "--datasets", "snli,sp_en_trans",
         "--k", 2, "--random-draws", 1, "--runs", 1, "--limit", 10, "--batch-size", 4, "--dtype", "float32", "-q",
         "--out", d / "probe", *extra)
    for f in sorted((d / "probe").glob("features_*.npz")):
        with np.load(f) as z:
            for k in ("attn", "proj"):
                out[f"probe.{f.stem}.{k}"] = z[k]
    info = json.loads((d / "probe" / "probe.json").read_text())
    _floats("probe", info["datasets"], out)
    return out


if __name__ == "__main__":  # pragma: no cover - run by hand to record the golden values
    import tempfile

    import numpy as np

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN
    with tempfile.TemporaryDirectory() as tmp:
        values = run_all(Path(tmp))
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, **values)
    print(f"wrote {len(values)} arrays to {target}")
