"""Runs the scenarios on SQLite and PostgreSQL, prints one table, writes bench/results.json."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import importlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import harness, scenarios
from bench.fake_proc import CTX, FakeProcess

SCENARIOS = (
    "overhead",
    "history",
    "throughput",
    "concurrency",
    "adapters",
    "context",
    "budgets",
)
BACKENDS = ("sqlite", "postgres")
RESULTS = Path(__file__).resolve().parent / "results.json"


@dataclass(frozen=True, slots=True)
class Plan:
    """How big each scenario is; `--quick` shrinks everything but the shape."""

    overhead_messages: int = 400
    history_sizes: tuple[int, ...] = (10, 1_000, 10_000, 100_000)
    history_messages: int = 100
    history_model_time: float = 0.025  # the paced pass: every answer starts 25 ms in
    throughput_messages: int = 4000
    throughput_chats: int = 1000
    inflight: int = 100
    concurrency_chats: int = 5000
    model_delay: float = 1.0
    context_turns: int = 300
    context_window: int = 16_385  # gpt-3.5-turbo's window: long chats fill it in ~120 turns
    context_reply: int = 1024
    budgets_paid: int = 100_000  # earlier paid requests this month
    budgets_messages: int = 200
    # Each scenario runs this many times per database; every number shown is the median of
    # its runs (this VM moves single runs by ±20 %; bench/README.md, "How it measures").
    repeats: int = 3


QUICK = Plan(
    overhead_messages=100,
    history_messages=10,
    throughput_messages=300,
    concurrency_chats=500,
    context_turns=150,
    budgets_paid=10_000,
    budgets_messages=50,
    repeats=1,
)


# Bounds that must hold in every run show the worst run, not the median.
WORST: dict[str, Callable[[list[Any]], Any]] = {
    "failed": max,  # failed messages (scenario 4)
    "first_failure": lambda found: next((f for f in found if f), None),
    "peak_rss_mb": max,
    "max": max,  # the context's highest sent ÷ budget
    "over_budget": max,
    "min_trimmed": min,  # the context's lowest use of a full window
}


def median_of(runs: list[Any]) -> Any:
    """One result from several runs of a scenario: each number the median of its runs
    (lists of numbers element by element), but the bounds in `WORST`; anything else as
    the first run has it."""
    first = runs[0]
    if isinstance(first, dict):
        return {
            key: WORST[key]([r.get(key) for r in runs])
            if key in WORST
            else median_of([r.get(key) for r in runs])
            for key in first
        }
    if isinstance(first, list) and all(isinstance(r, list) and len(r) == len(first) for r in runs):
        return [median_of([r[i] for r in runs]) for i in range(len(first))]
    numbers = [r for r in runs if isinstance(r, int | float) and not isinstance(r, bool)]
    if numbers and len(numbers) == len(runs):
        if all(isinstance(n, int) for n in numbers):
            return statistics.median_low(numbers)  # a count stays a count
        # As precise as the runs' own numbers (an even count of runs averages two).
        digits = max(len(repr(n).partition(".")[2]) for n in numbers)
        return round(statistics.median(numbers), min(digits, 3))
    return first


@dataclass(slots=True)
class Row:
    """One line of the table."""

    scenario: str
    metric: str
    values: dict[str, Any] = field(default_factory=dict)  # backend -> shown value
    target: str = ""
    met: dict[str, bool | None] = field(default_factory=dict)


# -- running workers in their own processes ----------------------------------------------------
def _call(out: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        out.put(("ok", fn(*args)))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def spawn(fn: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    """Start `fn(*args)` in a fresh process; returns (process, result queue)."""
    out = CTX.Queue()
    proc = CTX.Process(target=_call, args=(out, fn, args))
    proc.start()
    return proc, out


def collect(proc: Any, out: Any) -> Any:
    """The worker's result (raises with its traceback if it failed)."""
    status, value = out.get()
    proc.join(30)
    if status != "ok":
        raise RuntimeError(value)
    return value


