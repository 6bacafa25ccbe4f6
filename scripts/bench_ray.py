#!/usr/bin/env python3
"""Benchmark `sovcli batch --ray`: documents per minute on one process vs a local two-node
Ray cluster at the same total threads, on the same machine (so it measures overhead).

One process: `sovcli batch ... --threads T --parallel P`. Cluster: two nodes on this machine
(`ray start --head`, then `ray start --address`, token authentication on; see
tests/batch/ray_cluster.py), `sovcli batch ... --ray ADDR --threads T/2 --parallel P/2`, so
both use T threads and P sequences in all. Rates use each run's own time (`seconds` of the
JSON summary: model loading and cluster start excluded). The runs alternate (one, cluster;
cluster, one; ...) on a machine that may be shared, and the ratio of the mean rates,
cluster / one process, is what to quote (target >= 0.9x). The model is the test model,
imported into a private store.

Usage: python scripts/bench_ray.py [--docs 48] [--max-tokens 24] [--threads 2] [--parallel 4]
                                   [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "batch"))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_batch import make_folder  # noqa: E402
from ray_cluster import local_cluster  # noqa: E402

MODEL = "smollm2-135m:Q4_1"


def install_model(home: Path) -> None:
    """The test model in the store at `home` (hardlinked from the test cache)."""
    from fetch_test_model import gguf_path

    env = {**os.environ, "SOVCLI_HOME": str(home)}
    code = (
        "from sovcli.sources.local import import_gguf; from pathlib import Path; "
        f"import_gguf(Path({str(gguf_path())!r}), name='smollm2-135m', tag='Q4_1', link=True)"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def run(folder: Path, out: Path, extra: list[str], env: dict[str, str], args) -> dict:
    """One `sovcli batch` run; its JSON summary."""
    command = [
        sys.executable, "-m", "sovcli", "batch", MODEL, str(folder), "-o", str(out),
        "--prompt", "Summarise {name} in two sentences: {text}", "--ctx", str(args.ctx),
        "--max-tokens", str(args.max_tokens), "--json", "-q", *extra,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        raise SystemExit(f"sovcli batch failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout)


def per_minute(summary: dict) -> float:
    return summary["processed"] / summary["seconds"] * 60 if summary["seconds"] else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2, help="total threads (split by node)")
    parser.add_argument("--parallel", type=int, default=4, help="total sequences")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs, order alternating")
    args = parser.parse_args()
    whole = ["--threads", str(args.threads), "--parallel", str(args.parallel)]
    split = ["--threads", str(max(1, args.threads // 2)),
             "--parallel", str(max(1, args.parallel // 2))]  # fmt: skip
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        base = Path(tmp)
        home = base / "home"
        install_model(home)
        folder = base / "docs"
        make_folder(folder, args.docs)
        env = {**os.environ, "SOVCLI_HOME": str(home), "SOVCLI_AUDIT": "0"}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with local_cluster(home, base / "worker-home") as cluster:
            ray_env = {**env, **cluster.env}
            for n in range(args.rounds):
                runs = {
                    "one": lambda n=n: run(folder, base / f"one{n}.jsonl", whole, env, args),
                    "two": lambda n=n: run(folder, base / f"two{n}.jsonl",
                                           [*split, "--ray", cluster.address], ray_env, args),
                }  # fmt: skip
                order = ["one", "two"] if n % 2 == 0 else ["two", "one"]
                done = {name: runs[name]() for name in order}
                rounds.append({name: per_minute(done[name]) for name in ("one", "two")})
    one = sum(r["one"] for r in rounds) / len(rounds)
    two = sum(r["two"] for r in rounds) / len(rounds)
    print(json.dumps({
        "documents": args.docs, "max_tokens": args.max_tokens,
        "total_threads": args.threads, "total_parallel": args.parallel,
        "rounds": [{k: round(v, 1) for k, v in r.items()} for r in rounds],
        "one_process_docs_per_min": round(one, 1),
        "two_node_cluster_docs_per_min": round(two, 1),
        "ratio": round(two / one, 3) if one else None,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
