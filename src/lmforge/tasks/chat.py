"""Chat fine-tuning (--task chat): a GPT learns to answer in conversations rendered with the chat template. The loss
is next-token cross-entropy on the assistant's replies only (each through its end-of-turn marker): the user's and
system's turns are context, not text to imitate. Scored by the assistant tokens' accuracy, loss and perplexity."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.config import TaskConfig
from lmforge.data.labelled import IGNORE, Columns, collate
from lmforge.data.records import iter_jsonl
from lmforge.errors import LmforgeError
from lmforge.generation.chat import DEFAULT_TEMPLATE, TEMPLATE_FILE, assistant_spans, check_messages, stop_strings
from lmforge.tasks.base import Task
from lmforge.tokenizer import Tokenizer

MESSAGES = "messages"  # the JSON key of a record's conversation unless --text-column names another


@dataclass
class Conversation:
    line: int  # in its JSONL file, for errors
    messages: list[dict]


class ChatModel(nn.Module):
    """The GPT itself as a task's model (its language-model head is the task's head)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.backbone(input_ids, attention_mask)  # (B, T, vocab_size)


class Chat(Task):
    name, metric = "chat", "token_accuracy"
    max_seq_len = 512
    class_labels = False
    language_model = True
    template = DEFAULT_TEMPLATE  # what the model learns to read and write, saved with it as chat_template.jinja

    def read(self, path: Path, columns: Columns, labelled: bool = True) -> list[Conversation]:
        key, conversations = columns.text or MESSAGES, []

        def fail(line: int, why: str) -> None:
            raise LmforgeError(f"{path}, line {line}: {why}")

        for line, record in iter_jsonl(path, fail):
            if not isinstance(record, dict) or key not in record:
                fail(line, f'no "{key}": give each line as {{"{key}": [{{"role": ..., "content": ...}}, ...]}}')
            try:
                check_messages(record[key])
            except LmforgeError as e:
                fail(line, str(e))
            if labelled and not any(m["role"] == "assistant" for m in record[key]):
                fail(line, "no assistant message: the model learns from the assistant's replies; give at least one")
            conversations.append(Conversation(line, record[key]))
        if not conversations:
            raise LmforgeError(f"{path} holds no conversations: give one JSON object with {key!r} per line")
        return conversations

    def labels(self, examples: list, path: str | Path) -> list[str]:
        return []  # text, not classes

    def check(self, examples: list, labels: list[str], path: str | Path) -> None:
        """Any conversation is a valid one."""

    def setup(self, backbone: nn.Module, tokenizer: Tokenizer, task: TaskConfig) -> None:
        family = getattr(backbone, "family", None)
        if family != "gpt":
            raise LmforgeError(f"--task chat fine-tunes a GPT (a causal language model), not a {family} model")
        for marker in stop_strings(self.template):
            if tokenizer.decode(tokenizer.encode(marker)) != marker:
                raise LmforgeError(
                    f"the tokenizer cannot write the end-of-turn marker {marker!r} (a char tokenizer lacks its "
                    "characters?): fine-tune a model whose tokenizer knows them, such as a byte-level BPE one"
                )

    def files(self) -> dict[str, str]:
        return {TEMPLATE_FILE: self.template}

    def encode(self, examples: list, tokenizer: Tokenizer, family: str, task: TaskConfig, labelled: bool) -> list:
        """input_ids of the rendered conversation; label, the token itself where it belongs to an assistant reply
        and IGNORE elsewhere (collate moves each label to the position that predicts it)."""
        rendered = [assistant_spans(ex.messages, self.template) for ex in examples]
        encodings = tokenizer.backend.encode_batch([text for text, _ in rendered], add_special_tokens=False)
        features = []
        for (_, spans), encoding in zip(rendered, encodings, strict=True):
            ids, offsets = encoding.ids[: task.max_seq_len], encoding.offsets[: task.max_seq_len]
            label = [i if any(a < end and start < b for start, end in spans) else IGNORE
                     for i, (a, b) in zip(ids, offsets, strict=True)]  # fmt: skip
            features.append({"input_ids": ids, "token_type_ids": None, "label": label})
        if not any(x != IGNORE for f in features for x in f["label"]):
            raise LmforgeError(
                f"no assistant reply begins within the first {task.max_seq_len} tokens of any conversation: raise "
                "--max-seq-len (up to the model's context) or shorten the conversations"
            )
        return features

    def collate(self, features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        """As every task's, with the labels moved one position left: the logits at t predict token t + 1."""
        batch = collate(features, pad_id)
        batch["labels"] = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)
        return batch

    def build_head(self, backbone: nn.Module, task: TaskConfig) -> nn.Module:
        return ChatModel(backbone)

    def gather(self, probs: torch.Tensor, feature: dict) -> torch.Tensor:
        """Per assistant token: the probability the model gave it, and whether it was the likeliest (n, 2)."""
        targets = torch.tensor(feature["label"][1:])
        rows, keep = probs[: len(targets)], targets != IGNORE
        rows, targets = rows[keep], targets[keep]
        p = rows.gather(1, targets[:, None]).squeeze(1)
        return torch.stack([p, (rows.argmax(-1) == targets).float()], 1)

    def score(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> dict:
        return _token_scores(torch.cat(probs))

    def records(self, task: TaskConfig, examples: list, features: list[dict], probs: list[torch.Tensor]) -> list:
        return [{MESSAGES: ex.messages} | _token_scores(p) for ex, p in zip(examples, probs, strict=True)]

    def example(self, text: str, pair: str | None, n: int):
        raise LmforgeError("a chat model answers in lmforge chat CHECKPOINT; predict scores conversations (--input)")


def _token_scores(scored: torch.Tensor) -> dict:
    """Accuracy, mean loss and perplexity of assistant tokens from gather's (probability, correct) rows."""
    if len(scored) == 0:
        return {"token_accuracy": 0.0, "loss": math.inf, "perplexity": math.inf, "tokens": 0}
    loss = float(-scored[:, 0].clamp_min(1e-12).log().mean())
    return {"token_accuracy": float(scored[:, 1].mean()), "loss": loss, "perplexity": math.exp(loss),
            "tokens": len(scored)}  # fmt: skip
