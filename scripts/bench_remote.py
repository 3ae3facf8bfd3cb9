"""Benchmark: every interp command with ``--remote`` on a real NDIF server against the local run.

Usage: eval "$(scripts/ndif_local.sh up)"; .venv/bin/python scripts/bench_remote.py [--models organism,smollm2]
                                                                             [--repeats 3] [--no-write]
Per model and command, side by side in one process: the local and the remote wall time (medians of
``--repeats`` runs, alternated), the requests a run sends, the bytes each request uploads and
downloads, and per request the client's wall time against the server's (RUNNING to COMPLETED, as the
server's status messages arrive): their difference is what NDIF adds to a request.
Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- bench_remote:begin -->", "<!-- bench_remote:end -->"
REMOTE_IDS = {"organism": "gar-eval/organism", "smollm2": "gar-eval/smollm2"}


class Meter:
    """Counts what nnsight's remote backend sends and receives (wrapping its methods)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, float]] = []

    def install(self) -> None:
        from nnsight.intervention.backends.remote import RemoteBackend

        meter = self
        call, ser, fin, note = RemoteBackend.__call__, RemoteBackend._serialize, RemoteBackend.finalize, RemoteBackend.note

        def wrapped_call(self, tracer=None):
            meter.requests.append({"up": 0, "down": 0, "t0": time.perf_counter()})
            out = call(self, tracer)
            meter.requests[-1]["client_s"] = time.perf_counter() - meter.requests[-1]["t0"]
            return out

        def wrapped_ser(self, tracer):
            blob = ser(self, tracer)
            meter.requests[-1]["up"] += len(blob)
            return blob

        def wrapped_fin(self, content):
            meter.requests[-1]["down"] += len(content)
            return fin(self, content)

        def wrapped_note(self, response):
            r = meter.requests[-1]
            r.setdefault(f"at_{response.status.value}", time.perf_counter())
            return note(self, response)

        RemoteBackend.__call__, RemoteBackend._serialize = wrapped_call, wrapped_ser
        RemoteBackend.finalize, RemoteBackend.note = wrapped_fin, wrapped_note

    def take(self) -> list[dict[str, float]]:
        out, self.requests = self.requests, []
        for r in out:
            if "at_RUNNING" in r and "at_COMPLETED" in r:
                r["server_s"] = r["at_COMPLETED"] - r["at_RUNNING"]
        return out


def commands(model: str, remote: bool, n: int, mlp: Path | None, heads_dir: Path) -> dict[str, Callable[[Path], Any]]:
    from interp.commands.circuit import CircuitArgs, run_circuit
    from interp.commands.heads import HeadsArgs, run_heads
    from interp.commands.intervene import InterveneArgs, run_intervene
    from interp.commands.patch import PatchArgs, run_patch
    from interp.commands.probe import ProbeArgs, run_probe

    m = REMOTE_IDS[model] if remote else model
    cmds: dict[str, Callable[[Path], Any]] = {
        "patch": lambda out: run_patch(PatchArgs(model=m, tasks="gen_nr0,cls_nr0", out=str(out), config="v1", n=n,
                                                 verify_top=4, remote=remote)),
        "heads": lambda out: run_heads(HeadsArgs(model=m, out=str(out), config="v1", n=n, remote=remote)),
        "intervene": lambda out: run_intervene(InterveneArgs(model=m, mode="ablate", heads="0:1;1:2", out=str(out),
                                                             config="v1", n=n, random_draws=2, remote=remote)),
        "circuit": lambda out: run_circuit(CircuitArgs(model=m, tasks="gen_nr0", out=str(out), config="v1", n=n,
                                                       batch_size=4, remote=remote)),
    }
    if mlp is not None:
        cmds["probe"] = lambda out: run_probe(ProbeArgs(out=str(out), model=m, heads=str(heads_dir / ("r" if remote else "l")),
                                                        mlp_dir=str(mlp), datasets="snli", k="4", random_draws=1,
                                                        runs=1, limit=40, dtype="float32", remote=remote))
    return cmds


