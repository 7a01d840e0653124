"""The OpenAI-compatible HTTP API: completions and chat completions (streamed as server-sent events or whole) from a
GPT through the continuous-batching engine, embeddings from an encoder, health and Prometheus metrics.

Every request body is read and checked here, so that every mistake (bad JSON, wrong types, a prompt longer than the
context, an unknown model, a body too large, bytes that are not UTF-8) is a 4xx answer in OpenAI's error shape and
the server goes on serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from types import SimpleNamespace
from typing import Literal

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lmforge.checkpoint.files import Loaded
from lmforge.errors import LmforgeError
from lmforge.generation.text import TextUntilStop, encode_prompt
from lmforge.serve.engine import Engine, Event, QueueFull, Request, Sampling
from lmforge.serve.metrics import Metrics

MAX_BODY = 1 << 20  # bytes of a request body
MAX_N = 16  # choices per request
WATCH_S = 0.25  # how often a waiting whole-answer request checks that its client is still there


class ApiError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1 - MAX_N)
    n: int = Field(default=1, ge=1, le=MAX_N)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream: bool = False
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop):
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop


class CompletionBody(_Body):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=5)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: str | list[str] = Field(min_length=1)
    model: str | None = None


class Server:
    """What the routes share: the model, its engine (for a GPT), the name it is served under, and the metrics."""

    def __init__(self, loaded: Loaded, name: str, api_key: str | None, max_batch: int, max_queue: int):
        from lmforge.checkpoint.loader import language_model

        path = loaded.path
        loaded = language_model(loaded)  # a chat fine-tune generates as the GPT it is
        self.loaded, self.name, self.api_key = loaded, name, api_key
        self.family = loaded.config.family
        self.tokenizer = loaded.tokenizer
        self.context = loaded.model.cfg.max_seq_len if hasattr(loaded.model, "cfg") else 512
        self.metrics = Metrics()
        self.engine = self.seq2seq = None
        if self.family == "gpt" and loaded.task is None:
            self.engine = Engine(loaded.model, loaded.tokenizer, max_batch, max_queue)
        elif self.family == "t5" and (loaded.task is None or loaded.task.task in ("seq2seq", "summarization")):
            from lmforge.generation.seq2seq import check_seq2seq

            self.seq2seq = check_seq2seq(loaded)  # an encoder-decoder completes a source, one request at a time
            self.seq2seq_lock = threading.Lock()
        eos = self.tokenizer.eos_id
        eos_token = self.tokenizer.backend.id_to_token(eos) if eos is not None else ""
        self.special_tokens = {"eos_token": eos_token, "bos_token": ""}  # GPT-2's family has no BOS
        self.template = None
        if path is not None:
            from lmforge.generation.chat import read_template

            self.template = read_template(path)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(404, f"the model {model!r} does not exist here: this server serves {self.name!r}",
                           "invalid_request_error", "model")  # fmt: skip

    def generator(self) -> Engine:
        if self.engine is None and self.seq2seq is not None:
            raise ApiError(400, f"{self.name} is an encoder-decoder: it completes a source text at /v1/completions, "
                                "without chat or logprobs")  # fmt: skip
        if self.engine is None:
            raise ApiError(400, f"{self.name} is a {self.family} model without a language-model head: it cannot "
                                "generate text (use /v1/embeddings or /v1/classify)")  # fmt: skip
        return self.engine

    def prompt_ids(self, text: str, max_tokens: int | None, param: str) -> tuple[list[int], int]:
        try:  # lmforge generate's rules: an empty prompt starts from a separator, a long one is refused
            ids = encode_prompt(self.tokenizer, text, self.context)
        except LmforgeError as e:
            raise ApiError(400, str(e), param=param) from None
        room = self.context - (1 if self.seq2seq is not None else len(ids))  # a source has a context of its own
        if max_tokens is not None and max_tokens > room:
            raise ApiError(400, f"max_tokens = {max_tokens} does not fit: the prompt is {len(ids)} tokens of a "
                                f"{self.context}-token context, so at most {room}", param="max_tokens")  # fmt: skip
        return ids, max_tokens or min(16, room)


def _sampling(body: _Body, max_tokens: int, logprobs: int | None, seed_offset: int) -> Sampling:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    seed = None if body.seed is None else body.seed + seed_offset
    return Sampling(max_tokens, body.temperature, body.top_p, body.top_k, stop, seed, body.presence_penalty,
                    body.frequency_penalty, logprobs)  # fmt: skip


async def _read(request, model: type[BaseModel]) -> BaseModel:
    """The request's JSON body as `model`, or an ApiError that says what is wrong with it."""
    body = bytearray()
    async for piece in request.stream():  # a chunked body has no Content-Length to refuse it by
        body += piece
        if len(body) > MAX_BODY:
            raise ApiError(413, f"the request body is over {MAX_BODY:,} bytes, the most accepted")
    try:
        data = json.loads(bytes(body).decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ApiError(
            400, f"the request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param) from None


class _Stream:
    """Events of one engine request, handed from the engine's thread to this request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self.queue.get()
            yield event
            if event.finish_reason is not None:
                return


def _submit(server: Server, prompt: list[int], sampling: Sampling) -> tuple[Request, _Stream]:
    stream = _Stream(asyncio.get_running_loop())
    request = Request(prompt, sampling, stream.put, server.tokenizer)
    try:
        server.generator().submit(request)
    except QueueFull as e:
        raise ApiError(503, f"the server is busy: {e}; retry in a moment", "server_error") from None
    return request, stream


def _submit_seq2seq(server: Server, source: str, sampling: Sampling) -> tuple[SimpleNamespace, _Stream]:
    """An encoder-decoder's completion of source, run in a thread (one at a time: no continuous batching for an
    encoder-decoder yet) and reported as the engine reports: pieces as they are decoded, then the finish."""
    from lmforge.generation.seq2seq import generate_seq2seq

    stream = _Stream(asyncio.get_running_loop())
    state = SimpleNamespace(cancelled=False, first_token_s=None, submitted=time.perf_counter())
    text = TextUntilStop([stop for stop in sampling.stop if stop], lambda piece: stream.put(Event(piece, [])))

    def run() -> None:
        finish = Event("", [], [], "stop")  # also after a failure (on stderr), so that the client is answered
        try:
            with server.seq2seq_lock:
                output = generate_seq2seq(
                    server.seq2seq, server.tokenizer, [source], num_beams=1, max_new_tokens=sampling.max_tokens,
                    temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                    seed=sampling.seed, device=server.seq2seq.tok_emb.weight.device, on_text=text.add,
                )[0]  # fmt: skip
            text.close()
            state.first_token_s = time.perf_counter() - state.submitted
            finish.tokens = server.tokenizer.encode(output)
            finish.finish_reason = "length" if len(finish.tokens) >= sampling.max_tokens else "stop"
        finally:
            stream.put(finish)

    threading.Thread(target=run, daemon=True).start()
    return state, stream


def _cancel(submitted: list) -> None:
    for request, _ in submitted:
        request.cancelled = True


async def _watch(http: HttpRequest, submitted: list) -> None:
    """A client that goes away before its whole answer frees its rows, and ends the wait for events."""
    while not await http.is_disconnected():
        await asyncio.sleep(WATCH_S)
    _cancel(submitted)
    for _, stream in submitted:
        stream.queue.put_nowait(Event("", [], [], "stop"))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def _completion_logprobs(events: list[Event]) -> dict:
    entries = [e for event in events for e in event.logprobs]
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [e["top"] for e in entries],
        "text_offset": [],
    }


def _chat_logprobs(events: list[Event]) -> dict:
    return {"content": [
        {"token": e["token"], "logprob": e["logprob"], "bytes": list(e["token"].encode()),
         "top_logprobs": [{"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in e["top"].items()]}
        for event in events for e in event.logprobs
    ]}  # fmt: skip


def create_app(loaded: Loaded, name: str, api_key: str | None = None, max_batch: int = 16, max_queue: int = 64):
    """The FastAPI application serving `loaded` under the model name `name`."""
    server = Server(loaded, name, api_key, max_batch, max_queue)

    @asynccontextmanager
    async def lifespan(app):
        if server.engine is not None:
            server.engine.start()
        yield
        if server.engine is not None:
            server.engine.stop()

    app = FastAPI(title="lmforge", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        error = {"message": e.message, "type": e.kind, "param": e.param, "code": None}
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return JSONResponse({"error": error}, status_code=e.status, headers=headers)

    @app.exception_handler(LmforgeError)
    async def lmforge_error(request, e: LmforgeError):  # e.g. a chat template's raise_exception on these messages
        return await api_error(request, ApiError(400, str(e).replace("\n", " ")))

    @app.middleware("http")
    async def guard(request: HttpRequest, call_next):
        path = request.url.path
        if server.api_key and path.startswith("/v1/"):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {server.api_key}".encode()):
                message = "a valid API key is needed: send the header 'Authorization: Bearer KEY'"
                return await api_error(request, ApiError(401, message, "authentication_error"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            message = f"the request body is {int(length):,} bytes; at most {MAX_BODY:,} are accepted"
            return await api_error(request, ApiError(413, message))
        start = time.perf_counter()
        response = await call_next(request)
        label = path if path in routes else "other"  # few labels, whatever paths clients ask for
        server.metrics.request(label, response.status_code, time.perf_counter() - start)
        return response

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": server.name}

    @app.get("/metrics")
    async def metrics():
        engine = server.engine
        live = (engine.queue_depth, len(engine.live)) if engine is not None else (0, 0)
        return PlainTextResponse(server.metrics.render(*live), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": server.name, "object": "model", "created": 0, "owned_by": "lmforge"}]}  # fmt: skip

    async def generate(http: HttpRequest, body: _Body, prompt: str, logprobs: int | None, chat: bool):
        server.check_model(body.model)
        seq2seq = server.seq2seq is not None and not chat and logprobs is None
        if not seq2seq:
            server.generator()  # a model that cannot do this says so before its prompt is checked
        max_tokens = body.max_completion_tokens if chat and body.max_completion_tokens else body.max_tokens
        ids, max_tokens = server.prompt_ids(prompt, max_tokens, "messages" if chat else "prompt")
        if chat:
            from lmforge.generation.chat import stop_strings

            body.stop = list({*([body.stop] if isinstance(body.stop, str) else body.stop or []),
                              *stop_strings(server.template)})  # fmt: skip
        submitted = []
        try:
            for i in range(body.n):
                if seq2seq:
                    submitted.append(_submit_seq2seq(server, prompt, _sampling(body, max_tokens, None, i)))
                else:
                    submitted.append(_submit(server, ids, _sampling(body, max_tokens, logprobs, i)))
        except ApiError:  # the queue filled up after some choices: no one will read those
            _cancel(submitted)
            raise
        created, ident = int(time.time()), ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        kind = "chat.completion" if chat else "text_completion"
        if body.stream:
            return StreamingResponse(
                _sse(http, submitted, ident, kind + (".chunk" if chat else ""), created, chat, logprobs is not None),
                media_type="text/event-stream",
            )
        choices, completion = [], 0
        watcher = asyncio.create_task(_watch(http, submitted))
        try:
            for index, (_, stream) in enumerate(submitted):
                events = [event async for event in stream.events()]
                if events[-1].finish_reason == "error":
                    _cancel(submitted)
                    raise ApiError(500, events[-1].error, "server_error")
                text, completion = "".join(e.text for e in events), completion + sum(len(e.tokens) for e in events)
                choice = {"index": index, "finish_reason": events[-1].finish_reason}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                    choice["logprobs"] = _chat_logprobs(events) if logprobs is not None else None
                else:
                    choice["text"] = (prompt + text) if body.echo else text
                    choice["logprobs"] = _completion_logprobs(events) if logprobs is not None else None
                choices.append(choice)
        except asyncio.CancelledError:
            _cancel(submitted)
            raise
        finally:
            watcher.cancel()
        server.metrics.tokens(len(ids) * body.n, completion, [r.first_token_s for r, _ in submitted])
        return {"id": ident, "object": kind, "created": created, "model": server.name, "choices": choices,
                "usage": _usage(len(ids) * body.n, completion)}  # fmt: skip

    async def _sse(http: HttpRequest, submitted, ident: str, kind: str, created: int, chat: bool, with_logprobs: bool):
        """Server-sent events in OpenAI's chunk format, choice by choice as tokens come, then `data: [DONE]`. A client
        that goes away cancels its requests: their rows go to others at the next step."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, stream: _Stream):
            async for event in stream.events():
                await queue.put((index, event))

        tasks = [asyncio.create_task(pump(i, s)) for i, (_, s) in enumerate(submitted)]
        finished, completion = 0, 0
        try:
            if chat:
                for index in range(len(submitted)):
                    first = {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    yield _chunk(ident, kind, created, server.name, first)
            while finished < len(submitted):
                index, event = await queue.get()
                if event.finish_reason == "error":  # OpenAI's clients raise on an error chunk
                    yield f"data: {json.dumps({'error': {'message': event.error, 'type': 'server_error'}})}\n\n"
                    return
                completion += len(event.tokens)
                if chat:
                    choice = {"index": index, "delta": {"content": event.text} if event.text else {},
                              "finish_reason": event.finish_reason}  # fmt: skip
                    if with_logprobs:
                        choice["logprobs"] = _chat_logprobs([event])
                else:
                    choice = {"index": index, "text": event.text, "finish_reason": event.finish_reason,
                              "logprobs": _completion_logprobs([event]) if with_logprobs else None}  # fmt: skip
                yield _chunk(ident, kind, created, server.name, choice)
                finished += event.finish_reason is not None
            server.metrics.tokens(0, completion, [r.first_token_s for r, _ in submitted])
            yield "data: [DONE]\n\n"
        finally:
            _cancel(submitted)  # a no-op for finished ones
            for task in tasks:
                task.cancel()

    @app.post("/v1/completions")
    async def completions(http: HttpRequest):
        body = await _read(http, CompletionBody)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "prompt: give one prompt (a string or a list of one); send several requests for "
                                "several prompts, they are batched together", param="prompt")  # fmt: skip
        return await generate(http, body, prompts[0], body.logprobs, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HttpRequest):
        from lmforge.generation.chat import render_chat

        body = await _read(http, ChatBody)
        prompt = render_chat([m.model_dump() for m in body.messages], server.template, tokens=server.special_tokens)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        return await generate(http, body, prompt, logprobs, chat=True)

    @app.post("/v1/embeddings")
    async def embeddings(http: HttpRequest):
        from lmforge.inference.embed import embed

        body = await _read(http, EmbeddingBody)
        server.check_model(body.model)
        if server.family != "bert" or loaded.task is not None:
            raise ApiError(400, f"{server.name} is not an encoder: embeddings come from a BERT-family model "
                                "(e.g. lmforge serve all-MiniLM-L6-v2)")  # fmt: skip
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not all(texts):
            raise ApiError(400, "input: every text must be non-empty", param="input")
        vectors = await asyncio.to_thread(embed, loaded.model, server.tokenizer, texts)
        tokens = sum(len(server.tokenizer.encode(t)) for t in texts)
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": server.name, "usage": _usage(tokens, 0)}

    from lmforge.serve.playground import add_playground  # it builds on this module's Server and errors

    add_playground(app, server)
    routes = {getattr(route, "path", None) for route in app.routes}  # the metrics' path labels
    return app


def _chunk(ident: str, kind: str, created: int, model: str, choice: dict) -> str:
    payload = {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}
    return f"data: {json.dumps(payload)}\n\n"


def run(app, host: str, port: int, shutdown_wait_s: float) -> None:
    """Serves app until SIGINT or SIGTERM, then lets in-flight requests finish (at most shutdown_wait_s) and
    returns: a stopped server exits 0, where uvicorn.run would re-raise the signal and die by it."""
    import signal

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=shutdown_wait_s))  # fmt: skip

    @contextmanager
    def graceful():
        def stop(signum, frame):
            server.should_exit = True

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    server.capture_signals = graceful
    server.run()
