"""`sovcli batch --ray ADDRESS`: the same job across the nodes of a Ray cluster.

Ray is an optional extra (`pip install 'sovcli[ray]'`). The driver (this process) connects
with token authentication only (`RAY_AUTH_MODE=token`, the token in `RAY_AUTH_TOKEN` or
Ray's token file), starts one `DocumentWorker` actor per alive node (pinned to it, with
`--parallel` documents at a time), gets the model to each node verified by hash
(`sovcli.batch.ray_worker`), and hands the documents out, smallest first, as the actors
have room. Each document goes to one actor at a time; its record comes back to the driver,
which alone writes the fsynced results file (and the audit record) exactly as on one
machine. An actor whose node dies fails its calls: those documents go back to the queue
and run on another node; a document is recorded once, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sovcli.batch.extract import MAX_FILE_BYTES
from sovcli.batch.ray_worker import DocumentWorker
from sovcli.batch.remote import is_loopback
from sovcli.batch.runner import BatchRunner, Document, Summary
from sovcli.errors import NetworkError, SovcliError, UsageError
from sovcli.governance.policy import enforce_network
from sovcli.progress import NULL_PROGRESS, Progress

WAIT_S = 0.5  # how often the driver looks at the stop flag while documents run
ACTOR_START_S = 600.0  # an actor must load its model within this
CLOSE_S = 10.0  # how long the actors get to free their engine and temporary files


def import_ray() -> Any:
    """The `ray` module, or a UsageError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise UsageError(
            "--ray needs Ray, which is not installed",
            hint="pip install 'sovcli[ray]' (on the driver and on every node).",
        ) from exc
    return ray


def require_token_auth() -> None:
    """Refuse to join a cluster without Ray's token authentication."""
    from sovcli.settings import get

    if (get("RAY_AUTH_MODE") or "").lower() != "token":
        raise UsageError(
            "--ray needs Ray's token authentication (RAY_AUTH_MODE=token)",
            hint="Start every node and this command with RAY_AUTH_MODE=token and the same "
            "token (RAY_AUTH_TOKEN or ~/.ray/auth_token); see docs/batch.md.",
        )


@dataclass
class Node:
    """An actor pinned to a node, and what it is doing."""

    actor: Any
    label: str = ""
    alive: bool = True
    error: str | None = None  # why it was left out
    running: set[Any] = field(default_factory=set)  # ObjectRefs of its documents in flight