def run_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a fresh process, waited for."""
    return collect(*spawn(fn, *args))


# -- scenarios ----------------------------------------------------------------------------------
def run_overhead(backend: str, plan: Plan) -> dict[str, Any]:
    url = asyncio.run(harness.fresh_database(backend, "overhead"))
    with FakeProcess() as fake:
        return dict(
            run_worker(scenarios.overhead_worker, fake.base_url, url, plan.overhead_messages)
        )


def run_history(backend: str, plan: Plan) -> dict[str, Any]:
    sizes = list(plan.history_sizes)
    url = asyncio.run(harness.fresh_database(backend, "history"))
    with FakeProcess() as fake:
        result = dict(
            run_worker(scenarios.history_worker, fake.base_url, url, sizes, plan.history_messages)
        )
    # Again with the model's time held equal: the zero-latency fake still needs ~5 ms to
    # read a full 128k window, and on this VM an idle wait that long makes the next
    # database round trips slower, whoever waits (bench/README.md, "History length").
    url = asyncio.run(harness.fresh_database(backend, "history_paced"))
    with FakeProcess(answer_after=plan.history_model_time) as fake:
        paced = run_worker(
            scenarios.history_worker, fake.base_url, url, sizes, plan.history_messages
        )
    result["paced"] = {"model_time_ms": plan.history_model_time * 1000, **paced}
    return result


def _throughput(backend: str, plan: Plan, processes: int) -> dict[str, Any]:
    url = asyncio.run(harness.fresh_database(backend, f"throughput{processes}"))
    share = plan.throughput_messages // processes
    chats = plan.throughput_chats // processes
    inflight = plan.inflight // processes
    with FakeProcess() as fake:
        gate = CTX.Barrier(processes + 1)
        workers = [
            spawn(
                scenarios.throughput_worker,
                fake.base_url,
                url,
                f"p{k}-t",
                share,
                chats,
                inflight,
                gate,
            )
            for k in range(processes)
        ]
        gate.wait(120)
        fake_cpu, pg_cpu, wall = (
            fake.stats()["cpu"],
            harness.postgres_cpu_seconds(),
            time.monotonic(),
        )
        results = [collect(*w) for w in workers]
        wall = time.monotonic() - wall
        fake_cpu = fake.stats()["cpu"] - fake_cpu
        pg_cpu = harness.postgres_cpu_seconds() - pg_cpu
    span = max(r["ended"] for r in results) - min(r["started"] for r in results)
    total = sum(r["messages"] for r in results)
    return {
        "processes": processes,
        "messages": total,
        "rate": round(total / span, 1),
        "relaybot_cores": [round(r["cpu_s"] / (r["ended"] - r["started"]), 2) for r in results],
        "fake_cores": round(fake_cpu / wall, 2),
        "postgres_cores": round(pg_cpu / wall, 2) if backend == "postgres" else None,
        "latency_p50_ms": max(r["latency_p50_ms"] for r in results),
    }


def run_throughput(backend: str, plan: Plan) -> dict[str, Any]:
    result = {"one": _throughput(backend, plan, 1)}
    if backend == "postgres":
        result["two"] = _throughput(backend, plan, 2)
        result["scaling"] = round(result["two"]["rate"] / result["one"]["rate"], 2)
        # What these cores allow at best: if two processes cost per message what one does
        # (relaybot, fake and PostgreSQL together), all the machine's cores carry
        # cores ÷ (cores the one-process run used) times its rate.
        one = result["one"]
        used = sum(one["relaybot_cores"]) + one["fake_cores"] + (one["postgres_cores"] or 0)
        result["scaling_bound"] = round((os.cpu_count() or 1) / used, 2) if used else None
    return result


def run_concurrency(backend: str, plan: Plan, capacity: float | None) -> dict[str, Any]:
    # Scenario 3's one process, re-run right before this run: the machine's speed drifts by
    # up to 2x within minutes, and `capacity` (the zero-latency rate the ideal is computed
    # from) comes from scenario 3's runs taken earlier. Its ideal is shown beside the target's
    # ratio, not instead of it: it tells drift from a real shortfall.
    nearby = _throughput(backend, plan, 1)["rate"]
    if capacity is None:  # scenario 3 was not run: the rate just measured
        capacity = nearby
    url = asyncio.run(harness.fresh_database(backend, "concurrency"))
    with FakeProcess(reply_delay=plan.model_delay) as fake:
        fake_cpu = fake.stats()["cpu"]
        result = dict(
            run_worker(scenarios.concurrency_worker, fake.base_url, url, plan.concurrency_chats)
        )
        fake_cpu = fake.stats()["cpu"] - fake_cpu
    n = plan.concurrency_chats
    # Best possible: one model latency, plus relaybot's own work at its zero-latency rate.
    ideal = n / (plan.model_delay + n / capacity)
    ideal_nearby = n / (plan.model_delay + n / nearby)
    result.update(
        nearby_capacity_rate=nearby,
        nearby_ideal_rate=round(ideal_nearby, 1),
        of_nearby_ideal=round(result["rate"] / ideal_nearby, 3),
        ideal_rate=round(ideal, 1),
        unbounded_ideal_rate=round(n / plan.model_delay, 1),
        capacity_rate=capacity,
        rate=round(result["rate"], 1),
        of_ideal=round(result["rate"] / ideal, 3),
        fake_cpu_s=round(fake_cpu, 2),
    )
    return result


def run_budgets(backend: str, plan: Plan) -> dict[str, Any]:
    url = asyncio.run(harness.fresh_database(backend, "budgets"))
    with FakeProcess() as fake:
        return dict(
            run_worker(
                scenarios.budgets_worker,
                fake.base_url,
                url,
                plan.budgets_paid,
                plan.budgets_messages,
            )
        )


def run_context(backend: str, plan: Plan) -> dict[str, Any]:
    url = asyncio.run(harness.fresh_database(backend, "context"))
    return dict(
        run_worker(
            scenarios.context_worker,
            url,
            plan.context_turns,
            plan.context_window,
            plan.context_reply,
        )
    )


def run_adapters(backend: str, plan: Plan) -> dict[str, Any]:
    try:
        adapters = importlib.import_module("bench.adapters")
    except ImportError as exc:
        return {"available": False, "why": f"cannot import bench.adapters: {exc}"}
    why = adapters.unavailable()
    if why:
        return {"available": False, "why": why}
    url = asyncio.run(harness.fresh_database(backend, "adapters"))
    with FakeProcess() as fake:
        return dict(
            run_worker(adapters.adapters_worker, fake.base_url, url, plan.overhead_messages)
        )


# -- the table ----------------------------------------------------------------------------------
def _le(value: Any, limit: float) -> bool | None:
    return None if value is None else bool(value <= limit)


def _ge(value: Any, limit: float) -> bool | None:
    return None if value is None else bool(value >= limit)


def _at(key: str, field_name: str, result: dict[str, Any]) -> Any:
    return result[key][field_name]


def rows_for(name: str, by_backend: dict[str, Any]) -> list[Row]:
    """Table rows of one scenario."""
    ok = {b: r for b, r in by_backend.items() if isinstance(r, dict) and "error" not in r}
    rows: list[Row] = []

    def row(
        metric: str, get: Callable[[dict[str, Any]], Any], target: str = "", check: Any = None
    ) -> None:
        values = {}
        met = {}
        for backend, result in ok.items():
            try:
                value = get(result)
            except (KeyError, TypeError):
                continue
            values[backend] = value
            if check is not None:
                met[backend] = check(backend, value)
        rows.append(Row(name, metric, values, target, met))

    if name == "overhead":
        row(
            "overhead p50 (ms)",
            lambda r: r["p50_ms"],
            "≤ 2 SQLite, ≤ 3 PG",
            lambda b, v: _le(v, 2 if b == "sqlite" else 3),
        )
        row(
            "overhead p99 (ms)",
            lambda r: r["p99_ms"],
            "≤ 10 SQLite",
            lambda b, v: _le(v, 10) if b == "sqlite" else None,
        )
        row("handle() p50 / model p50 (ms)", lambda r: f"{r['wall_p50_ms']} / {r['model_p50_ms']}")
        row(
            "answers of ~300 chunks: overhead p50 (ms)",
            lambda r: f"{r['long_p50_ms']} ({r['long_chunks']} chunks)",
        )
        row("  relaybot per streamed chunk (µs)", lambda r: r["per_chunk_us"])
    elif name == "history":
        sizes = [k for k in next(iter(ok.values()), {}) if k.isdigit()]
        for size in sizes:
            row(f"overhead p50 at {int(size):,} msgs (ms)", functools.partial(_at, size, "p50_ms"))
        label = f"{int(sizes[-1]):,}/{int(sizes[0]):,}" if sizes else "ratio"
        row(f"ratio {label}", lambda r: r["ratio"], "≤ 1.2", lambda b, v: _le(v, 1.2))
        if len(sizes) > 2:  # both chats overflow a 128k window: length alone, window fixed
            row(
                f"ratio {int(sizes[-1]):,}/{int(sizes[-2]):,}",
                lambda r: round(r[sizes[-1]]["p50_ms"] / r[sizes[-2]]["p50_ms"], 3),
            )
        if any("paced" in r for r in ok.values()):
            paced = next(r["paced"] for r in ok.values() if "paced" in r)
            held = f"model time held at {paced['model_time_ms']:g} ms"
            for size in sizes:
                row(
                    f"  {held}: p50 at {int(size):,} (ms)",
                    lambda r, s=size: r["paced"][s]["p50_ms"],
                )
            row(
                f"  {held}: ratio {label}",
                lambda r: r["paced"]["ratio"],
                "≤ 1.2",
                lambda b, v: _le(v, 1.2),
            )
    elif name == "throughput":
        row("1 process (msg/s)", lambda r: r["one"]["rate"], "≥ 500", lambda b, v: _ge(v, 500))
        row(
            "  cores: relaybot / fake / PG",
            lambda r: (
                f"{r['one']['relaybot_cores'][0]} / {r['one']['fake_cores']}"
                + (
                    f" / {r['one']['postgres_cores']}"
                    if r["one"]["postgres_cores"] is not None
                    else ""
                )
            ),
        )
        row("2 processes (msg/s)", lambda r: r["two"]["rate"])
        row("  scaling 2 / 1", lambda r: r["scaling"], "≥ 1.4× (PG)", lambda b, v: _ge(v, 1.4))
        row("  best these cores allow (cores ÷ 1-process cores)", lambda r: r["scaling_bound"])
        row(
            "  cores: relaybot×2 / fake / PG",
            lambda r: (
                "+".join(str(c) for c in r["two"]["relaybot_cores"])
                + f" / {r['two']['fake_cores']} / {r['two']['postgres_cores']}"
            ),
        )
    elif name == "concurrency":
        row("chats in flight", lambda r: r["chats"])
        row("achieved (msg/s)", lambda r: r["rate"])
        row("failed messages", lambda r: r["failed"], "0", lambda b, v: v == 0)
        row("ideal (msg/s)", lambda r: r["ideal_rate"])
        row("achieved / ideal", lambda r: r["of_ideal"], "≥ 0.90", lambda b, v: _ge(v, 0.9))
        row(
            "  ideal from scenario 3 re-run just before (msg/s)",
            lambda r: f"{r['nearby_ideal_rate']} (achieved ÷ it {r['of_nearby_ideal']})",
        )
        row("peak RSS (MB)", lambda r: r["peak_rss_mb"], "≤ 300", lambda b, v: _le(v, 300))
        row(
            "latency p50 / p99 (s)",
            lambda r: f"{r['latency_p50_ms'] / 1000:.2f} / {r['latency_p99_ms'] / 1000:.2f}",
        )
    elif name == "adapters":
        if not ok or not all(r.get("available", True) for r in ok.values()):
            rows.append(Row(name, "adapter path", {b: "not available" for b in by_backend}))
            return rows
        for platform_name in ("telegram", "slack"):
            row(f"{platform_name} (msg/s)", functools.partial(_at, platform_name, "rate"))
            row(
                f"{platform_name} overhead p50 (ms)",
                functools.partial(_at, platform_name, "p50_ms"),
            )
            row(
                f"{platform_name} overhead p99 (ms)",
                functools.partial(_at, platform_name, "p99_ms"),
            )
        row(
            "core alone p50 / p99 (ms)",
            lambda r: f"{r['core_alone']['p50_ms']} / {r['core_alone']['p99_ms']}",
        )
    elif name == "context":
        row("max sent ÷ budget", lambda r: r["max"], "≤ 1.0", lambda b, v: _le(v, 1.0))
        row("requests over budget", lambda r: r["over_budget"], "0", lambda b, v: v == 0)
        row(
            "min sent ÷ budget (full window)",
            lambda r: r["min_trimmed"],
            "≥ 0.95",
            lambda b, v: _ge(v, 0.95),
        )
    elif name == "budgets":
        row("overhead p50, no spend this month (ms)", lambda r: r["empty_p50_ms"])
        row(
            "overhead p50 after N paid requests this month (ms)",
            lambda r: f"{r['full_p50_ms']} (N = {r['paid']:,})",
        )
        row("ratio after / before", lambda r: r["ratio"])
    for backend, result in by_backend.items():
        if isinstance(result, dict) and "error" in result:
            lines = [ln.strip(" |") for ln in result["error"].splitlines()]
            last = [ln for ln in lines if "Error" in ln.split(":")[0]] or lines
            rows.append(Row(name, "ERROR", {backend: last[-1][:70]}))
    return rows


def render(rows: list[Row], backends: list[str]) -> str:
    """The table, as fixed-width text (also valid Markdown)."""
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    header = ["scenario", "metric", *(names[b] for b in backends), "target", "met"]
    body = []
    for r in rows:
        met = [
            f"{names[b]}: {'yes' if r.met[b] else 'NO'}"
            for b in backends
            if r.met.get(b) is not None
        ]
        body.append(
            [
                r.scenario,
                r.metric,
                *(str(r.values.get(b, "")) for b in backends),
                r.target,
                ", ".join(met),
            ]
        )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), sep, *(fmt(line) for line in body)])


def speed_line(speed: dict[str, float]) -> str:
    """The machine's speed during a run, from `harness.reference_ms` before each run."""
    return (
        f"machine speed: a fixed piece of Python work took {speed['median']} ms "
        f"(median before each run; {speed['min']}-{speed['max']}; lower is faster)"
    )


