"""What clients see from `sovcli serve` with the real model (`slow`): litellm recognises a
context overflow, `n=2` gives two choices, a `logit_bias` that bans the greedy first token
changes it."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from serve_helpers import API_KEY, REAL, launch, server_settings

from sovcli.server.settings import ApiKey, Limits

SETTINGS = server_settings(
    parallel=4,
    ctx=1024,
    limits=Limits(max_tokens=64),
    api_keys=(ApiKey("team-a", API_KEY),),
    audit_log=Path("audit.jsonl"),
)


@pytest.fixture(scope="module", params=[pytest.param(REAL, marks=pytest.mark.slow)])
def real_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return launch(request, SETTINGS, tmp_path_factory.mktemp("clients"))


@pytest.fixture(scope="module")
def client(real_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=real_server.base_url, api_key=API_KEY, max_retries=0, timeout=120)


def test_litellm_raises_context_window_exceeded(real_server, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of its price list
    litellm = pytest.importorskip(
        "litellm",
        reason="litellm is not installed with what it imports: "
        "pip install --no-deps -r tests/requirements-clients.txt",
    )
    kwargs = {
        "model": f"openai/{real_server.alias}",
        "api_base": real_server.base_url,
        "api_key": API_KEY,
        "num_retries": 0,
        "max_tokens": 8,
    }
    with pytest.raises(litellm.ContextWindowExceededError) as err:
        litellm.completion(messages=[{"role": "user", "content": "hello world " * 3000}], **kwargs)
    assert "maximum context length is 1024 tokens" in str(err.value)
    # ... and a prompt that fits is answered through litellm too.
    ok = litellm.completion(messages=[{"role": "user", "content": "Say hi."}], **kwargs)
    assert ok.choices[0].message.content


def test_n_two_returns_two_choices(real_server, client):
    response = client.chat.completions.create(
        model=real_server.model_id,
        messages=[{"role": "user", "content": "Write a short sentence about the sea."}],
        n=2,
        max_tokens=24,
        temperature=1.0,
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert all(c.message.content.strip() for c in response.choices)
    assert response.usage.completion_tokens > 2


def test_logit_bias_banning_the_greedy_first_token_changes_it(real_server, client, smollm2_gguf):
    from llama_cpp import Llama

    messages = [{"role": "user", "content": "Name one colour."}]

    def first_token(**extra):
        response = client.chat.completions.create(
            model=real_server.model_id,
            messages=messages,
            max_tokens=1,
            temperature=0,
            logprobs=True,
            **extra,
        )
        return response.choices[0].logprobs.content[0]

    greedy = first_token()
    vocab = Llama(model_path=str(smollm2_gguf), vocab_only=True, verbose=False)
    ids = vocab.tokenize(bytes(greedy.bytes), add_bos=False, special=True)
    assert len(ids) == 1, (greedy.token, ids)
    banned = first_token(logit_bias={str(ids[0]): -100})
    assert banned.token != greedy.token
    # A bias the other way keeps it (and a strong one makes any token the first).
    assert first_token(logit_bias={str(ids[0]): 10}).token == greedy.token
