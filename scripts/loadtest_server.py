#!/usr/bin/env python3
"""Load test for an OpenAI-compatible server on this machine (loopback only).

N concurrent clients send streaming chat completions in a loop, bounded by time and by
request count. Reports requests/s, aggregate generated tokens/s, p50/p99 latency and time
to first token, errors, and the server process's RSS growth (with --server-pid, or when
this script starts `sovcli serve` itself with --start MODEL).

A minimal asyncio HTTP/1.1 client is used (not the openai SDK) so that on a small machine
the load generator takes as little CPU as possible from the server it measures.

Examples:
  python scripts/loadtest_server.py --start ~/.cache/sovcli-test/SmolLM2-135M-Instruct.Q4_1.gguf \
      --clients 8 --duration 60
  python scripts/loadtest_server.py --url http://127.0.0.1:8080 --model smollm2-135m \
      --server-pid 1234 --duration 600 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a CPU cache is.",
    "Give three tips for learning a language.",
    "Describe a sunrise in the mountains.",
    "What makes bread rise?",
    "Tell a short story about a lost key.",
    "Explain how a bicycle stays upright.",
    "List some uses of copper.",
    "Why is the sky blue?",
    "Describe the taste of an apple.",
    "How do bees make honey?",
    "Write a haiku about winter.",
    "Explain what a database index is.",
    "What is photosynthesis?",
    "Describe a busy train station.",
    "Give advice for a first job interview.",
]
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Sample:
    """One finished request."""

    ok: bool
    latency_s: float
    ttft_s: float | None
    completion_tokens: int
    error: str | None = None


@dataclass
class Report:
    """What a run measured."""

    label: str
    clients: int
    duration_s: float
    requests: int
    errors: int
    requests_per_s: float
    generated_tokens: int
    generated_tokens_per_s: float
    latency_p50_s: float | None
    latency_p99_s: float | None
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    rss_start_mib: float | None
    rss_end_mib: float | None
    rss_growth_mib: float | None
    # Growth after a warm-up (a quarter of the run, at most 60 s): bounded caches such as the
    # prompt cache fill during the warm-up; a leak keeps growing after it.
    rss_warm_mib: float | None = None
    rss_growth_after_warmup_mib: float | None = None
    error_kinds: dict[str, int] = field(default_factory=dict)


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of a process (Linux /proc), in MiB."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest-rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class StaleConnection(ConnectionError):
    """The server closed the connection before answering (e.g. an idle keep-alive)."""


class Connection:
    """One keep-alive HTTP/1.1 connection that streams a chat completion."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port, self.headers = host, port, headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def stream_chat(self, path: str, body: dict) -> tuple[int, float | None, int, str]:
        """POST a streaming request; returns (status, ttft, completion tokens, error text).

        A kept-alive connection the server closed in between is reopened once (as HTTP
        clients do); a connection that fails before any response on a fresh socket is an error.
        """
        reused = self.writer is not None
        try:
            return await self._stream_chat(path, body)
        except StaleConnection:
            if not reused:
                raise
            await self.close()
            return await self._stream_chat(path, body)

    async def _stream_chat(self, path: str, body: dict) -> tuple[int, float | None, int, str]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode()
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: text/event-stream",
            f"Content-Length: {len(payload)}",
        ]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        started = time.perf_counter()
        try:
            self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            await self.writer.drain()
        except OSError as exc:
            raise StaleConnection(str(exc)) from exc
        status_line = await self.reader.readline()
        if not status_line:
            raise StaleConnection("connection closed before the response")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body_iter = self._body(headers)
        ttft, chunks, usage_tokens, buffer, error = None, 0, None, b"", ""
        async for data in body_iter:
            if status != 200:
                error += data.decode("utf-8", "replace")
                continue
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    text = line[5:].strip()
                    if text == b"[DONE]":
                        continue
                    obj = json.loads(text)
                    if "error" in obj:
                        error = json.dumps(obj["error"])[:200]
                    if obj.get("usage"):
                        usage_tokens = obj["usage"].get("completion_tokens")
                    for choice in obj.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content") or choice.get("text"):
                            chunks += 1
                            if ttft is None:
                                ttft = time.perf_counter() - started
        if headers.get("connection", "").lower() == "close":
            await self.close()
        tokens = usage_tokens if usage_tokens is not None else chunks
        return status, ttft, tokens, error

    async def _body(self, headers: dict[str, str]):
        assert self.reader is not None
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    raise ConnectionError("connection closed mid-body")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readline()
                yield data
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining > 0:
                data = await self.reader.read(min(65536, remaining))
                if not data:
                    raise ConnectionError("connection closed mid-body")
                remaining -= len(data)
                yield data
        else:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    await self.close()
                    return
                yield data


