"""The playground: /v1/attention against the package's own attention maps, /v1/classify against lmforge predict,
/v1/attributions against completeness, the page and its static files; and the page itself in a headless Chromium
(Debian's chromium and chromium-driver, driven by Selenium) typing a prompt, watching the streamed text arrive and
the attention heatmap draw."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time

import httpx
import pytest
import torch
from helpers import Running, tiny_checkpoint

from lmforge.checkpoint import load_model, save_checkpoint
from lmforge.config import TaskConfig
from lmforge.explain.attributions import attention_maps
from lmforge.inference.predict import predict_texts
from lmforge.serve.playground import add_playground
from lmforge.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")


class Playground(Running):
    """A server with the playground's routes (added here until create_app adds them itself)."""

    def __init__(self, path, **options):
        super().__init__(path, **options)
        if not any(getattr(route, "path", None) == "/v1/attention" for route in self.app.routes):
            add_playground(self.app, self.app.state.server)


def classifier_checkpoint(folder, family: str):
    """A fine-tuned sentiment classifier as lmforge finetune writes it: a head on a tiny backbone and its task."""
    backbone, tokenizer, cfg = load_model(tiny_checkpoint(folder / "base", family))
    task = TaskConfig(task="classification", labels=["neg", "pos"], pooling="cls" if family == "bert" else "last",
                      max_seq_len=backbone.cfg.max_seq_len)  # fmt: skip
    head = get_task("classification").build_head(backbone, task)
    torch.manual_seed(1)
    torch.nn.init.normal_(head.classifier.weight)  # logits that move with the input
    return save_checkpoint(folder / "ft", 1, head, cfg, tokenizer, extra={"task": dataclasses.asdict(task)})


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    with Playground(tiny_checkpoint(tmp_path_factory.mktemp("gpt"), "gpt", max_seq_len=64), max_batch=4) as running:
        yield running


@pytest.fixture(scope="module")
def bert_classifier(tmp_path_factory):
    path = classifier_checkpoint(tmp_path_factory.mktemp("cls"), "bert")
    with Playground(path) as running:
        running.path = path
        yield running


def post(server, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, timeout=30)


