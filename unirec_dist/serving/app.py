"""The HTTP API over a `Recommender` (FastAPI; the OpenAPI schema is at /openapi.json, docs at /docs).

    POST /recommend  {"user_id": "42"} or {"history": ["1193", "661"]}, "k": 10, "exclude_seen": true,
                     with history optionally "timestamps": [978300760, 978302109] (seconds since
                     1970, oldest first; a model with a time bias needs them), "at": query time
                     (default now)
    POST /explain    the same + "top" (history items per recommended item), "method", "items"
    GET  /health     {"status": "ok"}
    GET  /metadata   model, dims, counts, index (kind, source, recall@10 when approximate), limits,
                     versions: what a client needs, no paths or training config

A body over `max_body_bytes` (default 1 MiB) is answered 413 before it is parsed: by its
Content-Length, or, for a chunked body, as soon as the bytes received pass the limit.

Every client mistake is a 4xx with a JSON body {"detail": "<one line>"} (and "errors" for schema
violations): unknown user -> 404; unknown item ids, empty or over-long history, k out of range,
both or neither of user_id/history, malformed JSON, timestamps that are not numbers, go
backwards, fall before 1970 or more than a day past the server's clock -> 422. A fuzz test against the OpenAPI schema
(tests/integration/test_serve_fuzz.py) checks that no request yields a 5xx.
/recommend is micro-batched (`batching`, default on): requests that arrive together are encoded
and ranked as one batch in an inference thread, off the event loop (serving/batching.py); with
`batching=None` each request runs inline on the event loop, one at a time. /explain runs in
FastAPI's thread pool (it can take tens of milliseconds).
A well-formed /recommend body skips FastAPI's routing and validation (RecommendFastPath, same
answer byte for byte); any other goes through the FastAPI route.
"""
# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at runtime,
# and the request models are local classes (their limits come from the Recommender), which string
# annotations could not resolve.
import json
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

if TYPE_CHECKING:
    from fastapi import FastAPI

    from unirec_dist.serving.config import BatchingConfig
    from unirec_dist.serving.recommender import Recommender

MAX_ID_LEN = 256
MAX_BODY_BYTES = 1 << 20


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, before anything parses it.

    Starlette has no body limit of its own; this reads only the Content-Length header and counts
    the bytes of the body messages as the endpoint pulls them (nothing is buffered here)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = int(limit)
        self.detail = f"request body larger than {self.limit} bytes"

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": self.detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", ()):
            if k == b"content-length" and v.strip().isdigit() and int(v) > self.limit:
                await self._refuse(send)
                return
        from starlette.exceptions import HTTPException

        seen = 0
        started = False

        async def counted_receive() -> Any:
            # an HTTPException: FastAPI's body reader passes it on (it turns any other error into
            # a 400), and the app's exception handling answers it as {"detail": ...}
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self.detail)
            return msg

        async def tracked_send(msg: Any) -> None:
            nonlocal started
            started = started or msg.get("type") == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except HTTPException as e:
            if e.status_code != 413 or started:
                raise
            await self._refuse(send)


