"""Several models in one server, each with its own engine, chosen by the `model` field."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import openai
from serve_helpers import LISTENING, metric_value, request, server_env


def test_two_models_routed_by_name(smollm2_gguf, tmp_path):
    first = tmp_path / "alpha.gguf"
    second = tmp_path / "beta.gguf"
    shutil.copyfile(smollm2_gguf, first)
    shutil.copyfile(smollm2_gguf, second)
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sovcli",
                "serve",
                str(first),
                str(second),
                "--port",
                "0",
                "--parallel",
                "2",
                "--ctx",
                "512",
                "--threads",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=server_env(tmp_path, None),
        )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            match = LISTENING.search(log_path.read_text())
            url = match.group(1) if match else None
            time.sleep(0.02)
        assert url is not None, log_path.read_text()
        # While the models load, /health says so (and asks to retry).
        health = request(url, "GET", "/health")
        if health.status == 503:
            assert health.json()["status"] == "loading"
            assert "retry-after" in health.headers
        while request(url, "GET", "/health").status != 200:
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(0.1)

        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        assert [m.id for m in client.models.list().data] == [str(first), str(second)]
        for name in ("alpha", "beta", str(second)):
            reply = client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=4,
                temperature=0,
            )
            assert reply.choices[0].message.content
        metrics = request(url, "GET", "/metrics").body.decode()
        assert metric_value(metrics, "sovcli_parallel_slots", model=str(first)) == 2
        assert metric_value(metrics, "sovcli_generated_tokens_total", model=str(first)) > 0
        assert metric_value(metrics, "sovcli_generated_tokens_total", model=str(second)) > 0
        # Without `model`, a server with two models cannot guess.
        missing = request(url, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert missing.status == 400
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
