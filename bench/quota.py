"""``make bench`` row (f): a job against a quota-enforcing Converse endpoint, paced or not.

The endpoint (``tests/quota_endpoint.py``) holds a Bedrock-like token
bucket: a request takes its input tokens plus ``maxTokens`` when it
starts and is refused (ThrottlingException) when the bucket holds less; the
unused part goes back when it ends. The minute is scaled to 6 s (the
endpoint's window and fanout's ``FANOUT_QUOTA_WINDOW_SECONDS``, set here
for both, the bench only), each answered call takes 300 ms, the job votes
4 times on each item at ``max_concurrency`` 50.

Three quotas: 6,000 tokens per window, one 4x larger and one 4x smaller,
each with a job scaled with it (150 items at 6,000; 600 at 24,000; 38 at
1,500) so every run is bound by its quota for about as long (with the
same job, the larger quota's bucket would hold the whole job and its
floor would be zero). Each is run three ways: fixed concurrency (pacing
off, ``FANOUT_PACING=off``: every thread calls and backs off on its own,
as before pacing), the quota given (``limits.tokens_per_minute``), and
the quota learned (nothing given).

A fourth row ("varied") is held-out style, unlike the others in window,
latency, prompt sizes, votes and concurrency: 9,000 tokens per 8 s
window, 450 ms per call, 120 items of 20 to 120 random words (prompts of
many sizes, so reservations vary call to call), 3 votes,
``max_concurrency`` 40.

Figures: wall time over the quota floor ((net tokens served - bucket size)
/ refill rate, from what the endpoint served) and the share of requests
refused. Each cell is the median over ``--repeats`` runs (3 by default,
as ``make bench`` runs it), with the lowest and highest beside it; each
repeat runs every mode once, one after another, so the modes are measured
side by side under the same load. ``--size`` scales every job (0.5: a
floor of about 11 s instead of 29 s) for a quicker look while developing;
below about 0.2 a job fits in the bucket and has no floor to compare with.
Run: ``.venv/bin/python -m bench.quota [--repeats N] [--size F] [--modes given,learned] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fanout  # noqa: E402,F401 - puts lambdas/ on the path
from fanout.cli import main as fanout_main  # noqa: E402
from tests.quota_endpoint import quota_endpoint  # noqa: E402

MODEL = "bedrock:amazon.nova-lite-v1:0"
WINDOW_SECONDS = 6.0
LATENCY_S = 0.3
BASE_TOKENS = 6000
BASE_ITEMS = 150
VOTES = 4
CONCURRENCY = 50
TARGETS = {"given": (1.10, 0.05), "learned": (1.25, 0.10)}


@dataclass(frozen=True)
class Shape:
    """One row's endpoint and job."""

    tokens: int  # per window
    items: int
    window: float = WINDOW_SECONDS
    latency: float = LATENCY_S
    votes: int = VOTES
    concurrency: int = CONCURRENCY
    words: tuple[int, int] | None = None  # items of this many random words (None: one short text for all)
    prompt: str = "Sentiment of ticket {id}: {text}"


# the held-out style row (see the module's text)
VARIED = Shape(
    tokens=9000,
    items=120,
    window=8.0,
    latency=0.45,
    votes=3,
    concurrency=40,
    words=(20, 120),
    prompt="Rate the sentiment of review {id}:\n<review>\n{text}\n</review>",
)
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def item_texts(shape: Shape) -> list[str]:
    if shape.words is None:
        return ["the refund took three weeks"] * shape.items
    rng = random.Random(13)  # the same items every run
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(*shape.words))) for _ in range(shape.items)]


def quota_job(job_id: str, shape: Shape, tokens_per_minute: int | None) -> dict[str, Any]:
    limits: dict[str, Any] = {"max_concurrency": shape.concurrency}
    if tokens_per_minute is not None:
        limits["tokens_per_minute"] = tokens_per_minute
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": shape.votes,
        "model": MODEL,
        "prompt": shape.prompt,
        "inference": {"max_tokens": 64},
        "output_schema": {
            "type": "object",
            "required": ["label"],
            "properties": {"label": {"enum": ["positive", "neutral", "negative"]}},
        },
        "aggregate": {"strategy": "majority", "field": "label"},
        "limits": limits,
        "items": [{"id": f"t-{n}", "text": text} for n, text in enumerate(item_texts(shape))],
    }


