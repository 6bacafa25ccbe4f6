#!/usr/bin/env python3
"""Soak `sovcli serve` under mixed hostile and normal traffic (loopback only, bounded).

Starts `sovcli serve MODEL` on 127.0.0.1 (API key, content audit log, 2 s header timeout)
and runs two phases of `--duration` seconds each on the same server:

1. baseline: `--clients` normal clients (the openai SDK, short greedy chat completions);
2. hostile: the same normal clients, plus `--slow-clients` connections trickling header
   bytes (re-opened as they are dropped) and `--hostile-workers` threads sending, in turn:
   bodies over the size cap, 100k-deep JSON, schemas asking for millions of items, out of
   range parameters, embedding token ids outside the vocabulary, lone surrogates,
   unauthenticated junk paths with control characters, forged X-Forwarded-For, oversized
   prompts (at most one every `--big-prompt-every` s) and streams dropped mid-way.

Reports crashes (the server must still be running, and no 5xx may be seen), the normal
clients' p50/p99 latency in both phases and their ratio (target: p99 within 1.5x), the
errors normal clients saw, hostile outcomes that were not the expected answer, how long
trickling clients were held, the audit log (every line whole; a record for every answer a
normal client got) and the server's RSS over time (flat after warm-up).

Example:
  python scripts/soak_serve.py --duration 60 --clients 4
  python scripts/soak_serve.py --duration 600 --json soak.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import loadtest_server as load  # scripts/ is on the path: rss_mib, percentile, PROMPTS, stop

DEFAULT_MODEL = Path.home() / ".cache" / "sovcli-test" / "SmolLM2-135M-Instruct.Q4_1.gguf"
API_KEY = "soak-key-" + "0123456789abcdef" * 2
HOST = "127.0.0.1"
LISTENING = re.compile(r"serving .* at http://127\.0\.0\.1:(\d+)/v1")
HEADER_TIMEOUT_S = 2.0
RSS_EVERY_S = 5.0
FORGED_IP = "203.0.113.66"  # what forged X-Forwarded-For headers claim


@dataclass
class Phase:
    """What the normal clients saw in one phase."""

    name: str
    seconds: float = 0.0
    requests: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, took: float, error: str | None) -> None:
        """Count one normal request."""
        with self.lock:
            self.requests += 1
            if error is None:
                self.ok += 1
                self.latencies.append(took)
            else:
                self.errors[error] += 1

    def summary(self) -> dict:
        """Counts and latency percentiles (seconds)."""
        return {
            "phase": self.name,
            "seconds": round(self.seconds, 1),
            "requests": self.requests,
            "ok": self.ok,
            "requests_per_s": round(self.requests / self.seconds, 2) if self.seconds else 0,
            "p50_s": _r(load.percentile(self.latencies, 50)),
            "p99_s": _r(load.percentile(self.latencies, 99)),
            "max_s": _r(max(self.latencies, default=None)),
            "errors": dict(self.errors),
        }


@dataclass
class Hostile:
    """What the hostile traffic got back."""

    sent: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    server_errors: int = 0  # 5xx answers: bugs
    slow_opened: int = 0
    slow_dropped: int = 0
    slow_max_held_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, kind: str, outcome: str, expected: set[str]) -> None:
        """Count one hostile request and whether its outcome was the expected one."""
        with self.lock:
            self.sent[kind] += 1
            if outcome not in expected:
                self.unexpected[f"{kind}: {outcome}"] += 1
            if outcome.isdigit() and int(outcome) >= 500:
                self.server_errors += 1


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---- the server ----------------------------------------------------------------------------
def start_server(args, workdir: Path) -> tuple[subprocess.Popen, int, Path]:
    """`sovcli serve` on a free loopback port; returns the process, port and audit path."""
    audit = workdir / "audit.jsonl"
    log_path = workdir / "server.log"
    cmd = [
        sys.executable, "-m", "sovcli", "serve", str(args.model), "--port", "0",
        "--parallel", str(args.parallel), "--ctx", str(args.ctx), "--quiet",
        "--audit-log", str(audit), "--audit-content",
        "--header-timeout", str(HEADER_TIMEOUT_S),
    ]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += list(getattr(args, "sovcli_arg", None) or [])
    env = {**os.environ, "SOVCLI_API_KEYS": f"soak:{API_KEY}", "SOVCLI_HOME": str(workdir)}
    env.pop("SOVCLI_DEBUG", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    deadline = time.monotonic() + 120
    port = None
    while port is None and time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: the server exited:\n{log_path.read_text()}")
        match = LISTENING.search(log_path.read_text(errors="replace"))
        port = int(match.group(1)) if match else None
        time.sleep(0.1)
    if port is None:
        process.kill()
        raise SystemExit("error: the server did not start in 120 s")
    while time.monotonic() < deadline and raw_status(port, "GET", "/health") != "200":
        time.sleep(0.2)
    return process, port, audit


def raw_status(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> str:
    """The status of one plain HTTP exchange, or the name of the error it ended in."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return str(response.status)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        conn.close()


