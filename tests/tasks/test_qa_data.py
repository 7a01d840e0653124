import json

import pytest
from helpers import discover_labels, read_examples

from lmforge.data.labelled import Columns
from lmforge.errors import LmforgeError
from lmforge.tasks.qa import encode_qa, token_span
from lmforge.tokenizer import Tokenizer

CONTEXT = "Paris is the capital of France. The Seine flows through Paris; the city has 2,1 million people."
QUESTIONS = [
    {"id": "a1", "question": "What flows through Paris?", "answers": [{"text": "The Seine", "answer_start": 32}]},
    {"id": "a2", "question": "Capital?", "answers": [{"text": t, "answer_start": 24} for t in ("France", "France.")]},
]
SQUAD = {"data": [{"title": "Paris", "paragraphs": [{"context": CONTEXT, "qas": QUESTIONS}]}]}


@pytest.fixture(scope="module")
def wordpiece():
    return Tokenizer.train_wordpiece([CONTEXT, "what flows through capital of", "北京是中国的首都"], 120)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_squad_json_and_flat_jsonl_read_the_same(tmp_path):
    squad = read_examples(write(tmp_path / "d.json", json.dumps(SQUAD)), "qa")
    flat = [
        {"id": q["id"], "question": q["question"], "context": CONTEXT,
         "answers": {key: [a[key] for a in q["answers"]] for key in ("text", "answer_start")}}
        for q in QUESTIONS
    ]  # fmt: skip
    jsonl = read_examples(write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in flat)), "qa")
    assert [(e.id, e.question, e.context, e.answers) for e in squad] == [
        (e.id, e.question, e.context, e.answers) for e in jsonl
    ]
    assert squad[1].answers == [("France", 24), ("France.", 24)]
    assert discover_labels(squad, "qa", "d.json") == ["start", "end"]
    renamed = [{"q": r["question"], "c": r["context"], "a": r["answers"]} for r in flat]
    path = write(tmp_path / "r.jsonl", "".join(json.dumps(r) + "\n" for r in renamed))
    assert read_examples(path, "qa", Columns(text="q", text_pair="c", label="a"))[0].answers == [("The Seine", 32)]


def test_unlabelled_input_needs_no_answers(tmp_path):
    path = write(tmp_path / "q.jsonl", json.dumps({"question": "where?", "context": "in rome"}) + "\n")
    (ex,) = read_examples(path, "qa", labelled=False)
    assert ex.answers == [] and ex.id == "1"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("d.jsonl", {"question": "q", "context": "in rome", "answers": {"text": ["rome"], "answer_start": [2]}},
         "d.jsonl, line 1: answer 'rome' is not at answer_start 2 of its context (there: ' rom'); fix answer_start"),
        ("d.jsonl", {"question": "q", "context": "in rome", "answers": {"text": ["rome"], "answer_start": []}},
         "d.jsonl, line 1: answers needs as many answer_start"),
        ("d.jsonl", {"question": "q", "context": "in rome", "answers": []}, "d.jsonl, line 1: no answer"),
        ("d.jsonl", {"question": "q", "answers": []}, 'd.jsonl, line 1: needs "question", "context" and "answers"'),
        ("d.json", {"data": [{"paragraphs": [{"context": "in rome", "qas": [
            {"id": "x7", "question": "q", "answers": [{"text": "rome", "answer_start": 0}]}]}]}]},
         "d.json, question 'x7': answer 'rome' is not at answer_start 0"),
        ("d.json", {"data": [{"paragraphs": [{"qas": [{"id": "x", "question": "q"}]}]}]},
         "d.json is not SQuAD JSON (lacks 'context')"),
        ("d.csv", {}, "QA data is SQuAD .json or .jsonl"),
    ],
)  # fmt: skip
def test_bad_answers_name_the_file_and_the_record(tmp_path, name, text, message):
    path = write(tmp_path / name, json.dumps(text) + "\n")
    with pytest.raises(LmforgeError) as e:
        read_examples(path, "qa")
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("byte", "message"), [(b"\xe9", r"not UTF-8 \(byte 0xe9\)"), (b"\x00", "a NUL byte")])
def test_squad_json_that_is_not_utf8_text_is_refused_at_its_line(tmp_path, byte, message):
    path = tmp_path / "d.json"
    path.write_bytes(b'{"data": [{"paragraphs": [\n{"context": "Paris' + byte + b'", "qas": []}]}]}\n')
    with pytest.raises(LmforgeError, match=rf"d.json, line 2: {message}"):
        read_examples(path, "qa")


def test_token_span_covers_the_characters():
    offsets = [(0, 5), (6, 8), (9, 12), (12, 15)]
    assert token_span(offsets, 0, 5) == (0, 0)
    assert token_span(offsets, 6, 15) == (1, 3)
    assert token_span(offsets, 10, 13) == (2, 3)  # a span inside tokens takes the tokens holding it


@pytest.mark.parametrize("stride", [0, 3, 7])
def test_windows_overlap_by_the_stride_and_labels_map_back_exactly(wordpiece, tmp_path, stride):
    examples = read_examples(write(tmp_path / "d.json", json.dumps(SQUAD)), "qa")
    features = encode_qa(examples, wordpiece, "bert", 24, ["start", "end"], doc_stride=stride)
    context_tokens = wordpiece.backend.encode(CONTEXT, add_special_tokens=False).offsets
    for n, ex in enumerate(examples):
        windows = [f for f in features if f["example"] == n]
        assert len(windows) > 1  # the context is longer than one window
        spans = [[o for o in f["offsets"] if o is not None] for f in windows]
        for a, b in zip(spans, spans[1:], strict=False):
            assert a[len(a) - stride :] == b[:stride] if stride else a[-1][1] <= b[0][0]  # overlap of `stride` tokens
        assert [o for i, s in enumerate(spans) for o in (s if i == 0 else s[stride:])] == context_tokens
        holding = 0
        for f in windows:
            assert len(f["input_ids"]) <= 24 and f["input_ids"][0] == wordpiece.cls_id
            assert len(f["token_type_ids"]) == len(f["input_ids"]) == len(f["offsets"])
            start, end = f["label"]
            if (start, end) == (0, 0):
                continue
            holding += 1
            text, _ = ex.answers[0]
            assert CONTEXT[f["offsets"][start][0] : f["offsets"][end][1]] == text
        assert holding >= 1


def test_chinese_context_maps_back(wordpiece):
    from lmforge.tasks.qa import QAExample

    ex = QAExample("x", "1", "首都", "北京是中国的首都", [("中国", 3)])
    (f,) = encode_qa([ex], wordpiece, "bert", 32, ["start", "end"], doc_stride=2)
    start, end = f["label"]
    assert ex.context[f["offsets"][start][0] : f["offsets"][end][1]] == "中国"


def test_stride_too_large_and_gpt_are_refused(wordpiece):
    from lmforge.tasks.qa import QAExample

    ex = [QAExample("x", "1", "q", "in rome", [("rome", 3)])]
    with pytest.raises(LmforgeError, match="--doc-stride 128 must be below"):
        encode_qa(ex, wordpiece, "bert", 64, None, doc_stride=128)
    with pytest.raises(LmforgeError, match="needs an encoder"):
        encode_qa(ex, wordpiece, "gpt", 64, None)