async def run_load(
    url: str,
    model: str,
    *,
    clients: int = 8,
    duration_s: float = 30,
    max_requests: int = 10_000,
    max_tokens: int = 96,
    temperature: float = 0.0,
    api_key: str | None = None,
    server_pid: int | None = None,
    label: str = "server",
    include_usage: bool = True,
) -> Report:
    """Drive `clients` concurrent streaming clients for `duration_s` (or `max_requests`)."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise SystemExit("error: this load test only targets loopback addresses (127.0.0.1)")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    samples: list[Sample] = []
    issued = 0
    deadline = time.perf_counter() + duration_s
    rss_start = rss_mib(server_pid)

    async def client(index: int) -> None:
        nonlocal issued
        conn = Connection(parts.hostname or "127.0.0.1", parts.port or 80, headers)
        turn = 0
        try:
            while time.perf_counter() < deadline and issued < max_requests:
                issued += 1
                prompt = PROMPTS[(index * 7 + turn) % len(PROMPTS)]
                turn += 1
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "stream": True,
                }
                if include_usage:
                    body["stream_options"] = {"include_usage": True}
                started = time.perf_counter()
                try:
                    status, ttft, tokens, error = await conn.stream_chat(
                        "/v1/chat/completions", body
                    )
                    ok = status == 200 and not error
                    samples.append(
                        Sample(
                            ok,
                            time.perf_counter() - started,
                            ttft,
                            tokens,
                            None if ok else f"{status} {error[:120]}",
                        )
                    )
                except (OSError, ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
                    await conn.close()
                    samples.append(
                        Sample(
                            False,
                            time.perf_counter() - started,
                            None,
                            0,
                            f"{type(exc).__name__}: {exc}"[:120],
                        )
                    )
        finally:
            await conn.close()

    rss_warm: float | None = None

    async def sample_rss_after_warmup() -> None:
        nonlocal rss_warm
        await asyncio.sleep(min(60.0, duration_s / 4))
        rss_warm = rss_mib(server_pid)

    started = time.perf_counter()
    warmup = asyncio.create_task(sample_rss_after_warmup())
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    warmup.cancel()
    rss_end = rss_mib(server_pid)
    ok = [s for s in samples if s.ok]
    errors = [s for s in samples if not s.ok]
    kinds: dict[str, int] = {}
    for sample in errors:
        kinds[sample.error or "?"] = kinds.get(sample.error or "?", 0) + 1
    generated = sum(s.completion_tokens for s in ok)
    latencies = [s.latency_s for s in ok]
    ttfts = [s.ttft_s for s in ok if s.ttft_s is not None]
    return Report(
        label=label,
        clients=clients,
        duration_s=round(elapsed, 2),
        requests=len(samples),
        errors=len(errors),
        requests_per_s=round(len(ok) / elapsed, 3),
        generated_tokens=generated,
        generated_tokens_per_s=round(generated / elapsed, 1),
        latency_p50_s=_round(percentile(latencies, 50)),
        latency_p99_s=_round(percentile(latencies, 99)),
        ttft_p50_s=_round(percentile(ttfts, 50)),
        ttft_p99_s=_round(percentile(ttfts, 99)),
        rss_start_mib=_round(rss_start, 1),
        rss_end_mib=_round(rss_end, 1),
        rss_growth_mib=_round(rss_end - rss_start, 1) if rss_start and rss_end else None,
        rss_warm_mib=_round(rss_warm, 1),
        rss_growth_after_warmup_mib=_round(rss_end - rss_warm, 1) if rss_warm and rss_end else None,
        error_kinds=kinds,
    )


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def wait_ready(url: str, path: str, timeout: float = 120, process=None) -> None:
    """Poll `url+path` until it answers 200."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"error: the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + path, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: {url}{path} not ready after {timeout:.0f}s")


