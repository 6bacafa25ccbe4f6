#!/usr/bin/env python3
"""Speculative decoding: `sovcli serve` with and without it, against llama-server's own.

In one run, on the same GGUF, threads, slots and context per sequence, each setting is started
alone on a loopback port, measured and stopped:

  sovcli-plain    sovcli serve --spec off
  sovcli-spec     sovcli serve --spec auto (n-gram drafts from each sequence's own text)
  llama-plain     llama-server (no speculation)
  llama-<type>    llama-server --spec-type <type>, for each n-gram type its --help lists

Each is driven over real HTTP (OpenAI chat completions, non-streaming, temperature 0, the
request's max_tokens) with two workloads from sovcli/engine/workloads.py: documents (JSON
extraction with a schema, summaries, "rewrite this paragraph", copy-heavy) and chat (short
questions, nothing to copy), at 1 client and at 8 concurrent clients. The measure is completion
tokens per second over the cell (sum of `usage.completion_tokens` / wall time). Ratios (median
over rounds; each round runs the settings in the opposite order of the last, to cancel drift):

  documents: sovcli-spec / sovcli-plain (target >= 1.4), sovcli-spec / the best llama-server
             spec type of that cell (target >= 1.1)
  chat:      sovcli-spec / sovcli-plain (target >= 0.97)

Also reported: drafted / accepted tokens from each server's /metrics, how many greedy answers
with speculation differ from the plain ones (and at which character), the machine (CPU model,
AVX2 / AVX-512, cores) and the load average before and after. Human table on stdout, progress
on stderr; `--json` prints one JSON document on stdout instead of the table.

Examples:
  python scripts/bench_spec.py --threads 2                  # quick: 8 requests per cell, 1 round
  python scripts/bench_spec.py --threads 2 --full           # 24 requests per cell, 3 rounds
  python scripts/bench_spec.py --clients 8 --spec-types ngram-mod,ngram-map-k --json > spec.json
  python scripts/bench_spec.py --table-from spec.json       # the table of a saved run
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sovcli.engine.workloads import WorkloadRequest, chat_requests, document_requests

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = Path.home() / ".cache" / "sovcli-test" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = {"doc_spec_plain": 1.4, "doc_spec_llama": 1.1, "chat_spec_plain": 0.97}
DRAFT_METRICS = {
    "sovcli": ("sovcli_draft_tokens_total", "sovcli_draft_accepted_tokens_total"),
    "llama": (
        "llamacpp:spec_decode_num_draft_tokens_total",
        "llamacpp:spec_decode_num_accepted_tokens_total",
    ),
}


if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import compare_servers as compare  # noqa: E402 - loads loadtest_server and llama_baseline too

load = compare.load
baseline = compare.baseline


def log(message: str) -> None:
    """Progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One server configuration: `server` is "sovcli" or "llama"; `spec` is "off", "auto"
    (sovcli), "none" or a --spec-type (llama-server)."""

    name: str
    server: str
    spec: str

    @property
    def speculative(self) -> bool:
        return self.spec not in ("off", "none")


def llama_spec_types(binary: str) -> list[str]:
    """The n-gram `--spec-type` values this llama-server lists in --help (draft-model types
    need a second model and are left out)."""
    out = subprocess.run(
        [binary, "--help"],
        capture_output=True,
        text=True,
        env=baseline.tool_env(Path(binary)),
        timeout=60,
    ).stdout
    for line in out.splitlines():
        if line.startswith("--spec-type "):
            values = line.split()[1].split(",")
            return [v for v in values if v.startswith("ngram")]
    return []


def sovcli_has_spec_option() -> bool:
    """Whether `sovcli serve` takes --spec (else the spec setting relies on SOVCLI_SPEC)."""
    out = subprocess.run(
        [sys.executable, "-m", "sovcli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    return re.search(r"--spec(?![\w-])", out) is not None


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the servers started inside; restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_server(setting: Setting, port: int, args, logs: Path) -> subprocess.Popen:
    """Start one setting's server on `port` and wait until /health answers.

    llama-server is started by compare_servers.py (same slots, context and threads as there);
    its /metrics endpoint and --spec-type are given through llama.cpp's own environment
    variables (LLAMA_ARG_ENDPOINT_METRICS, LLAMA_ARG_SPEC_TYPE)."""
    log_path = logs / f"{setting.name}.log"
    if setting.server == "sovcli":
        extra = [f"--spec={setting.spec}"] if args.sovcli_spec_option else []
        # Reproducible engines never draft (sovcli/engine/core.py `_spec_mode`): both sovcli
        # settings run llama.cpp's batch-shaped kernels, as llama-server does.
        env = {"SOVCLI_SPEC": setting.spec, "SOVCLI_REPRODUCIBLE": "0"}
        with environ(env):  # read by the engine (sovcli.settings)
            return load.start_sovcli(
                args.model,
                port,
                args.parallel,
                args.threads,
                args.ctx,
                log_path,
                [*extra, *args.sovcli_arg],
            )
    env = {"LLAMA_ARG_ENDPOINT_METRICS": "1"}
    if setting.speculative:
        env["LLAMA_ARG_SPEC_TYPE"] = setting.spec
    with environ(env):
        return compare.start_llama_server(args.llama_server, args.model, port, args, log_path)


# ---------------------------------------------------------------------------- HTTP


class Client:
    """One keep-alive HTTP connection to a loopback server."""

    def __init__(self, port: int, timeout: float = 300) -> None:
        self.port, self.timeout = port, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        """(status, body bytes); reconnects once if the kept-alive connection was closed."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def draft_counters(port: int, server: str) -> tuple[int, int]:
    """(drafted, accepted) token counters from the server's /metrics (0 when absent)."""
    client = Client(port)
    try:
        status, body = client.request("GET", "/metrics")
    finally:
        client.close()
    if status != 200:
        return 0, 0
    totals = dict.fromkeys(DRAFT_METRICS[server], 0.0)
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        if name in totals:
            totals[name] += float(value)
    drafted, accepted = (int(totals[n]) for n in DRAFT_METRICS[server])
    return drafted, accepted


