"""A conversation with a GPT (lmforge chat): the history rendered with the model's chat template for each reply,
the reply streamed and cut at the template's end-of-turn marker."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from lmforge.checkpoint.hub import resolve
from lmforge.checkpoint.loader import load, pretrained
from lmforge.errors import LmforgeError
from lmforge.generation.chat import read_template, render_chat, stop_strings
from lmforge.generation.text import check_sampling, generate_text
from lmforge.tokenizer import Tokenizer

RESET, EXIT = "/reset", "/exit"


def load_chat_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: str | None = None, compile: bool = False
) -> tuple[nn.Module, Tokenizer, str | None]:
    """A GPT to chat with (pretrained, or fine-tuned with --task chat), its tokenizer and its chat template (None:
    lmforge's default)."""
    loaded = load(path, device, family="gpt", dtype=dtype, compile=compile)
    model = pretrained(loaded, "chat").model  # a chat fine-tune is a GPT still; another fine-tune is refused
    return model, loaded.tokenizer, read_template(loaded.path or resolve(path))


class Dialogue:
    """The history of one conversation and the model that answers in it."""

    def __init__(
        self, model: nn.Module, tokenizer: Tokenizer, template: str | None = None, system: str | None = None,
        max_new_tokens: int = 200, **sampling,
    ):  # fmt: skip
        check_sampling(max_new_tokens, **sampling)
        self.model, self.tokenizer, self.template, self.system = model, tokenizer, template, system
        self.max_new_tokens, self.sampling = max_new_tokens, sampling
        self.stop, self.replies = stop_strings(template), 0
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """The model's answer to the user's text (streamed to on_text), both kept in the history."""
        self.messages.append({"role": "user", "content": text})
        sampling = dict(self.sampling)
        if sampling.get("seed") is not None:  # reproducible, yet not every reply drawn from the same random numbers
            sampling["seed"] += self.replies
        try:
            prompt = self._prompt()
        except LmforgeError:
            self.messages.pop()  # unanswerable: the conversation goes on without it
            raise
        answer = generate_text(self.model, self.tokenizer, prompt, self.max_new_tokens, self.stop, on_text, **sampling)
        self.messages.append({"role": "assistant", "content": answer.strip()})
        self.replies += 1
        return answer

    def _prompt(self) -> str:
        """The history rendered for the next reply; the oldest exchanges are dropped (the system message kept) until
        it fills at most half the context, leaving the other half for the reply."""
        room = self.model.cfg.max_seq_len // 2
        while True:
            prompt = render_chat(self.messages, self.template)
            if len(self.tokenizer.encode(prompt)) <= room:
                return prompt
            first = 1 if self.messages[0]["role"] == "system" else 0
            if len(self.messages) - first <= 1:
                raise LmforgeError(
                    f"the message is too long for the model: rendered, it exceeds half its context of "
                    f"{self.model.cfg.max_seq_len} tokens; write a shorter one (or a shorter --system)"
                )
            del self.messages[first : first + 2]  # the oldest user message and the reply to it


def run_dialogue(dialogue: Dialogue, lines: Iterable[str], write: Callable[[str], None], echo: bool = False) -> int:
    """Answers each line of the user (/reset forgets the conversation, /exit or the end of lines stops), writing
    the replies as they are generated; returns the number of replies. echo writes each user line first, so a
    transcript of piped input reads as a conversation."""
    replies = 0
    for line in lines:
        text = line.rstrip("\n")
        if echo:
            write(f"> {text}\n")
        if text.strip() == EXIT:
            break
        if text.strip() == RESET:
            dialogue.reset()
            write("(conversation reset)\n")
            continue
        if not text.strip():
            continue
        try:
            dialogue.reply(text, write)
        except LmforgeError as e:  # a message too long for the model: say so and go on
            write(f"({e})\n")
            continue
        write("\n")
        replies += 1
    return replies
