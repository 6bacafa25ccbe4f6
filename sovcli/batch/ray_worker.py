"""The engine on a Ray worker node: one actor per node runs whole documents.

`DocumentWorker` is made a Ray actor by `sovcli.batch.ray_backend` (this module imports no
Ray, so it loads anywhere). On its node it finds the model, verified by hash before use:

- in the node's own store (`SOVCLI_HOME` of the `ray start` process): the same name:tag
  holding the same files (path and sha256) as the driver's, each file hashed again;
- else from the driver: a bundle (`sovcli export` tar) imported like `sovcli pull FILE.tar`,
  every file checked against its manifest and the driver's hashes; or, for a .gguf used in
  place, its bytes, checked against the driver's `file_sha256`.

Documents arrive as bytes with their sha256 (checked), are written to a private temporary
folder under their own file name, extracted (isolated, as on one machine) and run through
`BatchRunner.process`; the record goes back to the driver, which alone writes the results.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from sovcli.errors import IntegrityError, SovcliError

TMP_PREFIX = "sovcli-ray-"  # + pid of the actor + "-": its temporary folder


class DocumentWorker:
    """The model and engine of one node (thread-safe: `parallel` documents at a time)."""

    def __init__(
        self,
        job: Any,
        files: list[tuple[str, str]],
        parallel: int,
        threads: int | None,
        ctx: int | None,
    ) -> None:
        self.job = job
        self.files = sorted(tuple(f) for f in files)  # (path, sha256) of the driver's model
        self.parallel = parallel
        self.threads = threads
        self.ctx = ctx
        self.engine: Any = None
        self.backend: Any = None
        self.source = ""  # where the model came from: "store" or "driver"
        sweep_stale(Path(tempfile.gettempdir()))
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        self._lock = threading.Lock()

    # --- the model -----------------------------------------------------------------------

    def prepare(self, bundle: list[Any]) -> dict[str, Any]:
        """Load the model; `bundle` is [] (own store only) or [ObjectRef of the bytes the
        driver sent]. Returns {"ready": bool, "source", "node", "error"}."""
        try:
            path = self._own_model()
            if path is None and bundle:
                import ray

                path = self._from_driver(ray.get(bundle[0]))
            if path is None:
                return self._state(ready=False)
            self._load(path)
            return self._state(ready=True)
        except SovcliError as exc:
            return self._state(ready=False, error=exc.message)

    def _state(self, ready: bool, error: str | None = None) -> dict[str, Any]:
        return {"ready": ready, "source": self.source, "node": node_label(), "error": error}

    def _own_model(self) -> Path | None:
        """The model from this node's store, verified, or None."""
        model = self.job.model
        if not model.get("manifest_sha256"):
            return None
        from sovcli.resolve import find_installed

        try:
            installed = find_installed(str(model["ref"]))
        except SovcliError:
            return None
        if installed is None or files_of(installed) != self.files:
            return None
        _check_files(installed)
        self.source = "store"
        return Path(installed.gguf_path)

    def _from_driver(self, data: bytes) -> Path:
        """The model from the bytes the driver sent, verified by hash before use."""
        model = self.job.model
        received = self._tmp / "model"
        received.write_bytes(data)
        try:
            if model.get("manifest_sha256"):
                from sovcli.sources.bundle import import_bundle

                installed = import_bundle(received, action="batch").model
                if files_of(installed) != self.files:  # its store has another model so named
                    raise IntegrityError(
                        f"this node's store holds another {installed.ref}; not replacing it"
                    )
                self.source = "driver bundle"
                return Path(installed.gguf_path)
            digest = hashlib.sha256(data).hexdigest()
            if digest != model.get("file_sha256"):
                raise IntegrityError("the model from the driver does not hash to its sha256")
            gguf = self._tmp / "model.gguf"
            received.rename(gguf)
            self.source = "driver file"
            return gguf
        finally:
            received.unlink(missing_ok=True)

    def _load(self, path: Path) -> None:
        from sovcli.batch.backends import LocalBackend
        from sovcli.engine.core import Engine
        from sovcli.engine.types import EngineConfig

        spec = {"draft_max": self.job.draft_max} if self.job.draft_max is not None else {}
        config = EngineConfig(
            model_path=str(path), n_parallel=self.parallel, n_ctx=self.ctx,
            n_threads=self.threads, reproducible=self.job.reproducible,
            speculative=self.job.speculative, **spec,
        )  # fmt: skip
        self.engine = Engine(config)
        # Records say the mode this node's engine runs in (auto is off in reproducible mode).
        self.job = replace(self.job, speculative=self.engine.speculative)
        self.backend = LocalBackend(self.engine)

    # --- documents -----------------------------------------------------------------------

    def budget_problem(self) -> str | None:
        """Why the prompt and --max-tokens leave no room for text here, or None."""
        try:
            self._runner().check_budget()
        except SovcliError as exc:
            return exc.message
        return None

    def _runner(self) -> Any:
        from sovcli.batch.runner import BatchRunner

        return BatchRunner(self.job, [self.backend], journal=None)  # type: ignore[arg-type]

    def process(self, rel: str, name: bytes, data: bytes, sha256: str) -> dict[str, Any]:
        """The record of one document (its bytes checked against the driver's sha256)."""
        from sovcli.batch.runner import Document

        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(f"{rel}: the bytes received do not hash to the document's sha256")
        folder = Path(tempfile.mkdtemp(dir=self._tmp))
        try:
            path = folder / os.fsdecode(name)
            path.write_bytes(data)
            doc = Document(path, rel, len(data), sha256, None, ("", "", "", "", ""))
            record = self._runner().process(doc, self.backend)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return record

    def close(self) -> None:
        """Free the engine and the temporary files."""
        with self._lock:
            if self.engine is not None:
                self.engine.close()
                self.engine = None
            shutil.rmtree(self._tmp, ignore_errors=True)


def sweep_stale(root: Path) -> None:
    """Remove the temporary folders of actors that are gone (killed with their node), named
    `sovcli-ray-<pid>-...` by the process that made them."""
    for folder in root.glob(f"{TMP_PREFIX}*-*"):
        pid = folder.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def files_of(installed: Any) -> list[tuple[str, str]]:
    """(path, sha256) of every file of a store entry, sorted: what identifies the model."""
    files = (installed.manifest or {}).get("files") or []
    return sorted((str(f.get("path")), str(f.get("sha256"))) for f in files)


def _check_files(installed: Any) -> None:
    """IntegrityError unless every file of `installed` hashes to its manifest."""
    from sovcli.store.verify import verify

    report = verify(installed)
    if not report["ok"]:
        raise IntegrityError(f"{installed.ref} in this node's store fails verification")


def node_label() -> str:
    """This node as records show it: its address and the start of its Ray node id."""
    try:
        import ray

        context = ray.get_runtime_context()
        node = context.get_node_id()[:8]
        address = ray.util.get_node_ip_address()
        return f"ray:{address}/{node}"
    except Exception:  # outside Ray (tests of the worker alone)
        return "ray:local"
