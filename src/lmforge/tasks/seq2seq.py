"""Sequence to sequence (translation, summarization, any text-to-text task): an encoder-decoder fine-tuned with
teacher forcing on source/target pairs, scored on generated text (sacreBLEU's BLEU and chrF, ROUGE).

The model is the pretrained encoder-decoder itself: Seq2SeqModel only puts it where a task's model keeps its
backbone, so the optimizer groups, checkpoints and the loader treat it as every other task's."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmforge.config import TaskConfig
from lmforge.data.labelled import IGNORE, Columns, Example
from lmforge.data.parallel import encode_sentences, read_pairs_file
from lmforge.data.sampler import pad_pairs
from lmforge.errors import LmforgeError
from lmforge.generation.seq2seq import generate_seq2seq
from lmforge.tasks.base import Task
from lmforge.tasks.generation_metrics import bleu_chrf, rouge
from lmforge.tokenizer import Tokenizer

SOURCE, TARGET = "source", "target"  # the default columns of a .tsv or .jsonl file of pairs


class Seq2SeqModel(nn.Module):
    """The encoder-decoder as a task's model: forward(input_ids, attention_mask, decoder_input_ids) -> logits."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids, attention_mask, decoder_input_ids) -> torch.Tensor:
        return self.backbone(input_ids, attention_mask, decoder_input_ids)


class Seq2Seq(Task):
    """--task seq2seq: the best checkpoint by BLEU on --eval; pairs from --text-column (source) and
    --label-column (target)."""

    name, metric = "seq2seq", "bleu"
    max_seq_len = 256
    class_labels = False
    generates = True
    num_beams = 4  # scoring decodes as lmforge translate does by default
    no_repeat_ngram_size = 0

    def read(self, path: Path, columns: Columns, labelled: bool = True) -> list[Example]:
        pairs = read_pairs_file(path, columns.text or SOURCE, columns.label or TARGET)
        return [Example(i + 1, a, None, b) for i, (a, b) in enumerate(zip(pairs.source, pairs.target, strict=True))]

    def labels(self, examples: list, path: str | Path) -> list[str]:
        return []  # text, not classes

    def check(self, examples: list, labels: list[str], path: str | Path) -> None:
        """Any target text is a valid one."""

    def setup(self, backbone: nn.Module, tokenizer: Tokenizer, task: TaskConfig) -> None:
        family = getattr(backbone, "family", None)
        if family != "t5":
            raise LmforgeError(
                f"--task {self.name} fine-tunes an encoder-decoder (t5 family), not a {family} model: give a T5 or "
                "a model trained with lmforge train --config transformer-mt"
            )
        cfg = backbone.cfg
        if (cfg.decoder_start_id, cfg.eos_id) != (tokenizer.special_id("pad"), tokenizer.special_id("sep")):
            raise LmforgeError(
                "this encoder-decoder's start and end ids are not its tokenizer's <pad> and </s>, which lmforge's "
                "batches use: fine-tune a model whose decoder starts with pad and ends with </s> (T5's convention)"
            )

    def encode(self, examples: list, tokenizer: Tokenizer, family: str, task: TaskConfig, labelled: bool) -> list:
        eos = tokenizer.special_id("sep")
        sources, _ = encode_sentences(tokenizer, [ex.text for ex in examples], eos, task.max_seq_len)
        targets, _ = encode_sentences(tokenizer, [ex.label or "" for ex in examples], eos, task.max_seq_len)
        return [
            {"input_ids": x, "token_type_ids": None, "label": y if labelled else IGNORE, "source": ex.text}
            for ex, x, y in zip(examples, sources, targets, strict=True)
        ]

    def collate(self, features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
        """Sources padded with pad (attention_mask), targets as labels (IGNORE where padded) and, shifted right
        after the start token (pad, as in T5), as decoder inputs."""
        return pad_pairs([(f["input_ids"], f["label"]) for f in features], pad_id, pad_id)

    def logits(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"])

    def build_head(self, backbone: nn.Module, task: TaskConfig) -> nn.Module:
        return Seq2SeqModel(backbone)

    def generate(self, model: nn.Module, tokenizer: Tokenizer, features: list[dict], batch_size: int, device) -> list:
        """The generated text of each feature's source, by beam search."""
        sources = [f["source"] for f in features]
        return generate_seq2seq(
            model.backbone, tokenizer, sources, num_beams=self.num_beams, batch_size=batch_size, device=device,
            no_repeat_ngram_size=self.no_repeat_ngram_size,
        )  # fmt: skip

    def score(self, task: TaskConfig, examples: list, features: list[dict], outputs: list) -> dict:
        references = [ex.label for ex in examples]
        return bleu_chrf(outputs, references) | rouge(outputs, references)

    def records(self, task: TaskConfig, examples: list, features: list[dict], outputs: list) -> list[dict]:
        return [{"source": ex.text, "output": text} for ex, text in zip(examples, outputs, strict=True)]

    def example(self, text: str, pair: str | None, n: int) -> Example:
        return Example(0, text)


class Summarization(Seq2Seq):
    """--task summarization: seq2seq kept by ROUGE-L, decoded with no repeated trigram (as lmforge summarize)."""

    name, metric = "summarization", "rougeL"
    max_seq_len = 512
    no_repeat_ngram_size = 3