class RayCluster:
    """The connection to the cluster and the pool of actors (one per node)."""

    def __init__(self, ray: Any, nodes: list[Node]) -> None:
        self.ray = ray
        self.nodes = nodes

    @classmethod
    def connect(
        cls,
        address: str,
        job: Any,
        installed: Any,
        *,
        threads: int | None = None,
        ctx: int | None = None,
        progress: Progress = NULL_PROGRESS,
        notify: Any = None,
    ) -> RayCluster:
        """Join the cluster at `address` ("auto": the one on this machine), start the actors
        and load the model on each node (NetworkError when none can)."""
        ray = import_ray()
        require_token_auth()
        head_is_here = address == "auto" or is_loopback(f"http://{address}")
        enforce_network(f"ray://{address}", "batch", loopback=head_is_here)
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise NetworkError(
                f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}",
                hint="Check the address (head:6379), that the head runs, and the token.",
            ) from exc
        try:
            files = model_files(installed, job.model)
            cluster = cls(ray, cls._start_actors(ray, job, files, threads, ctx))
            cluster._load_model(job, installed, progress, notify)
        except BaseException:
            ray.shutdown()
            raise
        return cluster

    @staticmethod
    def _start_actors(
        ray: Any, job: Any, files: list[tuple[str, str]], threads: int | None, ctx: int | None
    ) -> list[Node]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(DocumentWorker)
        here = ray.util.get_node_ip_address()
        nodes = []
        for info in ray.nodes():
            if not info.get("Alive"):
                continue
            address = str(info.get("NodeManagerAddress"))  # network = "deny": this machine only
            enforce_network(f"ray://{address}", "batch", loopback=address == here)
            strategy = NodeAffinitySchedulingStrategy(info["NodeID"], soft=False)
            actor = remote.options(
                scheduling_strategy=strategy, num_cpus=0, max_concurrency=job.parallel + 2,
                max_restarts=0,
            ).remote(job, files, job.parallel, threads, ctx)  # fmt: skip
            nodes.append(Node(actor, label=f"ray:{info.get('NodeManagerAddress')}"))
        if not nodes:
            raise NetworkError("the Ray cluster has no alive node")
        return nodes

    def _load_model(self, job: Any, installed: Any, progress: Progress, notify: Any) -> None:
        """Every node loads the model from its store; the ones without it get it from here."""
        missing = [n for n in self._prepare(self.nodes, []) if n.error is None and not n.alive]
        if missing:
            self._prepare(missing, [self.ray.put(model_bytes(installed, job.model))])
            sent = [n.label for n in missing if n.alive]
            if sent and notify is not None:
                notify(f"model sent to {', '.join(sent)} (verified there by hash)")
        for node in self.nodes:
            if not node.alive and notify is not None:
                notify(f"warning: Ray node {node.label} left out: {node.error}")
        if not any(n.alive for n in self.nodes):
            raise NetworkError("no Ray node could load the model")

    def _prepare(self, nodes: list[Node], bundle: list[Any]) -> list[Node]:
        """Ask `nodes` to load the model (from `bundle` if given); marks who is ready."""
        refs = [n.actor.prepare.remote(bundle) for n in nodes]
        for node, ref in zip(nodes, refs, strict=True):
            try:
                state = self.ray.get(ref, timeout=ACTOR_START_S)
            except Exception as exc:  # the actor could not start, or died: leave it out
                state = {"ready": False, "error": f"the actor failed ({type(exc).__name__})"}
            node.label = state.get("node") or node.label
            node.alive = bool(state.get("ready"))
            node.error = state.get("error")
            if not node.alive and bundle and node.error is None:
                node.error = "cannot load the model"
        return nodes

    def budget_problem(self) -> str | None:
        """Asked of one node: why the prompt leaves no room for text, or None."""
        node = next(n for n in self.nodes if n.alive)
        return self.ray.get(node.actor.budget_problem.remote())

    def close(self) -> None:
        """Free every actor's engine and files, then leave the cluster."""
        closing = [n.actor.close.remote() for n in self.nodes if n.alive]
        with contextlib.suppress(Exception):  # a node gone meanwhile: nothing to free there
            self.ray.wait(closing, num_returns=len(closing), timeout=CLOSE_S)
        for node in self.nodes:
            with contextlib.suppress(Exception):  # already gone with its node
                self.ray.kill(node.actor, no_restart=True)
        self.ray.shutdown()


def model_files(installed: Any, model: dict[str, Any]) -> list[tuple[str, str]]:
    """The identity every node checks its copy against: (path, sha256) of each file."""
    if not model.get("manifest_sha256"):
        return [(Path(installed.gguf_path).name, str(model.get("file_sha256")))]
    from sovcli.batch.ray_worker import files_of

    return files_of(installed)


def model_bytes(installed: Any, model: dict[str, Any]) -> bytes:
    """What the driver sends to nodes without the model: a bundle of its store entry, or
    the .gguf itself when it is used in place (the worker checks either by hash)."""
    import tempfile

    if not model.get("manifest_sha256"):
        return Path(installed.gguf_path).read_bytes()
    from sovcli.sources.bundle import export_bundle

    with tempfile.TemporaryDirectory(prefix="sovcli-ray-") as tmp:
        out = Path(tmp) / "model.tar"
        export_bundle(installed, out)
        return out.read_bytes()