def bench(models: list[str], repeats: int, n: int) -> list[dict[str, Any]]:
    from interp.commands.heads import HeadsArgs, run_heads

    meter = Meter()
    meter.install()
    mlp = Path(os.environ.get("GAR_SHARED_DIR", ROOT.parent / "shared")) / "reference" / "mlp"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            heads_dir = Path(tmp) / f"heads_{model}"
            run_heads(HeadsArgs(model=model, out=str(heads_dir / "l"), config="v1", n=n))
            run_heads(HeadsArgs(model=REMOTE_IDS[model], out=str(heads_dir / "r"), config="v1", n=n, remote=True))
            meter.take()
            local_cmds = commands(model, False, n, mlp if mlp.is_dir() else None, heads_dir)
            remote_cmds = commands(model, True, n, mlp if mlp.is_dir() else None, heads_dir)
            for name in local_cmds:
                times: dict[str, list[float]] = {"local": [], "remote": []}
                reqs: list[dict[str, float]] = []
                for i in range(repeats):
                    for kind, cmd in (("local", local_cmds[name]), ("remote", remote_cmds[name])):
                        out = Path(tmp) / f"{model}_{name}_{kind}_{i}"
                        t0 = time.perf_counter()
                        info = cmd(out)
                        wall = time.perf_counter() - t0
                        if name == "circuit":  # the attribution alone: exact patching runs only locally
                            wall = info["timings_s"]["eap"]
                        times[kind].append(wall)
                        got = meter.take()
                        if kind == "remote":
                            reqs = got
                n_req = len(reqs)
                loc, rem = statistics.median(times["local"]), statistics.median(times["remote"])
                rows.append({"model": model, "command": name, "local_s": loc, "remote_s": rem, "requests": n_req,
                             "overhead_per_request_s": (rem - loc) / n_req if n_req else float("nan"),
                             "up_kb": statistics.median([r["up"] for r in reqs]) / 1e3 if reqs else 0,
                             "down_kb": statistics.median([r["down"] for r in reqs]) / 1e3 if reqs else 0,
                             "client_s": statistics.median([r["client_s"] for r in reqs]) if reqs else 0,
                             "server_s": statistics.median([r.get("server_s", float("nan")) for r in reqs])
                             if reqs else 0})
                print(rows[-1], flush=True)
    return rows


def section(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    import torch

    lines = [BEGIN, "## Remote (NDIF) vs local", "",
             f"`{' '.join(['.venv/bin/python', 'scripts/bench_remote.py'] + sys.argv[1:])}` against "
             "`scripts/ndif_local.sh up` (ndif 0.1.2, CPU model actor, float32) on the same machine "
             f"({platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}), "
             f"{datetime.date.today().isoformat()}; client and server share the 2 cores. Medians of {args.repeats} "
             f"alternated runs of each command in one process (`--n {args.n}`, v1). Per request (medians): bytes "
             "up (the serialised trace) and down (the saved results, zstd), the client's wall time and the "
             "server's (RUNNING to COMPLETED); transport = client - server (serialising, queueing, the object store, "
             "loopback). The server's model actor computes on the same 2 cores as the client, so remote/local wall "
             "measures the CPU actor, not NDIF's overhead. `circuit`: its edge attribution only (the exact faithfulness "
             "and spot checks need the weights here and are skipped remotely).", "",
             "| model | command | local s | remote s | requests | up kB | down kB | client s / request "
             "| server s / request | transport s / request |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['command']} | {r['local_s']:.2f} | {r['remote_s']:.2f} | {r['requests']} "
                     f"| {r['up_kb']:.1f} | {r['down_kb']:.1f} | {r['client_s']:.2f} | {r['server_s']:.2f} "
                     f"| {r['client_s'] - r['server_s']:.3f} |")
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="organism,smollm2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not os.environ.get("NDIF_HOST"):
        print("bench_remote: error: set NDIF_HOST (eval \"$(scripts/ndif_local.sh up)\")", file=sys.stderr)
        return 2
    rows = bench(args.models.split(","), args.repeats, args.n)
    text = section(rows, args)
    print(text)
    if not args.no_write:
        path = ROOT / "docs" / "benchmarks.md"
        old = path.read_text()
        path.write_text(old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):] if BEGIN in old
                        else old.rstrip("\n") + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