def test_attention_is_the_models_own_maps_rows_summing_to_one(gpt):
    tokenizer, model = gpt.loaded.tokenizer, gpt.loaded.model
    text = "the film was great"
    ids = tokenizer.encode(text)
    expected = attention_maps(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    for layer, head in [(0, 0), (1, 1)]:
        reply = post(gpt, "/v1/attention", {"text": text, "layer": layer, "head": head})
        assert reply.status_code == 200, reply.text
        got = reply.json()
        assert (got["layers"], got["heads"], got["causal"]) == (2, 2, True)
        assert got["tokens"] == [tokenizer.decode([i]) for i in ids]
        weights = torch.tensor(got["weights"])
        assert weights.shape == (len(ids), len(ids))
        torch.testing.assert_close(weights.sum(-1), torch.ones(len(ids)), atol=1e-4, rtol=0)
        torch.testing.assert_close(weights, expected[layer][head].float(), atol=1e-5, rtol=0)
        assert torch.all(weights.triu(1) == 0)  # causal: no query sees a later key


def test_attention_of_an_encoder_reads_cls_and_sep(bert_classifier):
    got = post(bert_classifier, "/v1/attention", {"text": "the plot was awful", "layer": 1, "head": 0}).json()
    assert got["tokens"][0] == "[CLS]" and got["tokens"][-1] == "[SEP]" and not got["causal"]
    weights = torch.tensor(got["weights"])
    assert weights.shape == (len(got["tokens"]),) * 2 and weights.triu(1).sum() > 0  # not causal
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(got["tokens"])), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "body, param, says",
    [
        ({"text": "the film", "layer": 2}, "layer", "layers 0 to 1"),
        ({"text": "the film", "head": 7}, "head", "heads 0 to 1"),
        ({"text": "the film", "layer": -1}, "layer", "greater than or equal to 0"),
        ({"text": ""}, "text", "at least 1 character"),
        ({"text": "   "}, "text", "empty"),
        ({"text": "the film " * 60}, "text", "shorten it"),
        ({"layer": 0}, "text", "Field required"),
    ],
)
def test_bad_attention_requests_are_400_naming_the_field(gpt, body, param, says):
    reply = post(gpt, "/v1/attention", body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and says in error["message"] and error["type"] == "invalid_request_error"


def test_classify_equals_lmforge_predict_and_probabilities_sum_to_one(bert_classifier):
    texts = ["the film was great", "the plot was awful and poor"]
    reply = post(bert_classifier, "/v1/classify", {"input": texts})
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    for d, expected in zip(data, predict_texts(bert_classifier.path, texts), strict=True):
        probabilities = [x["probability"] for x in d["labels"]]
        assert sorted(x["label"] for x in d["labels"]) == ["neg", "pos"]
        assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-5
        assert d["label"] == d["labels"][0]["label"] == expected["label"]
        assert {x["label"]: x["probability"] for x in d["labels"]} == pytest.approx(expected["probabilities"])
    one = post(bert_classifier, "/v1/classify", {"input": texts[0]}).json()["data"]
    assert len(one) == 1 and one[0]["labels"] == data[0]["labels"]
    for bad in ([], ["the film", " "], 3):
        reply = post(bert_classifier, "/v1/classify", {"input": bad})
        assert reply.status_code == 400 and reply.json()["error"]["param"].startswith("input"), reply.text


def test_classify_and_attributions_refuse_a_language_model(gpt):
    for route, body in (("/v1/classify", {"input": "the film"}), ("/v1/attributions", {"input": "the film"})):
        reply = post(gpt, route, body)
        assert reply.status_code == 400 and "fine-tuned" in reply.json()["error"]["message"]


def test_attributions_add_up_to_the_logit_change_and_skip_special_tokens(bert_classifier):
    reply = post(bert_classifier, "/v1/attributions", {"input": "the film was great", "steps": 64})
    assert reply.status_code == 200, reply.text
    got = reply.json()
    assert got["tokens"][0] == "[CLS]" and got["tokens"][-1] == "[SEP]"
    assert len(got["attributions"]) == len(got["tokens"]) and got["attributions"][0] == 0 == got["attributions"][-1]
    assert got["target"] == got["label"] == max(got["probabilities"], key=got["probabilities"].get)
    assert abs(got["delta"]) < 1e-2 * max(1.0, sum(abs(a) for a in got["attributions"]))  # completeness
    other = "neg" if got["label"] == "pos" else "pos"
    assert post(bert_classifier, "/v1/attributions", {"input": "the film", "target": other}).json()["target"] == other
    bad = post(bert_classifier, "/v1/attributions", {"input": "the film", "target": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "target"


def test_attributions_and_classify_at_once_do_not_disturb_each_other(bert_classifier):
    """Integrated gradients swaps the embedding's output with a hook; a classify request meanwhile must not see it."""
    texts = ["the film was great", "bad acting", "the plot was very poor", "fine film"]
    alone = post(bert_classifier, "/v1/classify", {"input": texts}).json()["data"]
    answers = {}

    def ask(i):
        if i % 2:
            answers[i] = post(bert_classifier, "/v1/attributions", {"input": texts[0], "steps": 48}).status_code
        else:
            answers[i] = post(bert_classifier, "/v1/classify", {"input": texts}).json()["data"]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(answers[i] == 200 for i in range(1, 12, 2)) and all(answers[i] == alone for i in range(0, 12, 2))


def test_the_page_and_its_static_files_are_served(gpt):
    page = httpx.get(f"{gpt.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/playground.js" in page.text and "<canvas" in page.text
    for name, kind in (("playground.js", "javascript"), ("playground.css", "text/css")):
        static = httpx.get(f"{gpt.url}/static/{name}")
        assert static.status_code == 200 and kind in static.headers["content-type"]
    info = httpx.get(f"{gpt.url}/playground/info").json()
    assert info["generates"] and not info["classifies"] and (info["layers"], info["heads"]) == (2, 2)


def test_api_key_guards_the_playground_routes_but_not_the_page(tmp_path):
    with Playground(tiny_checkpoint(tmp_path, "gpt"), api_key="secret") as server:
        assert httpx.get(f"{server.url}/").status_code == 200
        assert httpx.get(f"{server.url}/playground/info").json()["auth"] is True
        assert post(server, "/v1/attention", {"text": "the film"}).status_code == 401
        keyed = httpx.post(f"{server.url}/v1/attention", json={"text": "the film"},
                           headers={"Authorization": "Bearer secret"})  # fmt: skip
        assert keyed.status_code == 200


# ---- the page in a real browser ----


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium under Selenium, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver)")  # fmt: skip
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1100,1400",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


def wait_for(condition, seconds: float = 15, what: str = "the page", why=lambda: ""):
    """condition()'s first true value; on a timeout, an error naming what was awaited and why() (the page's status)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}: {why()}")


def open_page(browser, server):
    browser.get(f"{server.url}/")
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready === 'true'"), what="the page")
    return browser.find_element


def type_into(by_id, name: str, text: str) -> None:
    box = by_id("id", name)
    box.clear()
    box.send_keys(text)


def stream(by_id) -> tuple[str, int, list[int]]:
    """Clicks Generate and samples the text's length while it streams: (text, chunks, lengths seen)."""
    by_id("id", "generate").click()
    output, seen = by_id("id", "output"), []
    while output.get_attribute("data-done") != "true":
        seen.append(len(by_id("id", "generated").text))
        assert len(seen) < 2000, "the stream did not finish"
    assert "error" not in output.get_attribute("class"), output.text
    return by_id("id", "generated").text, int(output.get_attribute("data-chunks")), seen


def heatmap(browser, by_id, n_tokens) -> None:
    """Waits for a heatmap of n_tokens and checks it was painted: cells and labels, not a blank canvas."""
    canvas, status = by_id("id", "heatmap"), by_id("id", "attention-status")
    wait_for(lambda: canvas.get_attribute("data-tokens") == str(n_tokens), what="the heatmap", why=lambda: status.text)
    width, height, coloured = browser.execute_script(
        """const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let coloured = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 200 || d[i + 1] < 200) coloured++;
        return [c.width, c.height, coloured];""",
        canvas,
    )
    assert width > n_tokens * 10 and height > n_tokens * 10 and coloured > n_tokens * 10


def test_browser_types_generates_streams_and_draws_attention(browser, gpt, tmp_path):
    by_id = open_page(browser, gpt)
    assert by_id("id", "classify-panel").get_attribute("hidden") is not None  # a language model: no classify box
    type_into(by_id, "prompt", "the film was")
    for name, value in (("max_tokens", "16"), ("temperature", "1"), ("seed", "3")):
        type_into(by_id, name, value)
    text, chunks, seen = stream(by_id)
    assert text and chunks > 1, (text, chunks)  # the answer came in pieces, not at once
    assert seen == sorted(seen)  # it only grew
    assert "finish: length" in by_id("id", "gen-status").text

    by_id("id", "attention-toggle").click()
    heatmap(browser, by_id, len(gpt.loaded.tokenizer.encode("the film was" + text)))
    assert "layer 0, head 0" in by_id("id", "attention-status").text
    by_id("css selector", "#head option[value='1']").click()
    wait_for(lambda: "head 1" in by_id("id", "attention-status").text, what="head 1")
    browser.save_screenshot(str(tmp_path / "playground.png"))
    assert (tmp_path / "playground.png").stat().st_size > 1000

    by_id("css selector", "input[name='mode'][value='chat']").click()
    type_into(by_id, "prompt", "the plot was")
    text, chunks, _ = stream(by_id)
    turns = [e.text for e in by_id("id", "chat-log").find_elements("css selector", ".msg")]
    assert len(turns) == 2 and turns[0] == "user: the plot was"
    assert turns[1].startswith("assistant:") and text in turns[1]


def test_browser_classifies_and_colours_tokens_by_attribution(browser, bert_classifier, tmp_path):
    by_id = open_page(browser, bert_classifier)
    assert by_id("id", "generate-panel").get_attribute("hidden") is not None  # a classifier cannot generate
    type_into(by_id, "classify-text", "the film was great")
    by_id("id", "classify").click()
    rows = wait_for(lambda: by_id("id", "labels").find_elements("css selector", ".label-row"), what="the labels")
    expected = post(bert_classifier, "/v1/classify", {"input": "the film was great"}).json()["data"][0]["labels"]
    assert [r.text.split("\n")[0] for r in rows] == [x["label"] for x in expected]
    by_id("id", "explain").click()
    spans = wait_for(lambda: by_id("id", "attributions").find_elements("css selector", ".token"), what="attributions")
    assert [s.text for s in spans][:2] == ["[CLS]", "the"] and all(s.get_attribute("title") for s in spans)
    by_id("id", "attention-toggle").click()
    heatmap(browser, by_id, len(spans))
    browser.save_screenshot(str(tmp_path / "classifier.png"))