def machine() -> dict[str, Any]:
    """Where the numbers were taken."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (targets missed are reported, not an error)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=BACKENDS,
        help="run only on this database (repeatable)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="runs of each scenario per database, their median shown (default 3; --quick 1)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only print the table of an earlier run's JSON"
    )
    args = parser.parse_args(argv)
    if args.render:
        earlier = json.loads(args.render.read_text())
        done = earlier["results"]
        shown = [b for b in BACKENDS if any(b in r for r in done.values())]
        speed = earlier.get("machine", {}).get("reference_ms")
        if speed:
            print(speed_line(speed))
        print(render([row for n in done for row in rows_for(n, done[n])], shown))
        return 0
    plan = QUICK if args.quick else Plan()
    if args.repeat is not None:
        plan = dataclasses.replace(plan, repeats=max(1, args.repeat))
    chosen = args.only or list(SCENARIOS)
    backends = list(args.backend or BACKENDS)
    skipped: dict[str, str] = {}
    if "postgres" in backends and not asyncio.run(harness.postgres_available()):
        backends.remove("postgres")
        skipped["postgres"] = f"PostgreSQL unreachable at {harness.POSTGRES_ADMIN_URL}"
        print(f"note: {skipped['postgres']}; SQLite only", file=sys.stderr)

    results: dict[str, dict[str, Any]] = {}
    references: list[float] = []  # the machine's speed before each run (harness.reference_ms)
    started = time.monotonic()
    for name in chosen:
        results[name] = {}
        for backend in backends:
            t0 = time.monotonic()
            runs: list[dict[str, Any]] = []
            for run in range(plan.repeats):
                step = f"({run + 1}/{plan.repeats})"
                print(f"… {name} on {backend} {step}", file=sys.stderr, flush=True)
                reference = harness.reference_ms()
                references.append(reference)
                try:
                    if name == "concurrency":
                        one = results.get("throughput", {}).get(backend, {}).get("one", {})
                        result = run_concurrency(backend, plan, one.get("rate"))
                    else:
                        result = globals()[f"run_{name}"](backend, plan)
                except Exception:
                    result = {"error": traceback.format_exc()}
                    print(result["error"], file=sys.stderr)
                finally:
                    asyncio.run(harness.drop_databases())
                if "error" in result:
                    runs = [result]
                    break
                result["reference_ms"] = reference
                print(f"  {json.dumps(result, default=str)[:400]}", file=sys.stderr, flush=True)
                runs.append(result)
            result = median_of(runs) if len(runs) > 1 else runs[0]
            if len(runs) > 1:
                result["runs"] = runs
            result["seconds"] = round(time.monotonic() - t0, 1)
            results[name][backend] = result

    rows = [row for name in chosen for row in rows_for(name, results[name])]
    table = render(rows, backends)
    info = machine()
    if references:
        info["reference_ms"] = {
            "median": round(statistics.median(references), 2),
            "min": min(references),
            "max": max(references),
        }
    print(
        f"\nrelaybot benchmark — {info['date']}, {info['cores']} cores {info['cpu']}, "
        f"Python {info['python']}{' (quick)' if args.quick else ''}, "
        f"{time.monotonic() - started:.0f} s"
    )
    if references:
        print(speed_line(info["reference_ms"]))
    print()
    print(table)
    report = {
        "machine": info,
        "quick": args.quick,
        "plan": dataclasses.asdict(plan),
        "skipped": skipped,
        "results": results,
        "table": table,
    }
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {args.output}")
    return 0