class RecommendFastPath:
    """ASGI middleware: POST /recommend answered without FastAPI's routing, dependency solving
    and pydantic validation when the body is a JSON object whose every field already has exactly
    the type and range the request schema asks for (what well-behaved clients send); any other
    request, or any other body (an unknown field, a float k, a missing content type, bad JSON),
    is replayed to the FastAPI route, which validates it and words the error. The answer is the
    route's, byte for byte (tests/integration/test_serve_fast_path.py compares the two), at a
    fraction of its cost per request, which under micro-batching is what bounds throughput.

    `answer(query) -> Ranked` (async, raises RequestError) and `body(query, ranked) -> dict` are the
    route's own, so both paths share them."""

    FIELDS = frozenset(("user_id", "history", "k", "exclude_seen", "timestamps", "at"))

    def __init__(self, app: Any, answer: Any, body: Any, max_k: int, max_history: int,
                 counts: dict[str, int]) -> None:
        self.app = app
        self.answer = answer
        self.body = body
        self.max_k = int(max_k)
        self.max_history = int(max_history)
        self.counts = counts        # "answered" here, "replayed" to the route (app.state.fast_path)
        from unirec_dist.serving.recommender import Query, RequestError

        self.query_type, self.request_error = Query, RequestError

    def _query(self, data: Any) -> Any:
        """The request as a Query when the schema would take it unchanged (ids: strings, or
        integers read as their decimal string), else None."""
        if type(data) is not dict or not self.FIELDS.issuperset(data):
            return None
        user, hist = data.get("user_id"), data.get("history")
        k, seen, ts = data.get("k", 10), data.get("exclude_seen", True), data.get("timestamps")
        if (user is None) == (hist is None) or type(k) is not int or not 1 <= k <= self.max_k \
                or type(seen) is not bool or not (ts is None or (type(ts) is list and len(ts) <= self.max_history)):
            return None
        if user is not None:
            if type(user) is int:
                user = str(user)
            if type(user) is not str or len(user) > MAX_ID_LEN:
                return None
        else:
            if type(hist) is not list or not 1 <= len(hist) <= self.max_history:
                return None
            if not all(type(h) is str and len(h) <= MAX_ID_LEN for h in hist):
                if not all(type(h) is int or type(h) is str for h in hist):
                    return None
                hist = [str(h) for h in hist]
                if not all(len(h) <= MAX_ID_LEN for h in hist):
                    return None
        return self.query_type(user, hist, k, seen, ts, data.get("at"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/recommend" or scope["method"] != "POST" \
                or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        chunks = []
        more = True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":      # the client left: nobody to answer
                return
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        raw = b"".join(chunks)
        query = None
        for k, v in scope["headers"]:
            if k == b"content-type":
                if v.split(b";")[0].strip().lower() == b"application/json":
                    try:
                        query = self._query(json.loads(raw))
                    except (ValueError, RecursionError):    # malformed JSON, bad UTF-8, deep nesting
                        pass
                break
        if query is None:
            self.counts["replayed"] += 1
            return await self._replay(scope, raw, receive, send)
        self.counts["answered"] += 1
        t0 = time.perf_counter()
        try:
            status, content = 200, self.body(query, await self.answer(query))
        except self.request_error as e:
            status, content = e.status, {"detail": str(e)}
        # the bytes and headers of the route's JSONResponse
        out = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()
        headers = [(b"content-length", str(len(out)).encode()), (b"content-type", b"application/json")]
        if status == 200:
            headers.insert(0, (b"server-timing", f"recommend;dur={(time.perf_counter() - t0) * 1000:.3f}".encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    async def _replay(self, scope: Any, raw: bytes, receive: Any, send: Any) -> None:
        """Hand the request to the app with the body already read (then `receive` again)."""
        pending = [{"type": "http.request", "body": raw, "more_body": False}]

        async def replay() -> Any:
            return pending.pop(0) if pending else await receive()

        await self.app(scope, replay, send)


def _coerce_id(v: Any) -> Any:
    """Raw ids are strings; JSON integers are accepted as their decimal string (bools are not)."""
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError("must be a string or an integer id")
    return str(v)


def _message(e: dict[str, Any]) -> str:
    """One line for one pydantic error, naming the field."""
    loc = [p for p in e.get("loc", ()) if p != "body"]
    kind = e.get("type", "")
    msg = str(e.get("msg", "invalid request"))
    if kind == "json_invalid":
        err = (e.get("ctx") or {}).get("error", "")
        return f"malformed JSON body{': ' + str(err) if err else ''} (at character {loc[0] if loc else '?'})"
    if not loc and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "request body must be a JSON object"
    if not loc and kind == "missing":
        return "request body is missing; send a JSON object"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    where = ".".join(str(p) for p in loc)
    return " ".join(f"{where}: {msg}".split()) if where else " ".join(msg.split())


def create_app(rec: "Recommender", title: str = "unirec_dist recommender",
               max_body_bytes: int = MAX_BODY_BYTES, batching: "BatchingConfig | None" = None,
               recommend_batched: Any = None, fast_path: bool = True) -> "FastAPI":
    """The app over `rec`. /recommend answers through `recommend_batched` (an async callable
    Query -> Ranked, e.g. Ray Serve's `@serve.batch` method) when given, else through a
    MicroBatcher built from `batching`, else inline one request at a time (`batching=None`).
    `fast_path`: well-formed /recommend bodies skip FastAPI (RecommendFastPath); False sends every
    request through the FastAPI route (the reference the fast path is tested and benchmarked against)."""
    from fastapi import FastAPI, Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import (
        BaseModel,
        BeforeValidator,
        ConfigDict,
        Field,
        StringConstraints,
        WithJsonSchema,
        model_validator,
    )

    from unirec_dist import __version__
    from unirec_dist.serving.batching import MicroBatcher
    from unirec_dist.serving.recommender import Query as RecQuery
    from unirec_dist.serving.recommender import RequestError

    RawId = Annotated[
        str, BeforeValidator(_coerce_id), StringConstraints(max_length=MAX_ID_LEN),
        WithJsonSchema({"anyOf": [{"type": "string", "maxLength": MAX_ID_LEN}, {"type": "integer"}],
                        "description": "a raw id as in the dataset (integers are read as strings)"}),
    ]
    max_k, max_hist = rec.max_k, rec.max_history
    examples = rec.examples()

    class Query(BaseModel):
        model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": examples})
        user_id: RawId | None = Field(None, description="a known user's raw id (their full known history is used)")
        history: list[RawId] | None = Field(
            None, min_length=1, max_length=max_hist,
            description="raw item ids of a live session, oldest first (used instead of user_id)")
        k: int = Field(10, ge=1, le=max_k, description="number of items to return")
        exclude_seen: bool = Field(True, description="leave out items already in the history")
        # checked by Recommender.resolve_times (one rule for HTTP, Ray Serve and Python callers)
        timestamps: list[Any] | None = Field(
            None, max_length=max_hist, json_schema_extra={"items": {"type": "number"}},
            description="with history: each item's time in seconds since 1970, oldest first (read by models "
                        "with a time bias; required by them)")
        at: Any = Field(None, json_schema_extra={"type": "number"},
                        description="query time in seconds since 1970 (default: now)")

        @model_validator(mode="after")
        def _one_source(self):
            if (self.user_id is None) == (self.history is None):
                raise ValueError("give exactly one of user_id or history")
            return self

    class RecommendRequest(Query):
        pass

    class ExplainRequest(Query):
        top: int = Field(5, ge=1, le=100, description="history items listed per recommended item")
        method: Literal["auto", "occlusion", "similarity", "attention"] = Field(
            "auto", description="auto: attention rollout when the model exposes attention, else occlusion")
        items: list[RawId] | None = Field(
            None, min_length=1, max_length=max_k, description="explain these items instead of the top-k")

    class ItemScore(BaseModel):
        item: str
        score: float
        rank: int
        display: dict[str, str] | None = Field(
            None, description="the item's display fields (title, genres, ...) when the bundle has them")

    class RecommendResponse(BaseModel):
        items: list[ItemScore]
        user_id: str | None
        history_length: int
        k: int
        exclude_seen: bool
        index: str

    class ContributionOut(BaseModel):
        item: str
        position: int = Field(description="0-based position in the history, oldest first")
        weight: float
        display: dict[str, str] | None = Field(
            None, description="the item's display fields (title, genres, ...) when the bundle has them")

    class ItemExplanationOut(BaseModel):
        item: str
        score: float
        rank: int
        contributions: list[ContributionOut]
        display: dict[str, str] | None = Field(
            None, description="the item's display fields (title, genres, ...) when the bundle has them")

    class ExplainResponse(BaseModel):
        method: str = Field(description="occlusion, similarity or attention (see unirec_dist.serving.explain)")
        per_item: bool
        history_length: int
        items: list[ItemExplanationOut]

    class ErrorItem(BaseModel):
        loc: list[Union[str, int]]
        msg: str
        type: str

    class ErrorResponse(BaseModel):
        detail: str
        errors: list[ErrorItem] | None = None

    class Health(BaseModel):
        status: str

    errors = {400: {"model": ErrorResponse, "description": "unreadable body (e.g. not UTF-8)"},
              404: {"model": ErrorResponse, "description": "unknown user id"},
              413: {"model": ErrorResponse, "description": f"body larger than {max_body_bytes} bytes"},
              422: {"model": ErrorResponse, "description": "invalid request"}}

    batcher = None
    if recommend_batched is None and batching is not None:
        batcher = MicroBatcher(rec.recommend_many, batching.max_batch_size, batching.max_wait_ms)
        recommend_batched = batcher.submit

    app = FastAPI(title=title, version=__version__,
                  description="Top-K recommendations and explanations from a unirec_dist bundle.")
    app.state.recommend_batcher = batcher    # its counters (batches, items) tell how requests were grouped

    async def answer(query: RecQuery) -> Any:
        """The Ranked answer to one query (RequestError raised), batched or inline."""
        if recommend_batched is not None:
            ranked = await recommend_batched(query)
        else:
            ranked = rec.recommend_many([query])[0]
        if isinstance(ranked, RequestError):
            raise ranked
        return ranked

    def response_body(query: RecQuery, ranked: Any) -> dict[str, Any]:
        """The RecommendResponse of `query`, as plain JSON data."""
        return {"items": [vars(r) for r in ranked.items],
                "user_id": None if query.user_id is None else str(query.user_id),
                "history_length": ranked.history_length, "k": query.k, "exclude_seen": query.exclude_seen,
                "index": rec.index.kind}

    app.state.fast_path = {"answered": 0, "replayed": 0} if fast_path else None
    if fast_path:   # added before BodyLimit, so BodyLimit wraps it: an oversized body is still 413
        app.add_middleware(RecommendFastPath, answer=answer, body=response_body, max_k=max_k,
                           max_history=max_hist, counts=app.state.fast_path)
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        items = [{"loc": [p if isinstance(p, (str, int)) else str(p) for p in e.get("loc", ())],
                  "msg": _message(e), "type": str(e.get("type", ""))} for e in errs]
        detail = items[0]["msg"] if items else "invalid request"
        return JSONResponse(status_code=422, content={"detail": detail, "errors": items})

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)})

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return rec.metadata()

    # `async def`: the endpoint only awaits the batcher (inference runs in its thread); unbatched,
    # top-K takes about a millisecond, less than the thread-pool hops FastAPI adds around a plain
    # `def` endpoint, so it runs inline on the event loop.
    @app.post("/recommend", response_model=RecommendResponse, responses=errors)
    async def recommend(req: RecommendRequest) -> Response:
        t0 = time.perf_counter()
        query = RecQuery(req.user_id, req.history, req.k, req.exclude_seen, req.timestamps, req.at)
        body = response_body(query, await answer(query))
        # Built here in the RecommendResponse shape and returned as is: FastAPI's re-validation of
        # the return value through the response model cost more than the batched model work per
        # request. Server-Timing: the model + top-K time (and, batched, the wait for the batch),
        # apart from HTTP and JSON, in ms.
        return JSONResponse(body, headers={"Server-Timing": f"recommend;dur={(time.perf_counter() - t0) * 1000:.3f}"})

    @app.post("/explain", response_model=ExplainResponse, responses=errors)
    def explain(req: ExplainRequest, response: Response) -> dict[str, Any]:
        t0 = time.perf_counter()
        ex = rec.explain(user_id=req.user_id, history=req.history, k=req.k, exclude_seen=req.exclude_seen,
                         items=req.items, top=req.top, method=req.method, timestamps=req.timestamps, at=req.at)
        response.headers["Server-Timing"] = f"explain;dur={(time.perf_counter() - t0) * 1000:.3f}"
        return ex.to_dict()

    return app
