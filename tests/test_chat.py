"""Chat templates, chat fine-tuning's assistant-only labels, and lmforge chat end to end on a tiny GPT."""

import io
import json
import random
import sys

import pytest
from helpers import tiny_checkpoint, tiny_gpt, write_jsonl

from lmforge.cli.main import main
from lmforge.config import TaskConfig
from lmforge.data.labelled import IGNORE, Columns
from lmforge.errors import LmforgeError
from lmforge.generation.chat import (
    DEFAULT_TEMPLATE,
    END,
    TEMPLATE_FILE,
    assistant_spans,
    check_messages,
    read_template,
    render_chat,
    stop_strings,
    write_template,
)
from lmforge.generation.dialogue import Dialogue, run_dialogue
from lmforge.tasks import get_task
from lmforge.tokenizer import Tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Ciao"},
]
RENDERED = (
    "<|system|>\nBe brief.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n"
    "<|user|>\nBye<|end|>\n<|assistant|>\nCiao<|end|>\n"
)
COLORS = ["red", "blue", "green"]


def test_default_template_renders_the_exact_text():
    assert render_chat(CONVERSATION, add_generation_prompt=False) == RENDERED
    assert render_chat(CONVERSATION[:2]) == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\n"
    assert stop_strings() == [END]


def test_a_hugging_face_template_renders_as_transformers_renders_it():
    chatml = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
        "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    text = render_chat(CONVERSATION[1:2], chatml)
    assert text == "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    assert stop_strings(chatml) == ["<|im_end|>"]
    with pytest.raises(LmforgeError, match="refused the conversation: only user"):
        render_chat(CONVERSATION, "{{ raise_exception('only user turns') }}")


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",  # the classic escape to every class in the process
        "{{ messages.append({'role': 'user'}) }}",  # templates may not change what they are given
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    ],
)
def test_the_sandbox_refuses_unsafe_templates(template):
    with pytest.raises(LmforgeError, match="cannot be rendered: .*unsafe|undefined"):
        render_chat(CONVERSATION, template)


@pytest.mark.parametrize(
    "messages, why",
    [
        ("hello", "must be a list"),
        ([], "is empty"),
        ([{"role": "user"}], "message 0 must be an object with keys role and content"),
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "message 1 has role 'robot'"),
        ([{"role": "user", "content": 3}], "content must be a string"),
    ],
)
def test_bad_messages_are_one_line_errors(messages, why):
    with pytest.raises(LmforgeError, match=why) as e:
        check_messages(messages)
    assert "\n" not in str(e.value)


def test_assistant_spans_are_the_replies_through_their_end_marker():
    text, spans = assistant_spans(CONVERSATION)
    assert text == RENDERED
    assert [text[a:b] for a, b in spans] == ["Hello.<|end|>", "Ciao<|end|>"]


def _labelled(tokenizer, conversations, max_seq_len=512):
    task = get_task("chat")
    examples = [type("Ex", (), {"messages": m})() for m in conversations]
    return task.encode(examples, tokenizer, "gpt", TaskConfig(task="chat", max_seq_len=max_seq_len), True)


def test_the_label_mask_covers_exactly_the_assistant_tokens():
    tokenizer = Tokenizer.train_char([RENDERED])  # one token per character: positions are offsets in the text
    (feature,) = _labelled(tokenizer, [CONVERSATION])
    _, spans = assistant_spans(CONVERSATION)
    inside = {i for a, b in spans for i in range(a, b)}
    assert feature["input_ids"] == tokenizer.encode(RENDERED)
    assert [i for i, x in enumerate(feature["label"]) if x != IGNORE] == sorted(inside)
    assert all(x in (IGNORE, i) for x, i in zip(feature["label"], feature["input_ids"], strict=True))

    bpe = Tokenizer.train_bpe([RENDERED] * 5, 300)  # subwords: the labelled tokens spell the replies exactly
    (feature,) = _labelled(bpe, [CONVERSATION])
    assert bpe.decode([x for x in feature["label"] if x != IGNORE]) == "Hello.<|end|>Ciao<|end|>"
    n = len(feature["input_ids"]) - 3  # truncated inside the last reply: the same labels, cut
    (cut,) = _labelled(bpe, [CONVERSATION], max_seq_len=n)
    assert cut["input_ids"] == feature["input_ids"][:n] and cut["label"] == feature["label"][:n]


def test_collate_moves_each_label_to_the_position_that_predicts_it():
    tokenizer = Tokenizer.train_char([RENDERED])
    features = _labelled(tokenizer, [CONVERSATION, CONVERSATION[:3]])
    batch = get_task("chat").collate(features, 0)
    ids, labels = batch["input_ids"], batch["labels"]
    kept = labels != IGNORE
    assert (labels[kept] == ids[:, 1:][kept[:, :-1]]).all() and not kept[:, -1].any()
    assert kept.sum() == sum(x != IGNORE for f in features for x in f["label"])


def test_a_char_tokenizer_without_the_markers_is_refused(tmp_path):
    tokenizer = Tokenizer.train_char(["the cat sat"])
    backbone = type("GPTish", (), {"family": "gpt"})()
    with pytest.raises(LmforgeError, match="cannot write the end-of-turn marker '<\\|end\\|>'"):
        get_task("chat").setup(backbone, tokenizer, TaskConfig(task="chat"))


