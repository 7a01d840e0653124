"""Chat templates: a conversation (a list of {role, content} messages) as the one text a causal LM reads, in the
Jinja format Hugging Face stores in tokenizer_config.json, rendered in a sandbox as transformers renders it.

lmforge's own template marks each turn with its role and closes it with END:

    <|system|>
    You are brief.<|end|>
    <|user|>
    Hi!<|end|>
    <|assistant|>
    Hello.<|end|>

so a prompt ends with "<|assistant|>\\n" and generation stops at "<|end|>". The markers are plain text (no new token
ids), which a char or BPE GPT learns in fine-tuning like any other text."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from jinja2 import Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmforge.atomic import write_text_atomic
from lmforge.errors import LmforgeError

END = "<|end|>"
ROLES = ("system", "user", "assistant")
TEMPLATE_FILE = "chat_template.jinja"  # beside an lmforge checkpoint's weights (recent transformers saves it too)
DEFAULT_TEMPLATE = """\
{% for message in messages %}
<|{{ message['role'] }}|>
{{ message['content'] }}<|end|>
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% endif %}
"""
# end-of-turn markers of common templates (ours, ChatML, Llama 3, Gemma, Llama 2 / Mistral): generation stops at any
# the template writes
END_MARKERS = (END, "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>")


def _raise(message: str) -> None:
    raise LmforgeError(f"the chat template refused the conversation: {message}")


# transformers' settings, so a Hugging Face template renders here as it does there
_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
_ENV.globals["raise_exception"] = _raise


def check_messages(messages: object) -> None:
    """One line for each way a conversation can be malformed, naming the message at fault."""
    if not isinstance(messages, list):
        raise LmforgeError(f"messages must be a list of {{role, content}} objects, not {type(messages).__name__}")
    if not messages:
        raise LmforgeError("messages is empty: give at least one {role, content} message")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
            raise LmforgeError(f"message {i} must be an object with keys role and content, not {message!r:.80}")
        if message["role"] not in ROLES:
            raise LmforgeError(f"message {i} has role {message['role']!r:.40}: use one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise LmforgeError(f"message {i}'s content must be a string, not {type(message['content']).__name__}")


def render_chat(
    messages: list[dict], template: str | None = None, add_generation_prompt: bool = True, tokens: dict | None = None
) -> str:
    """The conversation as the model reads it; with add_generation_prompt, followed by the opening of the
    assistant's turn, so the model's continuation is its reply. template None is DEFAULT_TEMPLATE. tokens: the
    special tokens a Hugging Face template may write (bos_token, eos_token), as transformers passes them."""
    check_messages(messages)
    return _render(messages, template, add_generation_prompt, tokens or {})


@lru_cache(maxsize=8)
def _compiled(template: str) -> Template:
    return _ENV.from_string(template)  # compiling costs a hundred renderings


def _render(messages: list[dict], template: str | None, add_generation_prompt: bool, tokens: dict | None = None) -> str:
    try:
        return _compiled(template or DEFAULT_TEMPLATE).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **(tokens or {})
        )
    except TemplateError as e:  # a syntax error, or the sandbox refusing an attribute (SecurityError)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LmforgeError(f"the chat template cannot be rendered: {reason}") from None


def assistant_spans(messages: list[dict], template: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant replies, each through its end-of-turn
    marker: what chat fine-tuning learns to write. Found by rendering the conversation turn by turn, so any template
    whose renderings of a conversation's beginnings are beginnings of its whole rendering serves."""
    check_messages(messages)
    text, stops, spans = _render(messages, template, False), stop_strings(template), []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, turn = _render(messages[:i], template, True), _render(messages[: i + 1], template, False)
        start = len(prompt)
        if not (text.startswith(prompt) and text.startswith(turn)):
            raise LmforgeError(
                "the chat template does not render a conversation turn by turn (a beginning of the conversation "
                "renders differently inside the whole): chat fine-tuning cannot find the assistant's replies"
            )
        ends = [at + len(s) for s in stops if (at := turn.find(s, start)) >= 0]
        spans.append((start, min(ends, default=len(turn))))
    return text, spans


def stop_strings(template: str | None = None) -> list[str]:
    """The end-of-turn markers the template writes: a reply is cut before the first one."""
    return [marker for marker in END_MARKERS if marker in (template or DEFAULT_TEMPLATE)]


def read_template(path: str | Path) -> str | None:
    """The chat template stored with a model: chat_template.jinja (lmforge checkpoints, recent transformers), else
    tokenizer_config.json's chat_template (a string, or a list of named ones: "default" is taken); None if neither."""
    path = Path(path)
    if (path / TEMPLATE_FILE).is_file():
        return (path / TEMPLATE_FILE).read_text(encoding="utf-8")
    config = path / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, AttributeError):
        raise LmforgeError(f"{config} is not a JSON object: fix or remove the file") from None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise LmforgeError(f"{config}: chat_template must be a string or a list of named templates")
    return template


def write_template(path: str | Path, template: str) -> Path:
    """Stores the template with the model in directory path (written whole or not at all)."""
    out = Path(path) / TEMPLATE_FILE
    write_text_atomic(out, template)
    return out