# ---- normal clients --------------------------------------------------------------------------
def normal_client(index: int, port: int, args, phase: Phase, stop: threading.Event) -> None:
    """Short greedy chat completions through the openai SDK until `stop`."""
    import openai

    client = openai.OpenAI(
        base_url=f"http://{HOST}:{port}/v1", api_key=API_KEY, max_retries=0, timeout=120
    )
    n = 0
    while not stop.is_set():
        prompt = load.PROMPTS[(index * 7 + n) % len(load.PROMPTS)]
        started = time.perf_counter()
        try:
            client.chat.completions.create(
                model=args.model_id,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=args.max_tokens,
                temperature=0,
            )
            error = None
        except Exception as exc:  # every failure is counted, none stops the run
            error = f"{type(exc).__name__}: {str(exc)[:100]}"
        phase.note(time.perf_counter() - started, error)
        n += 1
        if phase.requests >= args.max_requests:
            stop.set()


# ---- hostile traffic ---------------------------------------------------------------------------
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def _chat(model: str, content: object, **extra: object) -> bytes:
    body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": content}]}
    return json.dumps({**body, **extra}).encode()


def hostile_requests(model: str, big_prompt_due: list[float], every: float):
    """(kind, method, path, body, headers, expected statuses) for one round, shuffled."""
    huge_schema = {"type": "json_schema", "json_schema": {"schema": {
        "type": "array", "minItems": 3_000_000, "items": {"type": "integer"}}}}  # fmt: skip
    deep = b'{"model": "%s", "messages": ' % model.encode() + b"[" * 100_000 + b"]" * 100_000 + b"}"
    junk = "/v1/%0A2030-01-01T00:00:00.000Z%206.6.6.6%20GET%20/admin%20200%1B%5B2J" + "x" * 6000
    rounds = [
        ("deep_json", "POST", "/v1/chat/completions", deep, AUTH, {"400"}),
        ("bad_schema", "POST", "/v1/chat/completions",
         _chat(model, "Numbers.", response_format=huge_schema), AUTH, {"400"}),
        ("bad_params", "POST", "/v1/chat/completions",
         _chat(model, "Hi", temperature=1e308, top_p=5), AUTH, {"400"}),
        ("bad_params", "POST", "/v1/chat/completions",
         _chat(model, "Hi", max_tokens=-1), AUTH, {"400"}),
        ("bad_params", "POST", "/v1/completions",
         json.dumps({"model": model, "prompt": [1, 2, 10**12]}).encode(), AUTH, {"400"}),
        ("oov_embeddings", "POST", "/v1/embeddings",
         json.dumps({"model": model, "input": [[1, 10**9]]}).encode(), AUTH, {"400"}),
        ("lone_surrogate", "POST", "/v1/chat/completions",
         b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800"}]}'
         % model.encode(), AUTH,
         {"400"}),
        ("junk_path", "GET", junk, None, {}, {"401"}),
        ("junk_path", "POST", "/v1/chat/completions%1B[31m", b"{}", {}, {"401"}),
        ("forged_forwarded", "GET", "/v1/models", None,
         {**AUTH, "X-Forwarded-For": FORGED_IP, "X-Real-IP": FORGED_IP}, {"200"}),
        ("not_json", "POST", "/v1/chat/completions", b"\xff\xfe{]", AUTH, {"400"}),
    ]  # fmt: skip
    now = time.monotonic()
    if now >= big_prompt_due[0]:
        big_prompt_due[0] = now + every
        rounds.append(("oversized_prompt", "POST", "/v1/chat/completions",
                       _chat(model, "word " * 700_000), AUTH, {"400"}))  # fmt: skip
    random.shuffle(rounds)
    return rounds


