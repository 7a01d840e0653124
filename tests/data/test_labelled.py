import pytest
from helpers import discover_labels, read_examples

from lmforge.data.labelled import IGNORE, Columns, check_labels, collate
from lmforge.errors import LmforgeError
from lmforge.tasks.classification import encode_classification
from lmforge.tasks.ner import encode_tokens
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def wordpiece():
    return Tokenizer.train_wordpiece(["the cat sat on the mat", "unbelievable things happen", "alice in paris"], 50)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_csv_jsonl_read_the_same_examples(tmp_path):
    tsv = write(tmp_path, "a.tsv", 'sentence\tlabel\nit is "great\t1\nbad one\t0\n')  # TSV: quotes are text
    csv_ = write(tmp_path, "a.csv", 'id,sentence,label\n1,"it is ""great",1\n2,bad one,0\n')
    jsonl = write(
        tmp_path, "a.jsonl", '{"sentence": "it is \\"great", "label": 1}\n\n{"sentence": "bad one", "label": 0}\n'
    )
    for path in (tsv, csv_, jsonl):
        examples = read_examples(path, "classification")
        assert [(e.text, e.label) for e in examples] == [('it is "great', "1"), ("bad one", "0")]
    assert [e.line for e in read_examples(jsonl, "classification")] == [1, 3]


def test_columns_are_configurable_and_pairs_read(tmp_path):
    path = write(tmp_path, "p.csv", "premise,hypothesis,gold\na cat,an animal,yes\na car,a fruit,no\n")
    examples = read_examples(path, "classification", Columns("premise", "hypothesis", "gold"))
    assert [(e.text, e.pair, e.label) for e in examples] == [("a cat", "an animal", "yes"), ("a car", "a fruit", "no")]


def test_conll_reads_sentences_and_skips_docstart(tmp_path):
    path = write(tmp_path, "a.conll", "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\nPeter NNP B-PER\n")
    examples = read_examples(path, "ner")
    assert [(e.line, e.text, e.label) for e in examples] == [
        (3, ["EU", "rejects"], ["B-ORG", "O"]),
        (7, ["Peter"], ["B-PER"]),
    ]


