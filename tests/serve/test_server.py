"""The OpenAI-compatible server, driven by the official `openai` client (and raw HTTP for what a client would not
send), on a free loopback port: results equal lmforge's own decoding, streams equal whole answers, and every bad
request is a 4xx in OpenAI's error shape after which the server still serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch
from helpers import Running, free_port, tiny_checkpoint

from lmforge.generation.chat import render_chat
from lmforge.generation.decoding import generate


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("gpt"), "gpt", max_seq_len=48)


@pytest.fixture(scope="module")
def server(gpt):
    with Running(gpt, max_batch=4) as running:
        yield running


def greedy(loaded, prompt_ids: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    return generate(loaded.model, ids, n, greedy=True)[0, len(prompt_ids) :].tolist()


def test_completions_whole_and_streamed_equal_lmforge_greedy_decoding(server):
    client, tokenizer = server.client(), server.loaded.tokenizer
    assert [m.id for m in client.models.list()] == ["tiny"]
    prompt = "the film was"
    ids = tokenizer.encode(prompt)
    expected = tokenizer.decode(greedy(server.loaded, ids, 10))
    whole = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "length"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(ids), 10)
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    stop = expected[3:6]
    cut = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].text == expected[: expected.find(stop)] and cut.choices[0].finish_reason == "stop"
    two = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, n=2, seed=3, logprobs=2)
    assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens == 12
    assert len(two.choices[0].logprobs.token_logprobs) == 6 and all(
        p <= 0 for p in two.choices[0].logprobs.token_logprobs
    )


def test_chat_completions_apply_the_template_and_stream(server):
    client, tokenizer = server.client(), server.loaded.tokenizer
    messages = [{"role": "user", "content": "the plot was"}]
    ids = tokenizer.encode(render_chat(messages))
    expected = tokenizer.decode(greedy(server.loaded, ids, 8))
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert expected.startswith(reply.choices[0].message.content) and reply.usage.prompt_tokens == len(ids)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                                 stream=True))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def ask_at_once(running: Running, prompts: list[str], timeout: float = 30) -> list[str]:
    """Greedy completions of prompts[i] with 5 + i new tokens, every request sent at once (each from a thread)."""
    client = running.client(timeout=timeout)
    results = [None] * len(prompts)

    def ask(i):
        results[i] = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=5 + i, temperature=0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r.choices[0].text for r in results]


def test_concurrent_requests_are_batched_and_each_is_right(server):
    tokenizer = server.loaded.tokenizer
    prompts = ["the", "great acting", "bad plot very", "film", "the film was fine", "poor", "very good", "awful"]
    for i, (prompt, text) in enumerate(zip(prompts, ask_at_once(server, prompts), strict=True)):
        assert text == tokenizer.decode(greedy(server.loaded, tokenizer.encode(prompt), 5 + i))


def test_a_compiled_int8_server_batches_requests_as_eager_int8_decodes(gpt, traced_only):
    from lmforge.checkpoint.loader import load
    from lmforge.kernels.compiled import CompiledLayers

    eager = load(gpt, dtype="int8")
    prompts = ["the", "great acting", "bad plot very", "film the film was fine", "poor"]
    with Running(gpt, {"dtype": "int8", "compile": True}, max_batch=4) as running:
        texts = ask_at_once(running, prompts, timeout=300)  # the first requests wait while the layers are traced
        layers = running.loaded.model.decoder.layers
        assert isinstance(layers, CompiledLayers) and layers.calls > 0 and not layers.failed
    tokenizer = eager.tokenizer
    for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
        assert text == tokenizer.decode(greedy(eager, tokenizer.encode(prompt), 5 + i))


@pytest.mark.parametrize(
    "body, status, says",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe{}", 400, "not UTF-8"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"prompt": 3}).encode(), 400, "prompt"),
        (json.dumps({"prompt": "the", "max_tokens": -1}).encode(), 400, "max_tokens"),
        (json.dumps({"prompt": "the", "max_tokens": 10**9}).encode(), 400, "does not fit"),
        (json.dumps({"prompt": "the " * 200}).encode(), 400, "context"),
        (json.dumps({"prompt": "the", "temperature": "hot"}).encode(), 400, "temperature"),
        (json.dumps({"prompt": "the", "model": "gpt-4"}).encode(), 404, "does not exist"),
        (json.dumps({"prompt": "x" * (2 << 20)}).encode(), 413, "at most"),
    ],
)
def test_bad_requests_are_4xx_in_openai_shape_and_the_server_goes_on(server, body, status, says):
    response = httpx.post(f"{server.url}/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert says in error["message"] and error["type"] and "\n" not in error["message"]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_bad_chat_messages_and_a_generation_request_to_an_encoder(server, tmp_path):
    response = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
    assert response.status_code == 400 and "role" in response.json()["error"]["message"]
    with Running(tiny_checkpoint(tmp_path / "bert", "bert")) as encoder:
        client = encoder.client()
        vectors = client.embeddings.create(model="tiny", input=["the film", "bad plot"])
        assert len(vectors.data) == 2 and abs(sum(x * x for x in vectors.data[0].embedding) - 1) < 1e-4
        with pytest.raises(openai.BadRequestError, match="cannot generate"):
            client.completions.create(model="tiny", prompt="the", max_tokens=2)


def test_an_api_key_is_required_when_set(gpt):
    with Running(gpt, api_key="sesame") as running:
        with pytest.raises(openai.AuthenticationError):
            running.client("wrong").models.list()
        assert [m.id for m in running.client("sesame").models.list()] == ["tiny"]
        assert httpx.get(f"{running.url}/health").status_code == 200  # health needs no key


def test_a_full_queue_answers_503_and_a_gone_client_frees_its_row(tmp_path):
    long = tiny_checkpoint(tmp_path / "long", "gpt", max_seq_len=4096)
    with Running(long, max_batch=1, max_queue=0) as running:
        engine = running.app.state.server.engine
        tokenizer = engine.tokenizer
        engine.tokenizer = SimpleNamespace(eos_id=None, decode=tokenizer.decode)  # it runs until it is abandoned
        client = running.client()
        stream = client.completions.create(model="tiny", prompt="the", max_tokens=4000, temperature=0.9, stream=True)
        next(iter(stream))  # the one row is taken
        response = httpx.post(f"{running.url}/v1/completions", json={"prompt": "the", "max_tokens": 2})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "busy" in response.json()["error"]["message"]
        stream.close()  # the client goes away mid-stream
        deadline = time.monotonic() + 10
        while engine.live:
            assert time.monotonic() < deadline, "the abandoned request kept its row"
            time.sleep(0.01)
        assert engine.steps < 3000  # it left long before its 4000 tokens
        assert client.completions.create(model="tiny", prompt="the", max_tokens=2).choices[0].finish_reason
        metrics = httpx.get(f"{running.url}/metrics").text
        assert 'lmforge_requests_total{path="/v1/completions",status="503"} 1' in metrics
        assert "lmforge_generated_tokens_total" in metrics and "lmforge_batch_size 0" in metrics


def test_the_cli_serves_until_sigterm_then_exits_0(gpt):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "lmforge", "serve", str(gpt), "--port", str(port), "--model-name", "tiny"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "serving tiny on http://127.0.0.1" in process.stdout.readline()
        deadline = time.monotonic() + 20
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        process.kill()
    bad = subprocess.run([*command[:5], "--port", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a TCP port" in bad.stderr


def test_an_encoder_decoder_completes_a_source(tmp_path):
    """A T5 at /v1/completions: the same text as lmforge translate's generate_seq2seq, whole or streamed; chat and
    logprobs are refused with a reason."""
    from helpers import tiny_t5

    from lmforge.checkpoint import save_checkpoint
    from lmforge.config import DataConfig, RunConfig
    from lmforge.generation.seq2seq import generate_seq2seq

    model, tokenizer = tiny_t5(["the cat sat on the mat", "a dog ran in the park"] * 20, 300, 24)
    path = save_checkpoint(tmp_path, 1, model, RunConfig("t5", model.cfg, DataConfig(tokenizer="bpe")), tokenizer)
    expected = generate_seq2seq(model, tokenizer, ["the cat"], num_beams=1, max_new_tokens=8, temperature=0)[0]
    with Running(path) as running:
        client = running.client()
        whole = client.completions.create(model="tiny", prompt="the cat", max_tokens=8, temperature=0)
        assert whole.choices[0].text == expected and whole.choices[0].finish_reason in ("stop", "length")
        chunks = client.completions.create(model="tiny", prompt="the cat", max_tokens=8, temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in chunks) == expected
        with pytest.raises(openai.BadRequestError, match="encoder-decoder"):
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError, match="encoder-decoder"):
            client.completions.create(model="tiny", prompt="the cat", max_tokens=4, logprobs=1)


def test_a_failed_step_fails_its_requests_and_the_server_goes_on(server):
    """A forward pass that raises ends the requests in it with a 500 (an error chunk when streamed), and the next
    request is served; tiny temperatures decode greedily instead of overflowing."""
    engine = server.app.state.server.engine
    decode = engine._decode

    def broken():
        engine._decode = decode
        raise RuntimeError("simulated failure")

    engine._decode = broken
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "the film", "max_tokens": 4}, timeout=30)
    assert response.status_code == 500 and "simulated failure" in response.json()["error"]["message"]
    engine._decode = broken
    with pytest.raises(openai.APIError, match="simulated failure"):
        list(server.client().completions.create(model="tiny", prompt="the", max_tokens=4, stream=True))
    tiny = server.client().completions.create(model="tiny", prompt="the film", max_tokens=4, temperature=1e-40)
    greedy = server.client().completions.create(model="tiny", prompt="the film", max_tokens=4, temperature=0)
    assert tiny.choices[0].text == greedy.choices[0].text


def test_chunked_bodies_seeds_and_metrics_labels_are_bounded(server):
    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    response = httpx.post(f"{server.url}/v1/completions", content=chunks())  # no Content-Length
    assert response.status_code == 413 and "most accepted" in response.json()["error"]["message"]
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "the", "seed": 2**70})
    assert response.status_code == 400 and "seed" in response.json()["error"]["message"]
    httpx.get(f"{server.url}/x%22%7D%201%0Afoo")
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'path="other",status="404"' in metrics and "foo" not in metrics