@dataclass
class Cell:
    """One setting measured on one workload at one client count in one round."""

    setting: str
    round: int
    workload: str
    clients: int
    requests: int = 0
    errors: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    wall_s: float = 0.0
    drafted: int = 0
    accepted: int = 0
    texts: list[str | None] = field(default_factory=list)
    first_error: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0


def run_cell(cell: Cell, port: int, requests: list[WorkloadRequest], args) -> Cell:
    """Send `requests` with `cell.clients` concurrent clients (each takes the next request);
    fills tokens, wall time and the answers (in request order) into `cell`."""
    cell.texts = [None] * len(requests)
    queue = iter(enumerate(requests))
    lock = threading.Lock()

    def worker() -> None:
        client = Client(port, args.request_timeout)
        try:
            while True:
                with lock:
                    item = next(queue, None)
                if item is None:
                    return
                index, request = item
                body = request.openai_body(args.model)
                if not args.use_schema:
                    body.pop("response_format", None)
                try:
                    status, raw = client.request("POST", "/v1/chat/completions", body)
                except OSError as exc:  # timed out or refused: this client stops
                    status, raw = 0, f"{type(exc).__name__}: {exc}".encode()
                with lock:
                    _record(cell, index, status, raw)
                if status == 0:
                    return
        finally:
            client.close()

    before = draft_counters(port, "sovcli" if cell.setting.startswith("sovcli") else "llama")
    started = time.perf_counter()
    with ThreadPoolExecutor(cell.clients) as pool:
        for future in [pool.submit(worker) for _ in range(cell.clients)]:
            future.result()
    cell.wall_s = time.perf_counter() - started
    after = draft_counters(port, "sovcli" if cell.setting.startswith("sovcli") else "llama")
    cell.drafted, cell.accepted = after[0] - before[0], after[1] - before[1]
    cell.requests = len(requests)
    return cell


