#!/usr/bin/env python3
"""Benchmark the store: a hub pull through sovcli vs the hub client's own hf_hub_download,
and reading GGUF metadata with sovcli's header parser vs gguf.GGUFReader.

Both sides run in the same process, against the same local hub-protocol server
(tests/store/hub_server.py) and the same file, so the ratios are what count.

    python scripts/bench_pull.py [PATH.gguf]   (default: the cached SmolLM2 test model)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _interleaved(first, second, rounds: int) -> tuple[float, float]:
    """Best times of two functions run alternately (so machine noise hits both alike)."""
    a, b = [], []
    for _ in range(rounds):
        for fn, out in ((first, a), (second, b)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return min(a), min(b)


def main() -> None:
    """Run both comparisons and print the figures."""
    from tests.store.hub_server import HubServer

    default = Path.home() / ".cache" / "sovcli-test" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf_path = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    size = gguf_path.stat().st_size
    work = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["SOVCLI_CATALOG"] = str(work / "none.toml")
    with HubServer() as hub:
        hub.add_repo("bench/model-GGUF", {"model-Q4_K_M.gguf": gguf_path})
        os.environ["HF_ENDPOINT"] = hub.url
        from huggingface_hub import hf_hub_download

        from sovcli.resolve import pull_model

        def hub_client() -> None:
            target = work / "hf"
            shutil.rmtree(target, ignore_errors=True)
            hf_hub_download(
                "bench/model-GGUF", "model-Q4_K_M.gguf", local_dir=target, endpoint=hub.url
            )

        def sovcli_pull() -> None:
            home = work / "home"
            shutil.rmtree(home, ignore_errors=True)
            os.environ["SOVCLI_HOME"] = str(home)
            pull_model("hf:bench/model-GGUF")

        t_hub, t_sov = _interleaved(hub_client, sovcli_pull, rounds=5)
    print(f"file: {gguf_path.name} ({size / 1e6:.1f} MB)")
    print(f"hf_hub_download (hub client alone): {t_hub:.2f} s ({size / t_hub / 1e6:.0f} MB/s)")
    print(
        f"sovcli pull (sha256 + GGUF check + manifest): {t_sov:.2f} s "
        f"({size / t_sov / 1e6:.0f} MB/s)"
    )
    print(f"ratio sovcli/hub client: {t_sov / t_hub:.2f}")
    import hashlib

    t_hash = _best(lambda: hashlib.sha256(gguf_path.read_bytes()).hexdigest())
    print(f"of which sha256 of the file alone: {t_hash:.2f} s")

    import gguf

    from sovcli.store.ggufmeta import read_metadata

    t_parser = _best(lambda: read_metadata([gguf_path]))
    t_reader = _best(lambda: gguf.GGUFReader(str(gguf_path), "r"), repeat=1)
    print(
        f"metadata: sovcli header parser {t_parser * 1000:.0f} ms, "
        f"gguf.GGUFReader {t_reader * 1000:.0f} ms, ratio {t_reader / t_parser:.0f}x"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
