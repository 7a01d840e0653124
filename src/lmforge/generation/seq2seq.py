"""Text in, text out for an encoder-decoder (translation, summarization): many sources at once, batched by length,
each encoded once and decoded by beam search, greedily or by sampling."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from lmforge.atomic import write_text_atomic
from lmforge.data.parallel import encode_sentences, read_lines
from lmforge.errors import LmforgeError
from lmforge.generation.beam import banned_ngrams, seq2seq_beam_search
from lmforge.generation.decoding import next_token, process_logits
from lmforge.generation.detokenize import IncrementalDetokenizer
from lmforge.generation.text import check_sampling
from lmforge.tokenizer import Tokenizer


def check_seq2seq(loaded, verb: str = "lmforge translate"):
    """The encoder-decoder a loaded checkpoint holds (pretrained, or fine-tuned for seq2seq / summarization); any
    other model is refused, as the verbs that write text from a source (verb names the one asking) need one."""
    family = loaded.config.family
    if family != "t5":
        raise LmforgeError(
            f"{verb} needs an encoder-decoder (t5 family) checkpoint, not a {family} one: train one with "
            "lmforge train --config transformer-mt or import a Hugging Face T5"
        )
    if loaded.task is not None and loaded.task.task in ("seq2seq", "summarization"):
        return loaded.model.backbone
    if loaded.task is not None:
        raise LmforgeError(
            f"{loaded.path} is a fine-tuned {loaded.task.task} model: give a pretrained encoder-decoder checkpoint"
        )
    return loaded.model


def check_options(max_new_tokens: int | None = None, batch_size: int = 32, **sampling) -> None:
    """The generation settings, checked before a model loads; max_new_tokens None means what fits."""
    check_sampling(1 if max_new_tokens is None else max_new_tokens, **sampling)
    if batch_size < 1:
        raise LmforgeError(f"--batch-size must be at least 1, not {batch_size}")


def generate_seq2seq(
    model,
    tokenizer: Tokenizer,
    texts: list[str],
    *,
    num_beams: int = 4,
    max_new_tokens: int | None = None,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    early_stopping: bool = False,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_text: Callable[[str], None] | None = None,
) -> list[str]:
    """The output text of each source, in input order: beam search when num_beams > 1, greedy when temperature is 0,
    else sampling (seed makes it reproducible). Special tokens are left out of the text.

    Sources are batched by length (little padding) and each batch is encoded once. A source longer than the model's
    max_seq_len is cut to fit, as training cut them, with one warning on stderr saying how many were: refusing would
    lose a whole file's work to one long line. A blank source gives "" without running the model. max_new_tokens
    defaults to what fits (max_seq_len - 1); decoding stops earlier at eos. on_text streams the pieces of the text
    as they are decoded, for a single source with num_beams 1. The model must already be on device."""
    cfg = model.cfg
    room = cfg.max_seq_len - 1
    max_new_tokens = room if max_new_tokens is None else max_new_tokens
    check_options(
        max_new_tokens, batch_size, temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
        length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
    )  # fmt: skip
    if max_new_tokens > room:
        raise LmforgeError(
            f"--max-new-tokens {max_new_tokens} is more than the model's max_seq_len {cfg.max_seq_len} leaves: give "
            f"at most {room}"
        )
    real = [i for i, text in enumerate(texts) if text.strip()]
    if on_text is not None and (len(texts) != 1 or num_beams != 1):
        raise LmforgeError("streaming (on_text) needs a single source and num_beams 1")
    ids, cut = encode_sentences(tokenizer, [texts[i] for i in real], cfg.eos_id, cfg.max_seq_len)
    if cut:
        print(
            f"lmforge: warning: {cut} of {len(real)} sources were longer than the model's {cfg.max_seq_len} tokens "
            "and were cut to fit",
            file=sys.stderr,
        )
    drop = {cfg.decoder_start_id, cfg.eos_id, cfg.pad_id, *tokenizer.special_ids}
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    order = sorted(range(len(ids)), key=lambda j: len(ids[j]))
    outputs = [""] * len(texts)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), disable=not progress, unit="batch", file=sys.stderr):
            chunk = order[start : start + batch_size]
            input_ids, mask = _padded([ids[j] for j in chunk], cfg.pad_id, device)
            if num_beams > 1:
                rows = seq2seq_beam_search(
                    model, input_ids, mask, num_beams, max_new_tokens, length_penalty, early_stopping,
                    no_repeat_ngram_size, cfg.eos_id, cfg.pad_id,
                )[:, 1:].tolist()  # fmt: skip
            else:
                steps = _decode(model, input_ids, mask, max_new_tokens, temperature, top_k, top_p,
                                no_repeat_ngram_size, generator)  # fmt: skip
                if on_text is not None:
                    tokens = (int(token[0]) for token in steps)
                    outputs[real[chunk[0]]] = _stream_text(tokenizer, tokens, cfg.eos_id, drop, on_text)
                    continue
                rows = torch.stack(list(steps), dim=1).tolist()
            for j, row in zip(chunk, rows, strict=True):
                outputs[real[j]] = tokenizer.decode(_text_ids(row, cfg.eos_id, drop))
    finally:
        model.train(was_training)
    return outputs


def check_texts(texts: list[str], where: str) -> None:
    """Some source must hold text: a blank one among others keeps its place as a blank output, but nothing at all to
    translate is a mistake (where names the flag or file)."""
    if not any(text.strip() for text in texts):
        what = "is empty" if where.startswith("--") else "holds no text (it is empty or blank)"
        raise LmforgeError(f"{where} {what}: give the text to translate or summarize, one source a line")


def generate_seq2seq_file(model, tokenizer: Tokenizer, source: str | Path, output: str | Path, **options) -> int:
    """Writes output (atomically, as_lines): line i is the output of line i of source, a blank line for a blank one.
    Returns the number of lines; options as in generate_seq2seq."""
    lines = read_lines(Path(source))
    check_texts(lines, str(source))
    outputs = generate_seq2seq(model, tokenizer, lines, **options)
    write_text_atomic(Path(output), as_lines(outputs))
    return len(outputs)


def as_lines(texts: list[str]) -> str:
    """The texts one a line, a newline within one made a space, so line i stays text i."""
    return "".join(" ".join(text.splitlines()) + "\n" for text in texts)


def _padded(rows: list[list[int]], pad_id: int, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ids (B, S) padded with pad_id on the right, and the attention mask (B, S), 1 for real tokens."""
    width = max(map(len, rows))
    input_ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    return input_ids, mask


