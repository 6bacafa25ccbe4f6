"""`sovcli serve`: 8 concurrent clients get the bytes a single client gets (issue #14 item 5).

Each client asks about a different passage of real text (300 characters, ~100 prompt tokens)
for a 48-token greedy answer, through the official openai client; the server decodes them
together with continuous batching (prompt chunks of late arrivals share steps with others'
decode tokens). With SOVCLI_REPRODUCIBLE=0 the concurrent answers differ from the single
client's (measured 2026-11-30), so the sizes still show the fix.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from reproducible_texts import real_texts
from serve_helpers import start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a real `sovcli serve`

ASKS = ("Summarise this for a manager:", "What does this text require?", "Explain simply:")
CHARS, TOKENS = 300, 48


def _messages(i: int, text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{ASKS[i % 3]}\n\n{text}"}]


def test_eight_concurrent_clients_get_the_single_client_bytes(smollm2_gguf, tmp_path):
    server = start_server(
        smollm2_gguf, tmp_path, "--parallel", "8", "--ctx", "768", "--threads", "1"
    )
    try:
        texts = [text for _, text in real_texts(8, chars=CHARS)]
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=600)
        model = server.model_id

        def ask(i: int, text: str) -> str:
            reply = client.chat.completions.create(
                model=model, messages=_messages(i, text), temperature=0, max_tokens=TOKENS
            )
            return reply.choices[0].message.content or ""

        single = [ask(i, t) for i, t in enumerate(texts)]

        async def streamed(aclient: openai.AsyncOpenAI, i: int, text: str) -> str:
            await asyncio.sleep(0.03 * i)  # arrivals spread over other clients' decoding
            stream = await aclient.chat.completions.create(
                model=model, messages=_messages(i, text), temperature=0, max_tokens=TOKENS,
                stream=True,
            )  # fmt: skip
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        async def together() -> list[str]:
            async with openai.AsyncOpenAI(
                base_url=server.base_url, api_key="x", max_retries=0, timeout=600
            ) as aclient:
                return await asyncio.gather(*(streamed(aclient, i, t) for i, t in enumerate(texts)))

        concurrent = asyncio.run(together())
    finally:
        server.stop()
    assert sum(len(s) for s in single) > 8 * 100, single  # real, long answers
    assert concurrent == single