@contextlib.contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_once(mode: str, shape: Shape, workdir: Path) -> dict[str, Any]:
    """One job against a fresh endpoint; mode is fixed, given or learned."""
    # the window is a quota's minute: tokens per window is the job's tokens_per_minute
    name = f"quota-{mode}-{shape.tokens}" + ("-varied" if shape.words else "")
    job = quota_job(name, shape, shape.tokens if mode == "given" else None)
    path = workdir / f"{job['job_id']}.json"
    path.write_text(json.dumps(job))
    out = workdir / "out"
    with quota_endpoint(shape.tokens, shape.window, shape.latency) as (url, stats):
        env = {
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FANOUT_QUOTA_WINDOW_SECONDS": str(shape.window),
            "FANOUT_PACING": "off" if mode == "fixed" else "on",
        }
        with environment(env), contextlib.redirect_stdout(io.StringIO()):
            code = fanout_main(["run", str(path), "--out", str(out), "--fresh", "--quiet"])
    result = json.loads((out / job["job_id"] / "result.json").read_text())
    run = json.loads((out / job["job_id"] / "run.json").read_text())
    # an item's votes share one prompt (its id makes it unique): each prompt answered exactly `votes` times means no
    # task lost or answered twice
    answered = stats.answered_prompts
    twice = sum(1 for n in answered.values() if n != shape.votes) + (shape.items - len(answered))
    return {
        "exit": code,
        "ok": result["counts"]["ok"],
        "tasks": result["counts"]["tasks"],
        "answered_twice": twice,
        "wall": run["wall_seconds"],
        "floor": stats.floor_seconds(),
        "ratio": run["wall_seconds"] / stats.floor_seconds() if stats.floor_seconds() else float("nan"),
        "refused": stats.refused_share,
        "requests": stats.requests,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quota")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run of the base quota only")
    parser.add_argument("--modes", default="fixed,given,learned")
    parser.add_argument("--size", type=float, default=1.0, help="scale every job's items (and so its floor; >= 0.2)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.size <= 0:
        parser.error("--repeats must be at least 1 and --size above 0")
    repeats = 1 if args.quick else args.repeats
    scales = [1.0] if args.quick else [1.0, 4.0, 0.25]
    shapes = [Shape(int(BASE_TOKENS * s), max(1, round(BASE_ITEMS * s * args.size))) for s in scales]
    if not args.quick:
        shapes.append(replace(VARIED, items=max(1, round(VARIED.items * args.size))))
    modes = args.modes.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            for _ in range(repeats):
                for mode in modes:  # side by side: each repeat runs every mode once
                    runs[mode].append(run_once(mode, shape, Path(tmp)))
            rows.append((shape, runs))
    print("$ python -m bench.quota " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(
        f"(f) quota pacing: minute scaled to {WINDOW_SECONDS:g} s, {LATENCY_S * 1000:.0f} ms per call, {VOTES} votes "
        f"per item, max_concurrency {CONCURRENCY}; median of {repeats} run(s) per cell, [lowest-highest]"
    )
    if not args.quick and VARIED.words:
        print(
            f"  varied: {VARIED.window:g} s window, {VARIED.latency * 1000:.0f} ms per call, items of "
            f"{VARIED.words[0]}-{VARIED.words[1]} random words, {VARIED.votes} votes, max_concurrency {VARIED.concurrency}"
        )
    print(
        f"{'quota (tokens/window)':<22} {'items':>5}  {'mode':<8} {'wall/floor':>10} {'[range]':<13} "
        f"{'refused':>7} {'[range]':<13} {'floor s':>7}  {'target':<17} {'met':<4} ok"
    )
    for shape, runs in rows:
        label = f"{shape.tokens:,}" + (" varied" if shape.words else "")
        for mode, done in runs.items():
            ratios = [r["ratio"] for r in done]
            refusals = [r["refused"] for r in done]
            ratio, refused = statistics.median(ratios), statistics.median(refusals)
            floor = statistics.median(r["floor"] for r in done)
            whole = all(r["ok"] == r["tasks"] and r["answered_twice"] == 0 for r in done)
            target = TARGETS.get(mode)
            aim = f"<= {target[0]:.2f}x, <= {target[1]:.0%}" if target else "-"
            met = "-" if target is None else ("yes" if ratio <= target[0] and refused <= target[1] else "NO")
            print(
                f"{label:<22} {shape.items:>5}  {mode:<8} {ratio:>9.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]{'':<2} "
                f"{refused:>7.1%} [{min(refusals):.1%}-{max(refusals):.1%}]{'':<1} {floor:>7.1f}  {aim:<17} {met:<4} "
                f"{'all tasks once' if whole else 'MISSING OR TWICE'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