def _record(cell: Cell, index: int, status: int, raw: bytes) -> None:
    """Count one response into the cell (an error counts no tokens)."""
    try:
        data = json.loads(raw) if status == 200 else None
        usage = data["usage"] if data else None
        text = data["choices"][0]["message"]["content"] if data else None
    except (ValueError, KeyError, IndexError, TypeError):
        data = usage = text = None
    if usage is None:
        cell.errors += 1
        cell.first_error = cell.first_error or f"HTTP {status}: {raw[:200]!r}"
        return
    cell.completion_tokens += int(usage.get("completion_tokens", 0))
    cell.prompt_tokens += int(usage.get("prompt_tokens", 0))
    cell.texts[index] = text


# ---------------------------------------------------------------------------- the run


def workload_requests(workload: str, clients: int, args) -> list[WorkloadRequest]:
    """The cell's requests: the same for every setting and round, different per client count
    (so no cell finds the previous cell's prompts in a prompt cache)."""
    make = document_requests if workload == "doc" else chat_requests
    return make(args.requests, seed=args.seed + clients)


def workloads_of(setting: Setting, args) -> tuple[str, ...]:
    """llama-server's speculative settings only matter for the documents' ratio: they skip
    the chat workload unless --llama-spec-chat."""
    if setting.server == "llama" and setting.speculative and not args.llama_spec_chat:
        return ("doc",)
    return ("doc", "chat")


def measure_setting(setting: Setting, round_no: int, port: int, args, logs: Path) -> list[Cell]:
    """Start, warm up, measure every workload x clients cell, stop."""
    log(f"[round {round_no}] {setting.name}: starting")
    process = start_server(setting, port, args, logs)
    cells = []
    try:
        warm = chat_requests(2, seed=10_000)
        for request in warm:
            request.max_tokens = 8
        run_cell(Cell(setting.name, round_no, "warm-up", 2), port, warm, args)
        for workload, clients in itertools.product(workloads_of(setting, args), args.clients):
            requests = workload_requests(workload, clients, args)
            cell = run_cell(Cell(setting.name, round_no, workload, clients), port, requests, args)
            cells.append(cell)
            if cell.errors == cell.requests:
                raise SystemExit(f"every request failed: {cell.first_error}")
            log(
                f"[round {round_no}] {setting.name} {workload} x{clients}: "
                f"{cell.completion_tokens} tokens in {cell.wall_s:.1f} s = "
                f"{cell.tokens_per_s:.1f} tok/s, drafted {cell.drafted}, accepted {cell.accepted}"
                + (f", {cell.errors} errors ({cell.first_error})" if cell.errors else "")
            )
    finally:
        load.stop(process)
    return cells


def probe_schema(args, logs: Path) -> tuple[bool, str]:
    """Whether llama-server accepts an extraction's schema as response_format json_schema."""
    if not args.llama_server:
        return True, "json_schema response_format (sovcli only; no llama-server)"
    setting = Setting("llama-probe", "llama", "none")
    process = start_server(setting, args.port, args, logs)
    try:
        request = next(r for r in document_requests(3, seed=args.seed) if r.schema)
        request.max_tokens = 16
        client = Client(args.port)
        status, _ = client.request("POST", "/v1/chat/completions", request.openai_body(args.model))
        client.close()
    finally:
        load.stop(process)
    if status == 200:
        return True, "extraction schema sent as response_format json_schema to both servers"
    return False, f"no schema for either server (llama-server answered {status} to json_schema)"


def settings_of(args) -> list[Setting]:
    """Every setting this run measures, in round-1 order."""
    out = [Setting("sovcli-plain", "sovcli", "off"), Setting("sovcli-spec", "sovcli", "auto")]
    if args.llama_server:
        out.append(Setting("llama-plain", "llama", "none"))
        out += [Setting(f"llama-{t}", "llama", t) for t in args.spec_types]
    return out