@pytest.mark.parametrize(
    ("name", "text", "task", "columns", "message"),
    [
        ("e.csv", "", "classification", None, r"e.csv is empty"),
        ("h.csv", "text,label\n", "classification", None, r"h.csv holds no examples"),
        (
            "m.tsv",
            "review\tlabel\nok\t1\n",
            "classification",
            None,
            r"m.tsv: no text column 'text' or 'sentence' .*--text-column",
        ),
        ("l.csv", "text\nok\n", "classification", None, r"l.csv: no label column 'label'.*--label-column"),
        (
            "c.csv",
            "text,stars\nok,1\n",
            "classification",
            Columns(label="label"),
            r"c.csv: no label column 'label' \(columns: text, stars\)",
        ),
        (
            "r.csv",
            "text,label\nok,1\nno,0,extra\n",
            "classification",
            None,
            r"r.csv, line 3: 3 fields where the header has 2",
        ),
        (
            "j.jsonl",
            '{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n',
            "classification",
            None,
            r"j.jsonl, line 2: no text column",
        ),
        ("b.jsonl", '{"text": "a", "label": 1}\n{oops\n', "classification", None, r"b.jsonl, line 2: not valid JSON"),
        ("n.conll", "EU NNP B-ORG\nrejects O\n", "ner", None, r"n.conll, line 2: 2 columns where line 1 has 3"),
        (
            "t.jsonl",
            '{"tokens": ["a", "b"], "tags": ["O"]}\n',
            "ner",
            None,
            r"t.jsonl, line 1: \"tags\" must be a list of tags, one per word",
        ),
        ("x.parquet", "", "classification", None, r"x.parquet: a .parquet file cannot hold classification data"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, name, text, task, columns, message):
    with pytest.raises(LmforgeError, match=message):
        read_examples(write(tmp_path, name, text), task, columns)


def test_labels_are_discovered_sorted_and_checked(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\na,10\nb,9\nc,10\n")
    examples = read_examples(path, "classification")
    assert discover_labels(examples, "classification", path) == ["9", "10"]
    ner = read_examples(write(tmp_path, "b.conll", "a I-PER\nb B-LOC\nc O\nd B-PER\n"), "ner")
    assert discover_labels(ner, "ner", "b.conll") == ["O", "B-LOC", "B-PER", "I-PER"]
    bad = read_examples(write(tmp_path, "c.conll", "a B-PER\n\nb O\nc PER\n"), "ner")
    with pytest.raises(LmforgeError, match=r"c.conll, line 4: tag 'PER' is not IOB2"):  # the tag's line
        discover_labels(bad, "ner", tmp_path / "c.conll")
    dev = read_examples(write(tmp_path, "dev.csv", "text,label\na,9\nb,11\n"), "classification")
    with pytest.raises(LmforgeError, match=r"dev.csv, line 3: label '11' is not one of the model's labels \(9, 10\)"):
        check_labels(dev, ["9", "10"], tmp_path / "dev.csv")


def test_unknown_tag_is_named_at_its_line(tmp_path):
    path = write(tmp_path, "dev.conll", "-DOCSTART- O\n\na O\nb B-ORG\n")
    with pytest.raises(LmforgeError, match=r"dev.conll, line 4: label 'B-ORG' is not one of the model's labels"):
        check_labels(read_examples(path, "ner"), ["O", "B-PER"], path)


@pytest.mark.parametrize(
    ("name", "data", "task", "message"),
    [
        ("a.csv", b"text,label\nok,1\nbad \xe9 byte,0\n", "classification", r"a.csv, line 3: not UTF-8 \(byte 0xe9\)"),
        ("b.csv", b"text,label\nok,1\nok,\xff\n", "classification", r"b.csv, line 3: not UTF-8 \(byte 0xff\)"),
        ("c.tsv", b"sentence\tlabel\nok\t1\nnul \x00 here\t0\n", "classification", r"c.tsv, line 3: a NUL byte"),
        ("d.conll", b"EU B-ORG\n\nPar\xeds B-LOC\n", "ner", r"d.conll, line 3: not UTF-8 \(byte 0xed\)"),
        ("e.conll", b"EU B-ORG\nx\x00 O\n", "ner", r"e.conll, line 2: a NUL byte"),
        (
            "f.jsonl",
            b'{"text": "a", "label": 1}\n{"text": "b\x00", "label": 0}\n',
            "classification",
            r"line 2: not valid",
        ),
        ("g.jsonl", b'{"tokens": ["\xff"], "tags": ["O"]}\n', "ner", r"g.jsonl, line 1: not UTF-8 \(byte 0xff\)"),
    ],
)
def test_nul_and_bytes_that_are_not_utf8_are_refused_at_their_line(tmp_path, name, data, task, message):
    """As training refuses them: decoded with replacement characters, they would teach the model garbage."""
    (tmp_path / name).write_bytes(data)
    with pytest.raises(LmforgeError, match=message):
        read_examples(tmp_path / name, task)


@pytest.mark.parametrize(
    ("name", "text", "task", "line"),
    [
        ("a.csv", "text,label\na,1\nb,\n", "classification", 3),
        ("b.tsv", "sentence\tlabel\na\t1\nb\t \n", "classification", 3),
        ("c.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": ""}\n', "classification", 2),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n', "classification", 2),
        ("e.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["b", "c"], "tags": ["O", ""]}\n', "ner", 2),
        ("f.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["b"], "tags": null}\n', "ner", 2),
    ],
)
def test_empty_label_is_refused_at_its_line(tmp_path, name, text, task, line):
    """An empty cell would become a class named ''."""
    path = write(tmp_path, name, text)
    with pytest.raises(LmforgeError, match=rf"{name}, line {line}: (empty label|\"tags\" must be a list of tags)"):
        read_examples(path, task)
    if task == "classification":  # predict ignores labels, given or not
        assert len(read_examples(path, task, labelled=False)) == 2


def test_one_label_only_is_refused(tmp_path):
    path = write(tmp_path, "a.csv", "text,label\na,x\nb,x\n")
    with pytest.raises(LmforgeError, match="classification needs two or more"):
        discover_labels(read_examples(path, "classification"), "classification", path)


def test_pairs_encode_with_segments_and_truncate_longest_first(tmp_path, wordpiece):
    from lmforge.data.labelled import Example

    ex = Example(1, "the cat sat on the mat", "alice in paris", "1")
    (f,) = encode_classification([ex], wordpiece, "bert", 8, ["0", "1"])
    cls, sep = wordpiece.cls_id, wordpiece.sep_id
    assert len(f["input_ids"]) == 8 and f["input_ids"][0] == cls and f["input_ids"].count(sep) == 2
    assert f["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1] and f["label"] == 1
    (g,) = encode_classification([ex], wordpiece, "gpt", 8, None)
    assert g["token_type_ids"] is None and len(g["input_ids"]) == 8 and g["label"] == IGNORE


def test_first_subword_carries_the_tag(wordpiece):
    from lmforge.data.labelled import Example

    words = ["unbelievable", "alice"]
    ex = Example(1, words, None, ["O", "B-PER"])
    (f,) = encode_tokens([ex], wordpiece, "bert", 32, ["O", "B-PER"])
    pieces = wordpiece.backend.encode(words, is_pretokenized=True, add_special_tokens=False)
    assert len(pieces.ids) > 2  # "unbelievable" splits into subwords
    n_first = pieces.word_ids.count(0)
    assert f["label"] == [IGNORE, 0] + [IGNORE] * (n_first - 1) + [1] + [IGNORE] * pieces.word_ids.count(1)
    assert f["words"] == [1, 1 + n_first]
    (cut,) = encode_tokens([ex], wordpiece, "bert", 3, ["O", "B-PER"])
    assert cut["words"] == [1, -1]  # the second word fell beyond max_seq_len


def test_collate_pads_right_with_mask():
    feats = [
        {"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "label": [IGNORE, 1, 0]},
        {"input_ids": [5], "token_type_ids": None, "label": [IGNORE]},
    ]
    b = collate(feats, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert b["attention_mask"].tolist() == [[True] * 3, [True, False, False]]
    assert b["labels"].tolist() == [[IGNORE, 1, 0], [IGNORE] * 3] and b["token_type_ids"].tolist()[0] == [0, 0, 1]