def test_templates_are_stored_with_lmforge_and_hugging_face_models(tmp_path):
    lmforge_dir, hf_dir, listed = (tmp_path / name for name in ("ours", "hf", "listed"))
    for d in (lmforge_dir, hf_dir, listed):
        d.mkdir()
    assert read_template(lmforge_dir) is None
    assert write_template(lmforge_dir, "{{ messages }}") == lmforge_dir / TEMPLATE_FILE
    assert read_template(lmforge_dir) == "{{ messages }}"
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ 'hf' }}", "eos_token": "</s>"}))
    assert read_template(hf_dir) == "{{ 'hf' }}"
    named = [{"name": "tool_use", "template": "{{ 'tools' }}"}, {"name": "default", "template": "{{ 'plain' }}"}]
    (listed / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert read_template(listed) == "{{ 'plain' }}"


def test_a_long_history_drops_its_oldest_exchanges_and_keeps_the_system_message():
    tokenizer = Tokenizer.train_char([RENDERED + "0123456789"])
    model = tiny_gpt(vocab_size=tokenizer.vocab_size, max_seq_len=256)  # prompts of at most 128 characters
    dialogue = Dialogue(model, tokenizer, system="Be brief.")
    for n in range(5):
        dialogue.messages += [{"role": "user", "content": f"Hi {n}"}, {"role": "assistant", "content": "Hello."}]
    dialogue.messages.append({"role": "user", "content": "Bye"})
    kept = [dialogue.messages[0], *dialogue.messages[-3:]]  # system, the last exchange, the question
    one_more = [dialogue.messages[0], *dialogue.messages[-5:]]
    assert len(render_chat(kept)) <= 128 < len(render_chat(one_more))
    assert dialogue._prompt() == render_chat(kept) and dialogue.messages == kept
    dialogue.reset()
    assert dialogue.messages == [{"role": "system", "content": "Be brief."}]
    out = []
    assert run_dialogue(dialogue, ["Hi " * 50], out.append) == 0  # said, not answered, and not kept
    assert "message is too long" in out[0] and dialogue.messages == [{"role": "system", "content": "Be brief."}]


def _conversations(n, seed):
    """1-3 exchanges each: the user names a cat by its color, the assistant answers the color."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = []
        for _ in range(rng.randint(1, 3)):
            color = rng.choice(COLORS)
            messages += [{"role": "user", "content": f"the {color} cat"}, {"role": "assistant", "content": color}]
        out.append({"messages": messages})
    return out


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, one_thread):
    d = tmp_path_factory.mktemp("chat")
    tiny_checkpoint(d / "base", family="gpt", max_seq_len=128)
    write_jsonl(d / "train.jsonl", _conversations(200, 0))
    write_jsonl(d / "dev.jsonl", _conversations(20, 1))
    argv = ["finetune", "--task", "chat", "--model", str(d / "base"), "--train", str(d / "train.jsonl"),
            "--eval", str(d / "dev.jsonl"), "--out", str(d / "chat"), "--max-steps", "100", "--batch-size", "16",
            "--lr", "1e-2", "--warmup", "5", "--eval-every", "50", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return d


def test_finetune_then_chat_answers_in_the_trained_format(chat_model, monkeypatch, capsys):
    report = json.loads((chat_model / "chat" / "eval" / "report.json").read_text())
    assert report["task"] == "chat" and report["token_accuracy"] > 0.8
    step = chat_model / "chat" / (chat_model / "chat" / "latest").read_text().strip()
    assert read_template(step) == DEFAULT_TEMPLATE  # saved beside the weights
    capsys.readouterr()
    lines = "the red cat\nthe blue cat\n/reset\nthe green cat\n/exit\nthe red cat\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["chat", str(chat_model / "chat"), "--temperature", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0::2] == ["> the red cat", "> the blue cat", "> /reset", "> the green cat", "> /exit"]  # then no more
    replies = out[1::2]
    assert replies[2] == "(conversation reset)"
    assert all(reply in COLORS for reply in replies[:2] + replies[3:]), replies  # one color, cut at the end marker
    assert replies[0] == "red"


def test_a_chat_model_is_served_and_generates_as_the_gpt_it_is(chat_model, capsys):
    """/v1/chat/completions renders with the checkpoint's own template and stops at its end marker; lmforge generate
    takes the chat checkpoint as a GPT."""
    from helpers import Running

    with Running(chat_model / "chat") as running:
        client = running.client()
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "the red cat"}], max_tokens=20, temperature=0
        )
        assert reply.choices[0].message.content == "red" and reply.choices[0].finish_reason == "stop"
    capsys.readouterr()
    assert main(["generate", str(chat_model / "chat"), "--prompt", "<|user|>", "--max-new-tokens", "5"]) == 0


@pytest.mark.parametrize(
    "line, why",
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"text": "hi"}', 'line 2: no "messages"'),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "line 2: no assistant message"),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "line 2: message 0 has role 'bot'"),
    ],
)
def test_bad_chat_data_is_one_line_naming_file_and_line(chat_model, tmp_path, capsys, line, why):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(_conversations(1, 0)[0]) + "\n" + line + "\n")
    argv = ["finetune", "--task", "chat", "--model", str(chat_model / "base"), "--train", str(data),
            "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data}, {why}" in err


def test_read_names_the_messages_column(tmp_path):
    data = tmp_path / "d.jsonl"
    write_jsonl(data, [{"turns": CONVERSATION}])
    (conversation,) = get_task("chat").read(data, Columns(text="turns"))
    assert conversation.messages == CONVERSATION and conversation.line == 1


def test_a_template_writes_the_special_tokens_it_is_given():
    template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert render_chat(messages, template, tokens={"bos_token": "<s>", "eos_token": "</s>"}) == "<s>hi</s>yo</s>"