def too_large_body(port: int) -> str:
    """Declare and start sending 6 MB (over the 4 MB cap): the answer must be a 413."""
    try:
        with socket.create_connection((HOST, port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + API_KEY.encode() + b"\r\nContent-Length: 6000000\r\n\r\n" + b"x" * 65536
            )  # fmt: skip
            return sock.recv(64).split(b" ", 2)[1].decode()
    except (OSError, IndexError) as exc:
        return type(exc).__name__


def dropped_stream(port: int, model: str) -> str:
    """A streamed chat left after a few events: "dropped" when it had started."""
    body = _chat(model, "Tell me a long story about a dragon.", stream=True, max_tokens=200)
    try:
        with socket.create_connection((HOST, port), timeout=60) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + API_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )  # fmt: skip
            seen = sock.recv(65536)
            while seen.count(b"data: ") < 3 and seen.startswith(b"HTTP/1.1 200"):
                more = sock.recv(65536)
                if not more:
                    break
                seen += more
            return "dropped" if seen.count(b"data: ") >= 3 else seen[:12].decode(errors="replace")
    except OSError as exc:
        return type(exc).__name__


def hostile_worker(port: int, args, hostile: Hostile, stop: threading.Event, due: list) -> None:
    """Hostile requests in turn until `stop`."""
    while not stop.is_set():
        for kind, method, path, body, headers, expected in hostile_requests(
            args.model_id, due, args.big_prompt_every
        ):
            if stop.is_set():
                return
            hostile.note(kind, raw_status(port, method, path, body, headers), expected)
            time.sleep(args.hostile_pause)
        hostile.note("too_large_body", too_large_body(port), {"413"})
        hostile.note("dropped_stream", dropped_stream(port, args.model_id), {"dropped"})


def slow_headers(port: int, count: int, hostile: Hostile, stop: threading.Event) -> None:
    """Keep `count` connections trickling header lines; note when each is dropped."""
    opened: dict[socket.socket, float] = {}

    def open_one() -> None:
        try:
            sock = socket.create_connection((HOST, port), timeout=5)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            sock.settimeout(0.005)
            opened[sock] = time.monotonic()
            hostile.slow_opened += 1
        except OSError:
            pass

    while not stop.is_set():
        while len(opened) < count and not stop.is_set():
            open_one()
        for sock, since in list(opened.items()):
            gone = False
            try:
                sock.recv(4096)  # a 408 or EOF: dropped
                gone = True
            except TimeoutError:
                try:
                    sock.sendall(b"X-Trickle: 1\r\n")
                except OSError:
                    gone = True
            except OSError:
                gone = True
            if gone:
                held = time.monotonic() - since
                hostile.slow_dropped += 1
                hostile.slow_max_held_s = max(hostile.slow_max_held_s, held)
                sock.close()
                del opened[sock]
        time.sleep(0.5)
    for sock in opened:
        sock.close()


# ---- the run ---------------------------------------------------------------------------------
def run_phase(name: str, port: int, args, hostile: Hostile | None) -> Phase:
    """Normal clients (and hostile traffic, if given) for `--duration` seconds."""
    phase = Phase(name)
    stop = threading.Event()
    threads = [
        threading.Thread(target=normal_client, args=(i, port, args, phase, stop), daemon=True)
        for i in range(args.clients)
    ]
    if hostile is not None:
        due = [time.monotonic()]
        threads += [
            threading.Thread(target=hostile_worker, args=(port, args, hostile, stop, due),
                             daemon=True)
            for _ in range(args.hostile_workers)
        ]  # fmt: skip
        threads.append(
            threading.Thread(
                target=slow_headers, args=(port, args.slow_clients, hostile, stop), daemon=True
            )
        )
    started = time.monotonic()
    for thread in threads:
        thread.start()
    stop.wait(args.duration)
    stop.set()
    for thread in threads:
        thread.join(180)
    phase.seconds = time.monotonic() - started
    return phase


def sample_rss(pid: int, samples: list, stop: threading.Event) -> None:
    """(seconds since start, RSS MiB) every RSS_EVERY_S."""
    started = time.monotonic()
    while not stop.is_set():
        rss = load.rss_mib(pid)
        if rss is not None:
            samples.append((round(time.monotonic() - started, 1), round(rss, 1)))
        stop.wait(RSS_EVERY_S)


