"""The training record of an organism folder (``training_record.json``): the command, the data's
phase sizes, the weights' sha256, and the lineage (the runs, oldest first, whose commands
reproduce the model); and the checks that keep a run to the folders it owns: an output folder
is replaced only when it holds an organism record, a checkpoint is resumed only with the
arguments it was trained with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import GARConfigError

RECORD = "training_record.json"
#: the arguments a checkpoint is resumed with only when they are the ones it was trained with
RESUME_KEYS = ("lr", "seed", "d_model", "layers", "heads", "kv_heads", "mlp")

LINEAGE_KEYS = ("command", "machine", "device", "wall_time_s", "steps_done", "weights_sha256", "final_validation",
                "created")


def lineage(record: dict, name: str, parent: dict | None, parent_name: str = "") -> list[dict]:
    """The runs that made a model, oldest first, ending with ``record`` (named ``name``): the
    ``parent`` record's own lineage (or the parent alone when it has none), then this run. Why: a
    model trained in phases over several ``--init-from`` runs is reproduced only from all their
    commands, and each folder keeps the chain without anyone copying it by hand."""
    def entry(rec: dict, nm: str) -> dict:
        return {"name": nm} | {k: rec.get(k) for k in LINEAGE_KEYS}

    chain = [] if parent is None else (parent.get("lineage") or [entry(parent, parent_name)])
    return [*chain, entry(record, name)]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def training_record(args, command: str, data: dict, run: dict, folder: Path) -> dict:
    """The record of a run with options ``args`` whose model folder is ``folder`` (weights
    written): its command, options, data and phase sizes (``data``: counts, ``phases`` as
    (steps, sequences)), what the run did (``run``: steps, time, machine, device, history,
    validation), the weights' sha256, and, when it started from a folder, the lineage."""
    import datetime

    data = dict(data)
    record = {
        "model": "organism",
        "command": command,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": {"profile": "v1", "split": "train", "n_per_task": args.n_per_task,
                 "seeds": list(range(args.chunks)), "sequences": data["sequences"], "tokens": data["tokens"],
                 "target_tokens": data["target_tokens"], "facts": data["facts"],
                 "fact_sequences": data["fact_sequences"], "association_drills": data["association_drills"],
                 "question_drills": data["question_drills"], "cls_question_drills": data["cls_question_drills"],
                 "contrast_instances": data["contrast_instances"],
                 "phases": [{"steps": n, "sequences": m} for n, m in data["phases"]],
                 "epochs_seen": data["epochs_seen"]},
        "model_size": {"parameters": run["parameters"], "storage_dtype": args.dtype,
                       "vocab_size": run["vocab_size"]},
        "steps_done": run["steps_done"],
        "stopped_early_at_step": run["stopped_early_at_step"],
        "wall_time_s": round(run["wall_time_s"], 1),
        "data_generation_s": round(run["data_generation_s"], 1),
        "machine": run["machine"],
        "device": run["device"],
        "history": run["history"],
        "final_validation": run["final_validation"],
        "weights_sha256": sha256(folder / "model.safetensors"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "tokenizers")},
    }
    if args.init_from:  # a parent folder without a record stands in the chain by its name alone
        parent = read_record(args.init_from) or {}
        record["lineage"] = lineage(record, args.out.name, parent, args.init_from.name)
    return record


def write_record(folder: Path, record: dict) -> None:
    """``record`` as ``folder``'s training_record.json."""
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def read_record(folder: Path) -> dict | None:
    """The organism record in ``folder``, or None when there is none (or it is not one)."""
    path = folder / RECORD
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("model") == "organism" else None


def check_output_folder(out: Path) -> None:
    """Refuse (GARConfigError) an output folder that this recipe may not replace: only an empty
    folder, or one holding an organism training record (a folder a run wrote), is replaced. Why:
    the folder is replaced as a whole, and a user's folder given by mistake must survive."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise GARConfigError(f"{out}: not a folder; the model is written as a folder")
    if any(out.iterdir()) and read_record(out) is None:
        raise GARConfigError(f"{out}: a folder no organism run wrote (no organism {RECORD} in it); "
                             "it is left as it is: give a new or empty folder")


def check_resume(saved: dict, wanted: dict, work: Path) -> None:
    """Refuse (GARConfigError) to continue a checkpoint trained with other ``RESUME_KEYS``
    values than ``wanted``: its optimizer state, step count and history belong to those, and the
    record would credit the whole run to the new ones."""
    diff = [k for k in RESUME_KEYS if k in saved and saved[k] != wanted.get(k)]
    if diff:
        was = ", ".join(f"{k} {saved[k]}" for k in diff)
        now = ", ".join(f"{k} {wanted.get(k)}" for k in diff)
        raise GARConfigError(f"the checkpoint in {work} was trained with {was}, not {now}: resume it "
                             "with its own values, or start in another work folder")
