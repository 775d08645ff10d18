"""A registered model as a Ray Serve application, and the job that deploys or deletes it.

``python -m ray_jobs.serve_model deploy`` (the ServeApp in $LLMFORGE_SERVE_APP) starts Serve on
the cluster if it is not running (its HTTP proxy where the ServeApp says), then runs the model's
application and waits until its replicas are up; ``... delete NAME`` deletes the application.
The application outlives the job: the control plane submits one job per change, through the
Jobs API, and so never becomes a Ray driver itself.

Each replica (``ModelServer``) loads the model from its URI on its own node (a cluster shares
no disk: object storage is fetched into node scratch) and runs the continuous-batching
``llm.serve.engine.Engine``: the requests routed to one replica share its forward passes.
Requests arrive from the control plane through Serve's HTTP proxy as ``llm.serve.wire`` JSON,
are prepared exactly as the control plane prepares them for an engine of its own
(``llm.serve.requests``), and stream back as the engine produces them. A client that leaves
(the control plane closes the stream) makes Serve cancel the request, which takes its
sequences out of the batch.

A request may name a LoRA adapter of the deployed model (``wire.AdapterRef``, sent by the control
plane for a registered adapter whose base this is): the replica loads it as the control plane
would in its own process (its base with the adapter applied, unmerged, the adapter's tokenizer
and chat template), after checking that the adapter was trained on these very weights, and runs
it in an engine of its own; the last ``ADAPTERS_PER_REPLICA`` adapters used stay loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from contracts.serving import APP_ENV, KEY_HEADER, ServeApp
from llm.serve import wire
from llm.serve.errors import EngineError, ParamError, QueueFull
from llm.serve.pool import EnginePool, Loaded
from llm.serve.requests import prepare

if TYPE_CHECKING:
    from llm.serve.engine import Engine
    from llm.serve.model import ServedModel

log = logging.getLogger("llmforge.serve")
ERROR_PREFIX = "LLMFORGE_ERROR: "
# adapters a replica keeps loaded (each is its base with the adapter on it, in its own engine)
ADAPTERS_PER_REPLICA = 4


class ModelServer:
    """One replica: the model, its tokenizer and its engine."""

    def __init__(self, app: dict[str, Any]) -> None:
        import torch

        self.app = ServeApp.model_validate(app)
        self.device = "cpu"
        if self.app.spec.device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("the deployment asks for cuda, but this replica has no GPU")
            self.device = "cuda"
        model = self._load(
            self.app.model_id, self.app.model_uri, self.app.tokenizer_uri, self.app.chat_template
        )
        self.served, self.engine = model.served, model.engine
        self.adapters: EnginePool[Loaded] = EnginePool(ADAPTERS_PER_REPLICA)
        log.info("replica of %s ready on %s", self.app.model_id, self.device)

    def _load(
        self, name: str, uri: str, tokenizer_uri: str | None, chat_template: str | None
    ) -> Loaded:
        from llm.serve.engine import Engine
        from llm.serve.model import batch_slots, load_registered

        spec = self.app.spec
        served = load_registered(
            uri,
            tokenizer_uri=tokenizer_uri,
            chat_template=chat_template,
            device=self.device,
            name=name,
        )
        engine = Engine(
            served.model,
            served.decode,
            eos_id=served.eos_id,
            max_batch=batch_slots(served.model, spec.max_batch, spec.cache_mb),
            max_queue=spec.max_queue,
            name=name,
        )
        return Loaded(served, engine)

    def _load_adapter(self, ref: wire.AdapterRef) -> Loaded:
        """The adapter on this replica's base: refused (ParamError) unless it was trained on
        the deployed weights."""
        from llm.serve.fetch import local_model
        from llm.serve.model import checkpoint_folder
        from llm.train.checkpoint import ADAPTER_FILE, check_base

        adapter = checkpoint_folder(local_model(ref.uri))
        if adapter is None or not (adapter / ADAPTER_FILE).is_file():
            raise ParamError("adapter", f"{ref.id} ({ref.uri}) is not a LoRA adapter")
        base = checkpoint_folder(local_model(self.app.model_uri))
        if base is None:
            raise EngineError(f"no checkpoint of the deployed model at {self.app.model_uri}")
        try:
            check_base(adapter, base, self.app.model_uri)
        except ValueError as e:
            raise ParamError("adapter", str(e)) from e
        log.info("loading adapter %s on %s", ref.id, self.app.model_id)
        return self._load(ref.id, ref.uri, ref.tokenizer_uri, ref.chat_template)

    async def _model_for(self, ref: wire.AdapterRef | None) -> tuple[ServedModel, Engine]:
        """The deployed model, or the adapter the request names (loaded off the event loop)."""
        if ref is None:
            return self.served, self.engine
        try:
            found = await asyncio.to_thread(
                self.adapters.get, ref.key, lambda: self._load_adapter(ref)
            )
        except (OSError, ValueError) as e:  # an adapter that cannot be loaded
            if isinstance(e, ParamError):
                raise
            raise ParamError("adapter", f"adapter {ref.id} cannot be served: {e}") from e
        return found.served, found.engine

    def _authorized(self, request: Request) -> bool:
        if self.app.key_sha256 is None:
            return True
        given = hashlib.sha256(request.headers.get(KEY_HEADER, "").encode()).hexdigest()
        return hmac.compare_digest(given, self.app.key_sha256)

    async def __call__(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": {"type": "auth", "message": "wrong key"}}, 401)
        if request.method == "GET":  # this replica's load
            running, waiting = self.engine.load
            stats = self.engine.stats
            return JSONResponse(
                {
                    "running": running,
                    "waiting": waiting,
                    "steps": stats.steps,
                    "tokens": stats.tokens,
                    # tokens each loaded adapter generated, by its id
                    "adapters": {
                        key.split(":", 1)[0]: found.engine.stats.tokens
                        for key, found in self.adapters.items()
                    },
                }
            )
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ParamError("body", "not a JSON object")
            served, engine = await self._model_for(wire.parse_adapter(body))
            prompts, params = prepare(served, wire.parse_request(body))
            handle = engine.submit(prompts, params, loop=asyncio.get_running_loop())
        except (ParamError, QueueFull, EngineError) as e:
            return JSONResponse(wire.error_json(e), wire.error_status(e))
        except ValueError as e:  # a body that is not JSON
            return JSONResponse(wire.error_json(ParamError("body", str(e))), 422)

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for deltas in handle.batches():
                    yield wire.deltas_line(deltas)
                yield wire.usage_line(handle.usage)
            except EngineError as e:
                yield wire.line(wire.error_json(e))
            finally:  # also when Serve cancels the request: its client left
                handle.cancel()

        return StreamingResponse(lines(), media_type=wire.CONTENT_TYPE)

    def check_health(self) -> None:
        if not self.engine._thread.is_alive():
            raise RuntimeError("the engine thread is not running")

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
        adapters = getattr(self, "adapters", None)
        if adapters is not None:
            adapters.close()


def application(app: ServeApp) -> serve.Application:
    spec = app.spec
    actor: dict[str, Any] = {"num_cpus": spec.num_cpus}
    if spec.device == "cuda":
        actor["num_gpus"] = 1
    deployment: Any = serve.deployment(  # an overload mypy cannot pick
        ModelServer,
        name="model",
        ray_actor_options=actor,
        autoscaling_config={
            "min_replicas": spec.min_replicas,
            "initial_replicas": max(spec.min_replicas, 1),
            "max_replicas": spec.max_replicas,
            "target_ongoing_requests": spec.target,
        },
        # what one replica's engine holds (running and queued); past it Serve queues up to
        # max_queue more per replica, then answers 503
        max_ongoing_requests=spec.max_batch + spec.max_queue,
        max_queued_requests=max(spec.max_queue, 1) * spec.max_replicas,
        health_check_period_s=5,
    )
    return deployment.bind(app.model_dump(mode="json"))


def deploy(app: ServeApp) -> None:
    serve.start(http_options={"host": app.http_host, "port": app.http_port})
    serve.run(application(app), name=app.name, route_prefix=app.route_prefix)
    print(f"deployed {app.name} at {app.route_prefix}", flush=True)


def delete(name: str) -> None:
    serve.delete(name)
    print(f"deleted {name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ray_jobs.serve_model")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("deploy", help=f"deploy the ServeApp in ${APP_ENV}")
    gone = sub.add_parser("delete", help="delete a Serve application")
    gone.add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.action == "deploy":
            deploy(ServeApp.model_validate(json.loads(os.environ[APP_ENV])))
        else:
            delete(args.name)
    except Exception as e:
        print(f"{ERROR_PREFIX}{type(e).__name__}: {e}".replace("\n", " "), flush=True)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