def audit_check(path: Path, normal_ok: int) -> dict:
    """Every line whole JSON, and at least as many 200 records as normal answers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records, broken = [], 0
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            broken += 1
    chat_ok = sum(
        r.get("status") == 200 and r.get("endpoint") == "/v1/chat/completions" for r in records
    )
    return {
        "records": len(records),
        "broken_lines": broken,
        "chat_200_records": chat_ok,
        "normal_ok": normal_ok,
        "forged_clients": sum(r.get("client") == FORGED_IP for r in records),
    }


def report(baseline: Phase, attacked: Phase, hostile: Hostile, rss: list, extra: dict) -> dict:
    """The soak's figures as one dictionary."""
    base, hot = baseline.summary(), attacked.summary()
    ratio_p99 = hot["p99_s"] / base["p99_s"] if base["p99_s"] and hot["p99_s"] else None
    ratio_p50 = hot["p50_s"] / base["p50_s"] if base["p50_s"] and hot["p50_s"] else None
    warm = [mib for t, mib in rss if t >= extra["warm_at_s"]]
    return {
        **extra,
        "baseline": base,
        "hostile": hot,
        "p50_ratio": _r(ratio_p50),
        "p99_ratio": _r(ratio_p99),
        "hostile_sent": dict(hostile.sent),
        "hostile_unexpected": dict(hostile.unexpected),
        "hostile_5xx": hostile.server_errors,
        "slow_header_clients": {
            "opened": hostile.slow_opened,
            "dropped": hostile.slow_dropped,
            "max_held_s": round(hostile.slow_max_held_s, 2),
            "header_timeout_s": HEADER_TIMEOUT_S,
        },
        "rss_mib": {
            "samples": rss,
            "after_warmup_first": warm[0] if warm else None,
            "after_warmup_last": warm[-1] if warm else None,
            "after_warmup_max": max(warm) if warm else None,
        },
    }


def print_report(result: dict) -> None:
    """The figures, readable."""
    print(f"crashes: {result['crashes']} (server exit code {result['exit_code']})")
    for key in ("baseline", "hostile"):
        p = result[key]
        print(
            f"{key:9} {p['requests']} requests in {p['seconds']} s ({p['requests_per_s']}/s), "
            f"p50 {p['p50_s']} s, p99 {p['p99_s']} s, max {p['max_s']} s, errors {p['errors']}"
        )
    print(f"ratio     p50 {result['p50_ratio']}x, p99 {result['p99_ratio']}x (target <= 1.5x)")
    print(f"hostile   sent {sum(result['hostile_sent'].values())}: {result['hostile_sent']}")
    print(f"          5xx {result['hostile_5xx']}, unexpected {result['hostile_unexpected']}")
    print(f"slow hdrs {result['slow_header_clients']}")
    print(f"audit     {result['audit']}")
    rss = result["rss_mib"]
    print(
        f"RSS MiB   after warm-up {rss['after_warmup_first']} -> {rss['after_warmup_last']} "
        f"(max {rss['after_warmup_max']}); samples (s, MiB): {rss['samples']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF file")
    parser.add_argument("--duration", type=float, default=60, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=4, help="normal clients")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per phase")
    parser.add_argument("--max-tokens", type=int, default=16, help="per normal request")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--slow-clients", type=int, default=50, help="trickling connections")
    parser.add_argument("--hostile-workers", type=int, default=2)
    parser.add_argument("--hostile-pause", type=float, default=0.05, help="s between sends")
    parser.add_argument("--big-prompt-every", type=float, default=10.0, help="s (3.5 MB)")
    parser.add_argument("--warmup", type=float, default=10.0, help="s of normal load first")
    parser.add_argument(
        "--sovcli-arg", action="append", metavar="ARG", help="extra `sovcli serve` option"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    if not 0 < args.duration <= 3600:
        parser.error("--duration must be between 0 and 3600 seconds")
    if not args.model.is_file():
        parser.error(f"no GGUF at {args.model} (give --model)")
    args.model_id = args.model.stem  # a name the served model answers to
    with tempfile.TemporaryDirectory(prefix="sovcli-soak-") as tmp:
        workdir = Path(tmp)
        process, port, audit = start_server(args, workdir)
        rss: list = []
        rss_stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(process.pid, rss, rss_stop))
        sampler.start()
        started = time.monotonic()
        try:
            run_phase("warm-up", port, argparse.Namespace(**{**vars(args),
                      "duration": args.warmup}), None)  # fmt: skip
            warm_at = time.monotonic() - started
            baseline = run_phase("baseline", port, args, None)
            hostile = Hostile()
            attacked = run_phase("hostile", port, args, hostile)
            alive = process.poll() is None
            health = raw_status(port, "GET", "/health") if alive else "down"
        finally:
            rss_stop.set()
            sampler.join()
            load.stop(process)
        extra = {
            "crashes": 0 if alive and health == "200" else 1,
            "exit_code": process.returncode,
            "warm_at_s": round(warm_at, 1),
            "clients": args.clients,
            "duration_per_phase_s": args.duration,
            "audit": audit_check(audit, baseline.ok + attacked.ok),
        }
        result = report(baseline, attacked, hostile, rss, extra)
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    ok = result["crashes"] == 0 and result["hostile_5xx"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
