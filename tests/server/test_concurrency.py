"""8 concurrent streaming clients on a fresh server each get their own greedy answer (on the
fake engine, and through the real engine's continuous batching: `slow`)."""

from __future__ import annotations

import asyncio

import openai
import pytest
from serve_helpers import API_KEY

PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Count from one to five.",
    "What is 2 plus 2?",
    "Say hello in Spanish.",
    "What animal says moo?",
    "Name a planet in our solar system.",
    "What is the opposite of hot?",
]


def _chat(client, model_id, prompt):
    return client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=24,
    )


@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_eight_concurrent_streams_each_get_their_own_answer(server):
    model_id = server.model_id
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120)
    single = [_chat(client, model_id, p).choices[0].message.content for p in PROMPTS]

    async def one(aclient, prompt):
        stream = await aclient.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=24,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def main():
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key=API_KEY, max_retries=0
        ) as aclient:
            return await asyncio.gather(*(one(aclient, p) for p in PROMPTS))

    concurrent = asyncio.run(main())
    assert concurrent == single
    assert len(set(single)) == len(PROMPTS)
