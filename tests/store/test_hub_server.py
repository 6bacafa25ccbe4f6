"""The local hub server answers the real huggingface_hub client the way the hub does."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_client_apis_against_the_server(hub, tiny_ggufs, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url

    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "sub" / "weights.safetensors").write_bytes(b"\0" * 4096)
    commit = hub.add_folder("org/ckpt", folder)
    api = HfApi(endpoint=hub.url)
    info = api.model_info("org/ckpt", files_metadata=True)
    assert info.sha == commit
    sizes = {s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings}
    assert sizes["config.json"] == (23, None)
    assert sizes["sub/weights.safetensors"][1] == hub.sha256("org/ckpt", "sub/weights.safetensors")
    tree = {e.path: e for e in api.list_repo_tree("org/ckpt", recursive=True)}
    assert tree["sub/weights.safetensors"].lfs.sha256 == hub.sha256(
        "org/ckpt", "sub/weights.safetensors"
    )
    meta = get_hf_file_metadata(hf_hub_url("org/ckpt", "sub/weights.safetensors", endpoint=hub.url))
    assert (meta.commit_hash, meta.size) == (commit, 4096)
    path = hf_hub_download("org/ckpt", "config.json", local_dir=tmp_path / "dl", endpoint=hub.url)
    assert Path(path).read_text() == '{"model_type": "llama"}'


def test_errors_carry_hub_error_codes(hub, tiny_ggufs) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub.add_repo("org/m", {"m-Q4_K_M.gguf": tiny_ggufs["Q4_K_M"]})
    api = HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/absent")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/m", revision="nope")
    hub.gated["org/m"] = "tok"
    with pytest.raises(GatedRepoError):
        api.model_info("org/m")
    assert HfApi(endpoint=hub.url, token="tok").model_info("org/m").sha
