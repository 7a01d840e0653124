"""The playground: one static page at `/` (prompt or chat, sampling controls, streamed output, attention heatmaps,
a classifier's labels and token attributions) and the three routes it reads besides the OpenAI ones.

`/v1/attention`, `/v1/classify` and `/v1/attributions` call the package's own `explain` and `inference` code, so
the page shows what `lmforge explain` and `lmforge predict` compute, not a second copy written for the browser.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from lmforge.errors import LmforgeError
from lmforge.explain.attributions import attention_maps, attribute, check_explainable, encode
from lmforge.serve.app import ApiError, Server, _read

STATIC = Path(__file__).parent / "static"
MAX_ATTENTION_TOKENS = 256  # a wider heatmap is unreadable, and its T x T weights a megabyte of JSON
MAX_STEPS = 256  # integrated-gradients points per request: each one is a forward and a backward


class AttentionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str = Field(min_length=1)
    layer: int = Field(default=0, ge=0)
    head: int = Field(default=0, ge=0)
    model: str | None = None


class ClassifyBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: str | list[str] = Field(min_length=1)
    model: str | None = None


class AttributionsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: str = Field(min_length=1)
    target: str | None = None  # a label name or index; None: the predicted label
    steps: int = Field(default=32, ge=1, le=MAX_STEPS)
    model: str | None = None


def _shape(server: Server) -> tuple[int | None, int | None]:
    """(layers, heads) of the backbone, for the page's selectors."""
    cfg = getattr(getattr(server.loaded.model, "backbone", server.loaded.model), "cfg", None)
    return getattr(cfg, "n_layer", None), getattr(cfg, "n_head", None)


def _classifier(server: Server, what: str):
    """The fine-tuned sequence classifier served, or a 400 that says which model this needs."""
    task = server.loaded.task
    if task is None or task.task != "classification":
        kind = f"a {task.task} model" if task is not None else f"a {server.family} model that is not fine-tuned"
        raise ApiError(400, f"{server.name} is {kind}: {what} needs a classifier fine-tuned with "
                            "lmforge finetune --task classification")  # fmt: skip
    model = server.loaded.model
    if task.max_seq_len is None:  # lmforge finetune always sets it; a hand-written config may not
        task = dataclasses.replace(task, max_seq_len=model.backbone.cfg.max_seq_len)
    return model, task


def _encoded(server: Server, text: str, param: str):
    """The text as the model reads it (with [CLS]/[SEP] for an encoder); a text too long for it is a 400."""
    backbone = getattr(server.loaded.model, "backbone", server.loaded.model)
    if not text.strip():
        raise ApiError(400, f"{param}: the text is empty", param=param)
    try:
        return encode(server.tokenizer, backbone, text)
    except LmforgeError as e:
        raise ApiError(400, f"{param}: {e}: shorten it", param=param) from None


def attention(server: Server, body: AttentionBody) -> dict:
    enc = _encoded(server, body.text, "text")
    n = enc.input_ids.size(1)
    if n > MAX_ATTENTION_TOKENS:
        raise ApiError(400, f"text: the text is {n} tokens; the attention view shows at most "
                            f"{MAX_ATTENTION_TOKENS}: shorten it", param="text")  # fmt: skip
    device = next(server.loaded.model.parameters()).device
    types = None if enc.token_type_ids is None else enc.token_type_ids.to(device)
    ids = enc.input_ids.to(device)
    maps = attention_maps(server.loaded.model, ids, torch.ones_like(ids), types)  # per layer (n_head, T, T)
    layers, heads = len(maps), maps[0].size(0)
    if body.layer >= layers:
        raise ApiError(400, f"layer {body.layer} is out of range: the model has layers 0 to {layers - 1}",
                       param="layer")  # fmt: skip
    if body.head >= heads:
        raise ApiError(400, f"head {body.head} is out of range: each layer has heads 0 to {heads - 1}",
                       param="head")  # fmt: skip
    weights = maps[body.layer][body.head].float().cpu()  # (T, T), rows are queries
    return {"object": "attention", "model": server.name, "tokens": enc.tokens, "layer": body.layer,
            "head": body.head, "layers": layers, "heads": heads, "causal": server.family == "gpt",
            "weights": [[round(w, 6) for w in row] for row in weights.tolist()]}  # fmt: skip


def classify(server: Server, texts: list[str]) -> list[dict]:
    from lmforge.inference.predict import predict
    from lmforge.tasks import get_task

    model, task = _classifier(server, "/v1/classify")
    if not all(t.strip() for t in texts):
        raise ApiError(400, "input: every text must be non-empty", param="input")
    device = next(model.parameters()).device
    examples = [get_task(task.task).example(t, None, n) for n, t in enumerate(texts)]
    records = predict(model, server.tokenizer, task, examples, device=device)
    return [{"index": i, "label": r["label"], "labels": [{"label": label, "probability": p} for label, p in
             sorted(r["probabilities"].items(), key=lambda kv: -kv[1])]}
            for i, r in enumerate(records)]  # fmt: skip


def attributions(server: Server, body: AttributionsBody) -> dict:
    """Integrated gradients of one text, as `lmforge explain` computes them (explain.attributions.attribute), to the
    target's (default: the predicted label's) logit; special tokens keep their embedding, so their attribution is 0."""
    model, task = _classifier(server, "/v1/attributions")
    _encoded(server, body.input, "input")  # the same checks as /v1/attention: a text that fits, not empty
    try:
        check_explainable(model)
    except LmforgeError as error:
        raise ApiError(400, f"{server.name}: {error}") from None
    try:
        e, _ = attribute(model, server.tokenizer, body.input, body.target, steps=body.steps, labels=task.labels)
    except LmforgeError as error:
        raise ApiError(400, f"target: {error}", param="target") from None
    return {"object": "attributions", "model": server.name, "tokens": e.tokens,
            "attributions": [round(a, 6) for a in e.attributions], "label": e.predicted, "target": e.target,
            "delta": e.delta, "steps": body.steps, "probabilities": e.probabilities}  # fmt: skip


def add_playground(app: FastAPI, server: Server) -> None:
    """Registers the page, its static files, /playground/info and the attention, classify and attributions routes."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    lock = threading.Lock()  # integrated gradients swaps the embedding's output by a hook: no forward may run then

    async def serialized(route, *args):
        """route(server, *args) in a worker thread, one at a time (the GPT engine never runs a classifier)."""

        def run():
            with lock:
                return route(server, *args)

        return await asyncio.to_thread(run)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/playground/info")
    async def info():
        """What the page shows: generation only for a GPT language model, classify for a fine-tuned classifier."""
        layers, heads = _shape(server)
        task = server.loaded.task
        return {"model": server.name, "family": server.family, "task": None if task is None else task.task,
                "labels": None if task is None else list(task.labels), "generates": server.engine is not None,
                "classifies": task is not None and task.task == "classification", "layers": layers, "heads": heads,
                "context": server.context, "auth": server.api_key is not None}  # fmt: skip

    @app.post("/v1/attention")
    async def attention_route(http: HttpRequest):
        body = await _read(http, AttentionBody)
        server.check_model(body.model)
        return await serialized(attention, body)

    @app.post("/v1/classify")
    async def classify_route(http: HttpRequest):
        body = await _read(http, ClassifyBody)
        server.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        data = await serialized(classify, texts)
        return {"object": "list", "model": server.name, "data": data}

    @app.post("/v1/attributions")
    async def attributions_route(http: HttpRequest):
        body = await _read(http, AttributionsBody)
        server.check_model(body.model)
        return await serialized(attributions, body)
