import json

import pytest

from lmforge.data import ensure_prepared, load_prepared, prepare
from lmforge.data.records import read_csv_texts, read_jsonl_texts
from lmforge.errors import LmforgeError
from lmforge.tokenizer import EOS

JSONL = b"\n".join([
    b'{"text": "first doc", "id": 1}',
    b"{not json",  # 2
    b"",
    b'["a list"]',  # 4
    b'{"title": "no text"}',  # 5
    b'{"text": "bad \xff byte"}',  # 6
    b'{"text": "raw \x00 nul"}',  # 7
    b'{"text": "lone \\ud800 surrogate"}',  # 8
    b'{"text": "second \\u00e9 doc"}',
    b'{"text": "truncated',  # 10: a file cut mid-record
])  # fmt: skip


def test_jsonl_skips_and_counts_or_names_the_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(JSONL)
    assert read_jsonl_texts(path, "skip") == (["first doc", "second é doc"], 7)
    with pytest.raises(LmforgeError, match=r"docs.jsonl, line 2: not valid JSON .*on_bad_line=skip"):
        read_jsonl_texts(path, "error")
    path.write_bytes(b"\xef\xbb\xbf" + JSONL.split(b"\n")[0] + b"\r\n" + JSONL.split(b"\n")[5])
    with pytest.raises(LmforgeError, match=r"line 2: not UTF-8 \(byte 0xff\)"):
        read_jsonl_texts(path)


def test_csv_skips_and_counts_or_names_the_line(tmp_path):
    path = tmp_path / "docs.csv"
    rows = [b"id,text", b"1,hello", b'2,"multi', b'line"', b"3", b"4,nul \x00 here", b"5,bad \xe9 byte", b"6,ok",
            b'7,"never closed']  # fmt: skip
    path.write_bytes(b"\n".join(rows))
    assert read_csv_texts(path, "skip") == (["hello", "multi\nline", "ok"], 4)
    with pytest.raises(LmforgeError, match=r"docs.csv, line 5: 1 fields where the header has 2"):
        read_csv_texts(path, "error")
    path.write_bytes(b"\n".join([rows[0], rows[1], rows[6]]))
    with pytest.raises(LmforgeError, match=r"docs.csv, line 3: not UTF-8 \(byte 0xe9\)"):
        read_csv_texts(path, "error")
    path.write_bytes(b"body\nhello\n")
    with pytest.raises(LmforgeError, match='header with a "text" column'):
        read_csv_texts(path, "skip")


def test_prepare_reads_records_as_documents(tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"document {i} 中文"}) for i in range(30)) + "\n{oops\n")
    with pytest.raises(LmforgeError, match="line 31"):
        prepare([path], "bpe", tmp_path / "strict", vocab_size=300, progress=False)
    out = prepare([path], "bpe", tmp_path / "out", vocab_size=300, val_fraction=0.0, progress=False, on_bad_line="skip")
    data = load_prepared(out)
    assert data.meta["sources"][0]["records"] == 30 and data.meta["sources"][0]["skipped_lines"] == 1
    assert data.tokenizer.decode(data.train) == EOS.join(f"document {i} 中文" for i in range(30))
    assert "skipped 1 malformed line" in capsys.readouterr().err
    cached = ensure_prepared(path, "char", 8192, 0.1, tmp_path / "cache", False, on_bad_line="skip")
    assert load_prepared(cached).meta["sources"][0]["skipped_lines"] == 1
    with pytest.raises(LmforgeError, match="no record"):
        path.write_text("{}\n")
        prepare([path], "char", tmp_path / "empty", progress=False, on_bad_line="skip")
