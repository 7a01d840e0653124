"""Converts the Chit Chat Challenge dialogues (pip install chitchat-dataset; MIT, 7,168 open-domain conversations
between two people) to lmforge's chat format: train.jsonl and dev.jsonl of {"messages": [{role, content}, ...]},
the first speaker as the user and the second as the assistant, and pretrain.txt, the same conversations rendered
with lmforge's chat template, to pretrain a small GPT on before `lmforge finetune --task chat`.

In the data set a turn is one or more short messages by the same person; they are joined with spaces. Conversations
are cut before the first turn longer than --max-chars (so a small context holds a few exchanges) and after
--max-turns turns, and end with an assistant turn (a last user turn has no reply to learn).
Usage: python examples/chat/chitchat_to_jsonl.py --out DIR [--max-turns 8] [--max-chars 160] [--dev 200]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import chitchat_dataset

from lmforge.generation.chat import render_chat

ROLES = ("user", "assistant")


def to_messages(conversation: dict, max_turns: int, max_chars: int) -> list[dict]:
    """One chitchat conversation as alternating user/assistant messages, cut as the module says."""
    messages = []
    for i, turn in enumerate(conversation["messages"][:max_turns]):
        text = re.sub(r"\s+", " ", " ".join(u["text"] for u in turn)).strip()
        if not text or len(text) > max_chars:
            break
        messages.append({"role": ROLES[i % 2], "content": text})
    return messages[: len(messages) // 2 * 2]  # ends with the assistant's turn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--max-chars", type=int, default=160)
    parser.add_argument("--dev", type=int, default=200, help="conversations held out for evaluation")
    args = parser.parse_args()

    data = chitchat_dataset.Dataset()  # {conversation id: {"messages": [[{"text", "sender", ...}, ...], ...]}}
    conversations = [to_messages(data[key], args.max_turns, args.max_chars) for key in sorted(data)]
    conversations = [c for c in conversations if c]
    args.out.mkdir(parents=True, exist_ok=True)
    splits = {"dev.jsonl": conversations[: args.dev], "train.jsonl": conversations[args.dev :]}
    for name, split in splits.items():
        lines = (json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in split)
        (args.out / name).write_text("".join(lines), encoding="utf-8")
    rendered = (render_chat(c, add_generation_prompt=False) + "\n" for c in splits["train.jsonl"])
    (args.out / "pretrain.txt").write_text("".join(rendered), encoding="utf-8")
    turns = sum(len(c) for c in conversations)
    print(f"wrote {len(conversations)} conversations ({turns} turns) to {args.out}: " + ", ".join(splits))


if __name__ == "__main__":
    main()
