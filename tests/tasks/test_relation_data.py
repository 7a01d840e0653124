import json

import pytest
from helpers import discover_labels, read_examples

from lmforge.data.labelled import Columns
from lmforge.errors import LmforgeError
from lmforge.tasks.relation import MARKERS, add_markers, encode_relation, mark, unmark, window
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def wordpiece():
    texts = ["jobs founded apple in california", "the cat sat on the mat", "乔布斯创立了苹果"]
    tok = Tokenizer.train_wordpiece(texts, 80)
    ids, new = add_markers(tok)
    assert new and ids == [tok.backend.token_to_id(m) for m in MARKERS]
    assert add_markers(tok) == (ids, False)  # a second time adds nothing
    return tok


def spans_of(marked):
    """The (head, tail) character spans a marked text gives back."""
    ex = unmark(marked)
    return ex.text, ex.head, ex.tail


@pytest.mark.parametrize(
    ("text", "head", "tail", "marked"),
    [
        ("Jobs founded Apple", (0, 4), (13, 18), "[E1]Jobs[/E1] founded [E2]Apple[/E2]"),  # at the start and the end
        ("Apple, by Jobs", (10, 14), (0, 5), "[E2]Apple[/E2], by [E1]Jobs[/E1]"),  # tail first
        ("AB", (0, 1), (1, 2), "[E1]A[/E1][E2]B[/E2]"),  # adjacent, no space between
        ("乔布斯创立了苹果", (0, 3), (6, 8), "[E1]乔布斯[/E1]创立了[E2]苹果[/E2]"),  # Chinese, no spaces at all
    ],
)
def test_markers_go_around_the_spans_and_come_back(text, head, tail, marked):
    assert mark(text, head, tail) == marked
    assert spans_of(marked) == (text, head, tail)


def test_marker_tokens_enclose_exactly_the_entity(wordpiece):
    text, head, tail = "乔布斯创立了苹果", (0, 3), (6, 8)
    enc = wordpiece.backend.encode(mark(text, head, tail), add_special_tokens=False)
    marked = mark(text, head, tail)
    ids = [wordpiece.backend.token_to_id(m) for m in MARKERS]
    at = [enc.ids.index(i) for i in ids]
    assert at == sorted(at) and all(enc.tokens[a] == m for a, m in zip(at, MARKERS, strict=True))
    inside = enc.offsets[at[0] + 1 : at[1]]  # the head's tokens map to the head's characters
    assert marked[inside[0][0] : inside[-1][1]] == text[slice(*head)]
    inside = enc.offsets[at[2] + 1 : at[3]]
    assert marked[inside[0][0] : inside[-1][1]] == text[slice(*tail)]


def test_reader_takes_three_span_layouts_and_configurable_keys(tmp_path):
    rows = [
        {"text": "jobs founded apple", "head": {"start": 0, "end": 4}, "tail": {"start": 13, "end": 18}, "label": "f"},
        {"text": "jobs founded apple", "subj_start": 0, "subj_end": 4, "obj_start": 13, "obj_end": 18, "label": "f"},
        {"text": "apple by jobs", "h": [9, 13], "t": [0, 5], "label": "g"},
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = read_examples(path, "relation")
    assert [(e.head, e.tail, e.label) for e in examples] == [((0, 4), (13, 18), "f")] * 2 + [((9, 13), (0, 5), "g")]
    assert discover_labels(examples, "relation", path) == ["f", "g"]
    path.write_text(json.dumps({"s": "ab cd", "x": [0, 2], "y": [3, 5], "rel": "r"}) + "\n")
    (ex,) = read_examples(path, "relation", Columns(text="s", label="rel", head="x", tail="y"))
    assert (ex.text, ex.head, ex.tail, ex.label) == ("ab cd", (0, 2), (3, 5), "r")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "ab cd", "head": [0, 2], "tail": [1, 4], "label": "r"}, "line 1: the entities overlap"),
        ({"text": "ab cd", "head": [0, 9], "tail": [3, 5], "label": "r"}, 'line 1: entity "head" must be'),
        ({"text": "ab cd", "head": [0, 2], "label": "r"}, "line 1: no entity 'tail' or 'obj' or 't'"),
        ({"text": "ab cd", "head": [0, 2], "tail": [3, 5]}, 'line 1: no label "label"'),
        ({"text": "ab cd", "head": [0, 2], "tail": [3, 5], "label": ""}, 'line 1: empty label in "label"'),
        ({"text": "ab cd", "head": [0, 2], "tail": [3, 5], "label": None}, 'line 1: empty label in "label"'),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, record, message):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(LmforgeError, match=message):
        read_examples(path, "relation")


@pytest.mark.parametrize(
    "marked", ["jobs founded apple", "[E1]jobs[/E1] [E1]x[/E1] [E2]a[/E2]", "[/E1]a[E1] [E2]b[/E2]"]
)
def test_bad_inline_markers_are_refused(marked):
    with pytest.raises(LmforgeError, match="--text"):
        unmark(marked)


def test_window_keeps_every_marker():
    for n, first, last, budget in [(100, 0, 3, 10), (100, 96, 99, 10), (100, 40, 47, 10), (8, 2, 5, 10)]:
        start = window(n, first, last, budget)
        assert 0 <= start and start <= first and last < start + budget and (start + budget <= n or start == 0)


def test_long_texts_are_cut_around_the_entities(wordpiece):
    words = ["the cat sat on the mat"] * 10
    text = " ".join(words) + " jobs founded apple " + " ".join(words)
    head = (text.index("jobs"), text.index("jobs") + 4)
    tail = (text.index("apple"), text.index("apple") + 5)
    ex = unmark(mark(text, head, tail))
    (f,) = encode_relation([ex], wordpiece, "bert", 16, None)
    assert len(f["input_ids"]) == 16 and f["input_ids"][0] == wordpiece.cls_id
    assert all(wordpiece.backend.token_to_id(m) in f["input_ids"] for m in MARKERS)
    far = "[E1]jobs[/E1] " + " ".join(words) + " [E2]apple[/E2]"
    with pytest.raises(LmforgeError, match="--text 1: the entities and the words between them take"):
        encode_relation([unmark(far, "--text 1")], wordpiece, "bert", 16, None)