class RayRunner(BatchRunner):
    """The batch run with whole documents sent to the nodes' actors; records written here."""

    def __init__(self, job: Any, cluster: RayCluster, journal: Any, on_record: Any = None):
        super().__init__(job, [_NoLocalBackend()], journal, on_record=on_record)
        self.cluster = cluster
        self.ray = cluster.ray
        self._recorded: set[str] = set()

    def run(self, documents: list[Document]) -> Summary:
        """Process every document whose state is todo/redo across the cluster."""
        problem = self.cluster.budget_problem()
        if problem:
            hint = "Lower --max-tokens, shorten the prompt, or raise --ctx."
            raise UsageError(problem, hint=hint)
        summary = self.summary
        started = time.monotonic()
        todo = self.begin(documents)
        queue = deque(todo)
        try:
            self._drive(queue)
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            summary.seconds = time.monotonic() - started
            summary.not_processed = max(0, self._pending)
        if self._abort is not None:
            raise self._stopped_by(self._abort, len(todo))
        return summary

    def _drive(self, queue: deque[Document]) -> None:
        running: dict[Any, tuple[Document, Node]] = {}
        while (queue or running) and not self._stop.is_set():
            self._hand_out(queue, running)
            if not running:
                if queue and not any(n.alive for n in self.cluster.nodes):
                    self._abort = NetworkError(
                        "every Ray node is gone",
                        hint="Nothing was lost: re-run the same command to process the rest.",
                    )
                    return
                continue
            done, _ = self.ray.wait(list(running), num_returns=1, timeout=WAIT_S)
            for ref in done:
                doc, node = running.pop(ref)
                node.running.discard(ref)
                self._collect(ref, doc, node, queue)

    def _hand_out(self, queue: deque[Document], running: dict[Any, tuple[Document, Node]]) -> None:
        """Give each alive node documents up to --parallel in flight."""
        for node in self.cluster.nodes:
            while node.alive and queue and len(node.running) < max(1, self.job.parallel):
                doc = queue.popleft()
                payload = self._payload(doc)
                if isinstance(payload, dict):  # unreadable here: recorded at once
                    self._write(doc, payload)
                    continue
                ref = node.actor.process.remote(*payload)
                node.running.add(ref)
                running[ref] = (doc, node)

    def _payload(self, doc: Document) -> tuple[str, bytes, bytes, str] | dict[str, Any]:
        """What a node needs to process `doc`, or the error record of a file not sent."""
        if doc.read_error:
            return self._error_record(doc, "input", doc.read_error, 0.0, "driver")
        try:
            if doc.path.stat().st_size > MAX_FILE_BYTES:
                limit = MAX_FILE_BYTES >> 20
                return self._error_record(doc, "input", f"larger than {limit} MB", 0.0, "driver")
            data = doc.path.read_bytes()
        except OSError as exc:
            message = f"cannot read file: {exc.strerror or exc}"
            return self._error_record(doc, "input", message, 0.0, "driver")
        return doc.rel, os.fsencode(doc.path.name), data, str(doc.sha256)

    def _collect(self, ref: Any, doc: Document, node: Node, queue: deque[Document]) -> None:
        """The outcome of one document: its record, or back to the queue if its node died."""
        ray = self.ray
        try:
            record = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
                ray.exceptions.OwnerDiedError) as exc:  # fmt: skip
            node.alive = False  # its other documents fail the same way and come back too
            doc.attempts += 1
            queue.appendleft(doc)
            self.summary.requeued += 1
            del exc
            return
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, SovcliError) else None
            message = cause.message if cause else f"{type(exc.cause).__name__}: {exc.cause}"
            record = self._error_record(doc, "internal", message, 0.0, node.label)
        if doc.rel in self._recorded:  # never twice, whatever a node did
            return
        self._recorded.add(doc.rel)
        record["replay"] = self.job.replay_fields  # the driver's folder, not the node's
        record["backend"] = node.label
        self._write(doc, record)


class _NoLocalBackend:
    """The driver runs nothing itself (the nodes' actors do)."""

    label = "driver"

    def count_tokens(self, text: str) -> int:  # pragma: no cover - never called
        raise AssertionError("the driver does not tokenize")

    def text_budget(self, render: Any, max_tokens: int) -> int:  # pragma: no cover
        raise AssertionError("the driver does not tokenize")

    def complete_many(self, jobs: Any, settings: Any) -> list[Any]:  # pragma: no cover
        raise AssertionError("the driver does not generate")