@torch.inference_mode()
def _decode(
    model, input_ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
    top_p: float | None, no_repeat_ngram_size: int, generator: torch.Generator | None,
) -> Iterator[torch.Tensor]:  # fmt: skip
    """Yields the next token ids (B,) one step at a time (greedy when temperature is 0, else sampled); the encoder
    runs once and the decoder's cache makes each step one token's forward. A row that has ended gets pad_id."""
    cfg = model.cfg
    b = input_ids.size(0)
    memory = model.encode(input_ids, mask)
    cache = model.new_cache(b, max_new_tokens)
    seq = torch.full((b, 1), cfg.decoder_start_id, dtype=torch.long, device=input_ids.device)
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    greedy = temperature == 0
    for _ in range(max_new_tokens):
        logits = model.decode(seq[:, -1:], memory, mask, cache)[:, -1].float()
        if no_repeat_ngram_size > 0:
            for row, banned in enumerate(banned_ngrams(seq, no_repeat_ngram_size)):
                logits[row, banned] = float("-inf")
        if not greedy:
            logits = process_logits(logits, None, temperature, top_k, top_p)
        token = next_token(logits, greedy, generator).masked_fill(done, cfg.pad_id)
        done |= token == cfg.eos_id
        yield token
        if bool(done.all()):
            return
        seq = torch.cat((seq, token[:, None]), dim=1)


def _text_ids(row: list[int], eos_id: int, drop: set[int]) -> list[int]:
    """The ids of a generated row that make its text: up to eos_id, special tokens left out."""
    end = row.index(eos_id) if eos_id in row else len(row)
    return [t for t in row[:end] if t not in drop]


def _stream_text(
    tokenizer: Tokenizer, tokens: Iterator[int], eos_id: int, drop: set[int], on_text: Callable[[str], None]
) -> str:
    """The text of one source's tokens, each piece passed to on_text as soon as it is final."""
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = []
    for token in tokens:
        if token == eos_id:
            break
        if token not in drop:
            pieces.append(detokenizer.add(token))
            if pieces[-1]:
                on_text(pieces[-1])
    pieces.append(detokenizer.flush())
    if pieces[-1]:
        on_text(pieces[-1])
    return "".join(pieces)