def machine() -> dict:
    """CPU model, AVX2 / AVX-512, cores (sovcli.system.cpu_info plus /proc/cpuinfo flags)."""
    from sovcli.system import cpu_info

    info = cpu_info()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    info["avx2"] = "avx2" in flags or "avx2" in info.get("features", [])
    info["avx512"] = sorted(f for f in flags if f.startswith("avx512"))
    return info


# ---------------------------------------------------------------------------- summary


def first_difference(a: str, b: str) -> int | None:
    """Index of the first differing character, or None when equal."""
    if a == b:
        return None
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def compare_texts(cells: list[Cell], a: str, b: str, across_rounds: bool = False) -> dict:
    """Answers of setting `a` vs setting `b`, request by request, same cell and same round
    (or, with `across_rounds`, round r of `a` against round r + 1 of `b`: a control)."""
    by_key = {(c.setting, c.round, c.workload, c.clients): c for c in cells}
    out: dict[str, dict] = {}
    for (name, round_no, workload, clients), cell in by_key.items():
        other = by_key.get((b, round_no + across_rounds, workload, clients))
        if name != a or other is None:
            continue
        entry = out.setdefault(f"{workload} x{clients}", {"compared": 0, "differ": 0, "at": []})
        for x, y in zip(cell.texts, other.texts, strict=True):
            if x is None or y is None:
                continue
            entry["compared"] += 1
            index = first_difference(x, y)
            if index is not None:
                entry["differ"] += 1
                entry["at"].append(index)
    return out


def rates(cells: list[Cell]) -> dict[tuple[str, str, int], dict[int, float]]:
    """(setting, workload, clients) -> {round: tokens/s}."""
    out: dict[tuple[str, str, int], dict[int, float]] = {}
    for c in cells:
        out.setdefault((c.setting, c.workload, c.clients), {})[c.round] = c.tokens_per_s
    return out


def ratios(cells: list[Cell], settings: list[Setting], args) -> list[dict]:
    """The issue's ratios per workload x clients, from medians over rounds."""
    per = rates(cells)
    med = {k: statistics.median(v.values()) for k, v in per.items()}
    llama_spec = [s.name for s in settings if s.server == "llama" and s.speculative]
    out = []
    for workload, clients in itertools.product(("doc", "chat"), args.clients):
        spec, plain = (
            med.get(("sovcli-spec", workload, clients)),
            med.get(("sovcli-plain", workload, clients)),
        )
        rows = [("spec/plain", "sovcli-plain", plain)]
        scored = [(med.get((n, workload, clients), 0.0), n) for n in llama_spec]
        if workload == "doc" and scored:
            best_rate, best = max(scored)
            rows.append(("spec/llama-best-spec", best, best_rate))
        if med.get(("llama-plain", workload, clients)):
            rows.append(
                ("spec/llama-plain", "llama-plain", med[("llama-plain", workload, clients)])
            )
        for label, against, rate in rows:
            key = f"{workload}_{'spec_plain' if label == 'spec/plain' else 'spec_llama'}"
            target = TARGETS.get(key) if label != "spec/llama-plain" else None
            value = spec / rate if spec and rate else None
            ours, theirs = (per.get((n, workload, clients), {}) for n in ("sovcli-spec", against))
            per_round = [round(ours[r] / theirs[r], 3) for r in sorted(ours) if theirs.get(r)]
            out.append(
                {
                    "cell": f"{workload} x{clients}",
                    "ratio": label,
                    "against": against,
                    "value": round(value, 3) if value else None,
                    "target": target,
                    "ok": (value >= target) if (value and target) else None,
                    "per_round": per_round,
                }
            )
    return out


