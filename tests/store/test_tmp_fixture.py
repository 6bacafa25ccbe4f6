import time
def test_fixture(installed_smollm2):
    from sovcli.store import ensure_model, find_installed
    t=time.time()
    m = find_installed("smollm2-135m:Q4_1"); assert m is not None
    m2 = ensure_model("smollm2-135m"); assert m2.gguf_path == m.gguf_path
    print(m.manifest, time.time()-t)