def start_sovcli(
    model: str,
    port: int,
    parallel: int,
    threads: int | None,
    ctx: int,
    log_path: Path,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen:
    """Start `sovcli serve` (quiet, plus `extra_args`) and wait until /health says ready."""
    cmd = [
        sys.executable,
        "-m",
        "sovcli",
        "serve",
        model,
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "--ctx",
        str(ctx),
        "--quiet",
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    cmd += list(extra_args)
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    wait_ready(f"http://127.0.0.1:{port}", "/health", process=process)
    return process


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def print_report(report: Report) -> None:
    """Human-readable report on stdout."""
    print(f"{report.label}: {report.clients} clients, {report.duration_s:.1f} s")
    print(
        f"  requests        {report.requests} ({report.errors} errors), "
        f"{report.requests_per_s:.2f} req/s"
    )
    print(
        f"  generated       {report.generated_tokens} tokens, "
        f"{report.generated_tokens_per_s:.1f} tok/s aggregate"
    )
    print(f"  latency         p50 {report.latency_p50_s} s, p99 {report.latency_p99_s} s")
    print(f"  first token     p50 {report.ttft_p50_s} s, p99 {report.ttft_p99_s} s")
    if report.rss_start_mib is not None:
        print(
            f"  server RSS      {report.rss_start_mib} -> {report.rss_end_mib} MiB "
            f"(growth {report.rss_growth_mib} MiB)"
        )
    if report.rss_warm_mib is not None:
        print(
            f"  after warm-up   {report.rss_warm_mib} -> {report.rss_end_mib} MiB "
            f"(growth {report.rss_growth_after_warmup_mib} MiB)"
        )
    for kind, count in report.error_kinds.items():
        print(f"  error x{count}: {kind}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="server base URL (loopback), e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", help="the request's model field")
    parser.add_argument("--start", metavar="MODEL", help="start `sovcli serve MODEL` first")
    parser.add_argument("--port", type=int, default=8099, help="port for --start")
    parser.add_argument("--parallel", type=int, default=8, help="--parallel for --start")
    parser.add_argument("--threads", type=int, default=None, help="--threads for --start")
    parser.add_argument("--ctx", type=int, default=1024, help="--ctx for --start")
    parser.add_argument("--server-pid", type=int, help="server process to watch (RSS)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30, help="seconds (bound)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="request bound")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    parser.add_argument("--warmup", type=int, default=1, help="warm-up requests per client")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.duration > 3600 or args.duration <= 0:
        parser.error("--duration must be between 0 and 3600 seconds")
    process = None
    url, model, pid = args.url, args.model, args.server_pid
    if args.start:
        log_path = Path(f"/tmp/sovcli-loadtest-{os.getpid()}.log")
        process = start_sovcli(
            args.start, args.port, args.parallel, args.threads, args.ctx, log_path
        )
        url, model, pid = f"http://127.0.0.1:{args.port}", args.start, process.pid
    if not url or not model:
        parser.error("give --url and --model, or --start MODEL")
    try:
        if args.warmup:
            asyncio.run(
                run_load(
                    url,
                    model,
                    clients=args.clients,
                    duration_s=120,
                    max_requests=args.warmup * args.clients,
                    max_tokens=16,
                    api_key=args.api_key,
                    label="warm-up",
                )
            )
        report = asyncio.run(
            run_load(
                url,
                model,
                clients=args.clients,
                duration_s=args.duration,
                max_requests=args.max_requests,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                api_key=args.api_key,
                server_pid=pid,
                label=url,
            )
        )
    finally:
        if process is not None:
            stop(process)
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    else:
        print_report(report)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