def print_table(report: dict, args) -> None:
    """The human summary, on stdout."""
    m, cells = report["machine"], [Cell(**c) for c in report["cells"]]
    before, after = (" ".join(f"{x:.2f}" for x in report[k]) for k in ("load_before", "load_after"))
    print(
        f"machine: {m.get('model')} ({m.get('arch')}), AVX2 {'yes' if m['avx2'] else 'no'}, "
        f"AVX-512 {', '.join(m['avx512']) or 'no'}, {m.get('physical_cores')} physical cores / "
        f"{m.get('logical_cpus')} logical; load average "
        f"{before} -> {after}"
    )
    print(
        f"model {Path(args.model).name}, {args.threads} threads, {args.parallel} slots, "
        f"ctx {args.ctx} per sequence, {args.requests} requests per cell, {args.rounds} round(s) "
        f"(order alternates), temperature 0, {report['wall_s']:.0f} s in all"
    )
    print(f"schema: {report['schema']}; llama-server: {report['llama_server']}")
    if not args.sovcli_spec_option:
        print("note: `sovcli serve` has no --spec option here; the setting used SOVCLI_SPEC only")
    keys = [f"{w} x{c}" for w, c in itertools.product(("doc", "chat"), args.clients)]
    header = "completion tok/s (wall), median over rounds"
    print(f"\n{header:44s}" + "".join(f"{k:>18s}" for k in keys))
    for name in report["settings"]:
        row = []
        for key in keys:
            sub = [c for c in cells if c.setting == name and f"{c.workload} x{c.clients}" == key]
            if sub:
                rate = statistics.median(c.tokens_per_s for c in sub)
                wall = statistics.median(c.wall_s for c in sub)
                row.append(f"{rate:.1f} ({wall:.0f} s)")
            else:
                row.append("-")
        print(f"  {name:42s}" + "".join(f"{r:>18s}" for r in row))
    print("\ndrafted / accepted tokens (sum over rounds, from /metrics):")
    for name in report["settings"]:
        sub = [c for c in cells if c.setting == name]
        if any(c.drafted for c in sub) or name == "sovcli-spec":
            parts = []
            for key in keys:
                d = sum(c.drafted for c in sub if f"{c.workload} x{c.clients}" == key)
                a = sum(c.accepted for c in sub if f"{c.workload} x{c.clients}" == key)
                parts.append(f"{key} {d}/{a}" + (f" ({a / d:.0%})" if d else ""))
            print(f"  {name:20s} " + "; ".join(parts))
    print("\nratios (sovcli-spec over ..., median of rounds; per round in brackets):")
    for r in report["ratios"]:
        verdict = "" if r["ok"] is None else (" ok" if r["ok"] else " BELOW TARGET")
        target = f" (target >= {r['target']})" if r["target"] else ""
        value = f"{r['value']:.3f}x" if r["value"] else "n/a"
        print(
            f"  {r['cell']:8s} {r['ratio']:22s} {r['against']:20s} {value}{target}{verdict} "
            f"{r['per_round']}"
        )
    print("\ngreedy answers compared, request by request (same cell):")
    for label, diffs in report["differences"].items():
        parts = [
            f"{k} {v['differ']}/{v['compared']} differ"
            + (f" (first differing char {', '.join(map(str, v['at']))})" if v["at"] else "")
            for k, v in diffs.items()
        ]
        print(f"  {label:30s} " + "; ".join(parts))
    errors = sum(c.errors for c in cells)
    if errors:
        print(f"\n{errors} request errors; first: {next(c.first_error for c in cells if c.errors)}")


