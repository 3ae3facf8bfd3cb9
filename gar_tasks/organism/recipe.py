"""A recipe: an organism's lineage as data (``recipe.json``: the shipped one), one training run
per phase, each started from the previous phase's weights, replayed by ``replay`` into one folder
with a manifest (``replay.json``) that says which phase ran on which device and machine.

A phase is its recorded command's arguments (``options``), without the folders the replay
chooses (``options.MANAGED``); ``{organism}`` stands for the shipped organism folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ..errors import GARConfigError
from .options import MANAGED, parse_train_args, to_argv
from .record import read_record
from .training import resolve_device

SHIPPED = Path(__file__).with_name("recipe.json")
MANIFEST = "replay.json"


def load_recipe(name: str | Path) -> dict:
    """The recipe ``shipped`` (the package's ``recipe.json``) or the recipe JSON file ``name``,
    checked: named phases, each with a list of arguments that sets none of ``MANAGED``."""
    path = SHIPPED if str(name) == "shipped" else Path(name)
    try:
        recipe = json.loads(path.read_text())
    except OSError as e:
        raise GARConfigError(f"recipe {name}: {e.strerror or e}") from None
    except ValueError as e:
        raise GARConfigError(f"recipe {name}: not JSON ({e})") from None
    phases = recipe.get("phases") if isinstance(recipe, dict) else None
    if not phases or not isinstance(phases, list):
        raise GARConfigError(f"recipe {name}: no phases")
    if not recipe.get("name"):
        recipe["name"] = str(name)  # a recipe file without a name is named by its path in messages
    names = [p.get("name") if isinstance(p, dict) else None for p in phases]
    if not all(isinstance(n, str) and n and "/" not in n and not n.startswith(".") for n in names) \
            or len(set(names)) != len(names):
        raise GARConfigError(f"recipe {name}: every phase needs a unique plain name")
    for p in phases:
        if not isinstance(p.get("args"), list) or not all(isinstance(a, str) for a in p["args"]):
            raise GARConfigError(f"recipe {name}, phase {p['name']}: args is not a list of strings")
        managed = [a for a in p["args"] if a.startswith("--") and a[2:].replace("-", "_") in MANAGED]
        if managed:
            raise GARConfigError(f"recipe {name}, phase {p['name']}: sets {managed[0]}, which the replay chooses")
    return recipe


def phase_argv(phase: dict, out: Path, work: Path, parent: Path | None, device: str | None = None) -> list[str]:
    """The full arguments of one phase replayed into ``out / name`` from ``parent``'s weights."""
    from ..models import embedded_model_path

    organism = str(embedded_model_path("organism"))
    argv = [a.replace("{organism}", organism) for a in phase["args"]]
    argv += ["--work", str(work / phase["name"]), "--out", str(out / phase["name"])]
    if parent is not None:
        argv += ["--init-from", str(parent)]
    if device:
        argv += ["--device", device]
    return argv


def _write_manifest(out: Path, manifest: dict) -> None:
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)


def check_replay_folder(out: Path, recipe: dict) -> dict | None:
    """The manifest of an earlier replay of ``recipe`` in ``out`` (to continue it), None for a new
    or empty folder; GARConfigError for a folder that holds anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise GARConfigError(f"{out}: not a folder")
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    if manifest is None:
        if any(out.iterdir()):
            raise GARConfigError(f"{out}: a folder no replay wrote (no {MANIFEST} in it); "
                                 "it is left as it is: give a new or empty folder")
        return None
    if [p["name"] for p in manifest.get("phases", [])] != [p["name"] for p in recipe["phases"]]:
        raise GARConfigError(f"{out}: a replay of another recipe ({manifest.get('recipe')}); give another folder")
    return manifest


def replay(recipe: dict, out: Path, work: Path, train: Callable[..., dict], device: str | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Run ``recipe``'s phases in order into ``out / <phase>`` (work folders under ``work``), each
    from the previous phase's weights, with ``train(args, command)`` (``training.train``).
    ``device``: every phase on this device instead of the recipe's. Every phase's arguments are
    checked before the first one runs. The phases already done in ``out`` before the first one
    that is not (their records' weights are the manifest's) are kept, so an interrupted replay
    continues where it stopped. Returns the
    manifest: per phase its command, device, machine, steps, minutes and weights' sha256."""
    done = check_replay_folder(out, recipe)
    for phase in recipe["phases"]:  # all checked first; the parents are made by the replay
        try:
            resolve_device(parse_train_args(phase_argv(phase, out, work, None, device)).device)
        except GARConfigError as e:
            raise GARConfigError(f"recipe {recipe.get('name')}, phase {phase['name']}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    manifest = done or {"recipe": recipe.get("name"), "phases": [
        {"name": p["name"], "recorded_on": p.get("ran_on"), "status": "pending"} for p in recipe["phases"]]}
    _write_manifest(out, manifest)
    parent, ran = None, False
    for phase, entry in zip(recipe["phases"], manifest["phases"]):
        folder = out / phase["name"]
        rec = read_record(folder)
        if (not ran and entry.get("status") == "done" and rec
                and rec.get("weights_sha256") == entry.get("weights_sha256")):
            log(f"phase {phase['name']}: done before ({folder})")
            parent = folder
            continue
        args = parse_train_args(phase_argv(phase, out, work, parent, device))
        command = " ".join(["gar organism train", *to_argv(args)])
        log(f"phase {phase['name']}: {command}")
        rec = train(args, command)
        ran = True  # every later phase starts from these new weights: it runs again too
        entry.update({"status": "done", "command": command, "device": rec.get("device"),
                      "machine": rec.get("machine"), "steps_done": rec.get("steps_done"),
                      "wall_time_s": rec.get("wall_time_s"), "weights_sha256": rec.get("weights_sha256"),
                      "final_validation": rec.get("final_validation")})
        _write_manifest(out, manifest)
        parent = folder
    return manifest