# ---------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="GGUF path or store ref")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--parallel", type=int, default=8, help="slots of both servers")
    parser.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=8, help="requests per cell")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="24 requests per cell, 3 rounds")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--request-timeout", type=float, default=300, help="seconds")
    parser.add_argument("--port", type=int, default=8290)
    parser.add_argument("--llama-server", default=None, help="llama-server binary")
    parser.add_argument("--no-llama", action="store_true", help="measure sovcli only")
    parser.add_argument(
        "--spec-types", default=None, help="llama-server --spec-type values (default: all n-gram)"
    )
    parser.add_argument(
        "--llama-spec-chat", action="store_true", help="also run llama-server's spec types on chat"
    )
    parser.add_argument("--schema", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--sovcli-arg", action="append", default=[], metavar="ARG")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of the table")
    parser.add_argument(
        "--table-from",
        metavar="FILE",
        help="print the table of an earlier --json run, measure nothing",
    )
    args = parser.parse_args()
    if args.table_from:
        return args
    if args.full:
        args.requests, args.rounds = max(args.requests, 24), max(args.rounds, 3)
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if not args.clients or min(args.clients) < 1 or max(args.clients) > args.parallel:
        parser.error(f"--clients must be between 1 and --parallel ({args.parallel})")
    args.model = resolve_model(args.model)
    if args.no_llama:
        args.llama_server = None
    elif args.llama_server is None:
        found = baseline.locate_tool("llama-server")
        args.llama_server = str(found[0]) if found else None
    if args.llama_server:
        args.spec_types = (
            [t for t in args.spec_types.split(",") if t and t != "none"]
            if args.spec_types is not None
            else llama_spec_types(args.llama_server)
        )
    return args


def resolve_model(ref: str) -> str:
    """A GGUF path for `ref` (a path, or a model installed in the sovcli store)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return str(path.resolve())
    from sovcli.resolve import find_installed

    installed = find_installed(ref)
    if installed is None:
        sys.exit(f"error: {ref} is neither a GGUF file nor an installed model (sovcli pull {ref})")
    return str(installed.gguf_path)


def table_from(path: str) -> int:
    """Print the human table of a report saved with --json."""
    report = json.loads(Path(path).read_text())
    fields = ("model", "threads", "parallel", "ctx", "requests", "rounds", "clients")
    args = argparse.Namespace(**{k: report[k] for k in fields})
    args.sovcli_spec_option = report.get("sovcli_spec_option", True)
    print_table(report, args)
    return 0


def main() -> int:
    args = parse_args()
    if args.table_from:
        return table_from(args.table_from)
    args.sovcli_spec_option = sovcli_has_spec_option()
    logs = Path(f"/tmp/sovcli-bench-spec-{os.getpid()}")
    logs.mkdir(parents=True, exist_ok=True)
    log(f"logs in {logs}; llama-server {args.llama_server}; spec types {args.spec_types}")
    load_before, started = os.getloadavg(), time.perf_counter()
    args.use_schema, schema_note = (
        probe_schema(args, logs) if args.schema == "auto" else (args.schema == "on", args.schema)
    )
    settings = settings_of(args)
    cells: list[Cell] = []
    for round_no in range(1, args.rounds + 1):
        order = settings if round_no % 2 else settings[::-1]
        for setting in order:
            port = args.port + 1 + settings.index(setting)
            try:
                cells += measure_setting(setting, round_no, port, args, logs)
            except SystemExit as exc:  # a server that did not start: say so, go on
                log(f"[round {round_no}] {setting.name}: failed ({exc}); see {logs}")
    differences = {
        "sovcli-spec vs sovcli-plain": compare_texts(cells, "sovcli-spec", "sovcli-plain")
    }
    if args.rounds > 1:  # the control: how much plain greedy output moves between rounds
        differences["sovcli-plain round r vs r+1"] = compare_texts(
            cells, "sovcli-plain", "sovcli-plain", across_rounds=True
        )
    for s in settings:
        if s.server == "llama" and s.speculative:
            differences[f"{s.name} vs llama-plain"] = compare_texts(cells, s.name, "llama-plain")
    report = {
        "machine": machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "wall_s": time.perf_counter() - started,
        "model": args.model,
        "threads": args.threads,
        "parallel": args.parallel,
        "ctx": args.ctx,
        "requests": args.requests,
        "rounds": args.rounds,
        "clients": args.clients,
        "schema": schema_note,
        "sovcli_spec_option": args.sovcli_spec_option,
        "llama_server": args.llama_server,
        "settings": [s.name for s in settings],
        "ratios": ratios(cells, settings, args),
        "differences": differences,
        "cells": [asdict(c) for c in cells],
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report, args)
    return 1 if any(c.errors for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
