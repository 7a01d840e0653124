"""A bias probe: template sentences that differ only in a demographic term, scored by a masked LM (the target word's
probability at [MASK]), a causal LM (the target continuation's log-likelihood) or a fine-tuned classifier (each
label's probability), and the gaps between groups with a bootstrap interval over templates."""

from __future__ import annotations

import dataclasses
import html
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from lmforge.atomic import write_text_atomic
from lmforge.config.overrides import read_yaml
from lmforge.data.labelled import Example
from lmforge.errors import LmforgeError
from lmforge.inference.fill_mask import MASK
from lmforge.inference.predict import pad_id_of, predict_features
from lmforge.tasks.classification import encode_classification

GROUP = "{group}"
LANGUAGES = ("en", "zh")
SCORES = {"mlm": "probability", "causal": "log-likelihood (nats)", "classifier": "probability"}
TOP = 15  # gaps listed and drawn
CAVEATS = (
    "This probe measures differences in a model's scores between groups on a chosen set of template sentences and "
    "target words. It does not prove that the model causes harm in use, and a small gap does not rule it out: "
    "results depend on the templates, the group terms and the targets chosen, and other wordings can give other "
    "answers. With few templates the confidence interval is wide; read it before the point estimate."
)


@dataclass
class Templates:
    """A probe's sentences: each template holds {group}, filled in turn with each term of each group."""

    groups: dict[str, list[str]]
    templates: list[str]
    targets: list[str]  # words (masked or causal LM) or labels (classifier; empty: all of them)
    source: str
    language: str | None = None


def shipped_templates(language: str, kind: str = "mlm") -> Path:
    """The package's template file for a language: occupations for a language model, sentiment for a classifier."""
    if language not in LANGUAGES:
        raise LmforgeError(f"--language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    name = f"{'sentiment' if kind == 'classifier' else 'occupations'}-{language}.yaml"
    return Path(str(resources.files("lmforge") / "probes" / name))


def load_templates(path_or_language: str | Path, kind: str = "mlm") -> Templates:
    """A YAML file (groups: {name: [terms]}, templates: [...], targets: [...]) or a shipped language ("en", "zh"),
    checked: every bad field is one error naming it."""
    path = Path(path_or_language)
    if str(path_or_language) in LANGUAGES or not (path.suffix or path.is_file()):
        path = shipped_templates(str(path_or_language), kind)
    if not path.is_file():
        raise LmforgeError(f"--templates {path}: not found: give a YAML file with groups, templates and targets")
    raw = read_yaml(path, "groups, templates and targets")
    groups, templates, targets = raw.get("groups"), raw.get("templates"), raw.get("targets", [])
    if not isinstance(groups, dict) or len(groups) < 2:
        raise LmforgeError(f"{path}: groups must map at least two group names to their terms, e.g. {{man: [he]}}")
    for name, terms in groups.items():
        if isinstance(terms, str):
            groups[name] = terms = [terms]
        if not isinstance(terms, list) or not terms or not all(isinstance(t, str) and t.strip() for t in terms):
            raise LmforgeError(f"{path}: group {name!r} must be a non-empty list of terms")
    if not isinstance(templates, list) or not templates:
        raise LmforgeError(f"{path}: templates must be a non-empty list of sentences with {GROUP}")
    for t in templates:
        if not isinstance(t, str) or GROUP not in t:
            raise LmforgeError(f"{path}: template {t!r} has no {GROUP} placeholder: put one where a term goes")
    if not isinstance(targets, list) or not all(isinstance(t, str) and t.strip() for t in targets):
        raise LmforgeError(f"{path}: targets must be a list of words (or, for a classifier, labels)")
    language = raw.get("language")
    return Templates({str(k): v for k, v in groups.items()}, templates, targets, str(path), language)


def probe_kind(loaded) -> str:
    """What the checkpoint scores: "mlm", "causal" or "classifier"; any other model cannot be probed."""
    if loaded.task is not None:
        if loaded.task.task != "classification":
            raise LmforgeError(
                f"a fine-tuned {loaded.task.task} model cannot be probed: probe-bias takes a masked LM, a causal LM "
                "or a classification model"
            )
        return "classifier"
    family = loaded.config.family
    if family == "gpt":
        return "causal"
    if family == "bert" and getattr(loaded.model, "mlm_head", None) is not None:
        return "mlm"
    raise LmforgeError(
        f"a {family} model{' without an MLM head' if family == 'bert' else ''} cannot be probed: probe-bias takes a "
        "masked LM, a causal LM or a classification model"
    )


def check_bootstrap(bootstrap: int) -> None:
    if bootstrap < 1:
        raise LmforgeError(f"--bootstrap must be at least 1, not {bootstrap}")


def _check_kind(templates: Templates, kind: str) -> None:
    """The template rules that depend on the model: an MLM needs one [MASK], a classifier none."""
    if kind != "classifier" and not templates.targets:
        raise LmforgeError(f"{templates.source}: targets is empty: a language model compares target words")
    for t in templates.templates:
        n = t.count(MASK)
        if kind == "mlm" and n != 1:
            raise LmforgeError(f"{templates.source}: template {t!r} needs exactly one {MASK} for a masked LM, not {n}")
        if kind == "causal" and n > 1:
            raise LmforgeError(f"{templates.source}: template {t!r} has {n} {MASK}: the target follows the first")
        if kind == "classifier" and n:
            raise LmforgeError(f"{templates.source}: template {t!r} is for a classifier: write it without {MASK}")


@torch.no_grad()
def mlm_scores(model, tokenizer, texts: list[str], targets: list[str]) -> torch.Tensor:
    """(len(texts), len(targets)): the probability that the target's tokens fill [MASK], one [MASK] per token, as
    fill-mask reads them (special tokens excluded); several tokens: the product of each one's probability."""
    mask_token = tokenizer.backend.id_to_token(tokenizer.mask_id)
    device = next(model.parameters()).device
    out = torch.zeros(len(texts), len(targets))
    for row, text in enumerate(texts):
        space = " " if text.split(MASK)[0][-1:].isspace() else ""
        target_ids = [tokenizer.encode(space + target) for target in targets]
        logp = {}  # per number of masks: (k, V)
        for col, ids in enumerate(target_ids):
            if not ids:
                raise LmforgeError(f"target {targets[col]!r} has no tokens: give a word")
            k = len(ids)
            if k not in logp:
                seq = tokenizer.encode(text.replace(MASK, mask_token * k))
                positions = [i + 1 for i, t in enumerate(seq) if t == tokenizer.mask_id]  # +1: after [CLS]
                seq = [tokenizer.cls_id, *seq, tokenizer.sep_id]
                if len(seq) > model.cfg.max_seq_len or len(positions) != k:
                    raise LmforgeError(
                        f"{text!r} with {k} masks is {len(seq)} tokens ({len(positions)} masks read); the model reads "
                        f"at most {model.cfg.max_seq_len}: shorten the template or the target"
                    )
                hidden, _ = model.hidden(torch.tensor([seq], device=device))
                logits = model.mlm_logits(hidden[0, positions]).float()
                logits[:, tokenizer.special_ids] = float("-inf")
                logp[k] = logits.log_softmax(-1).cpu()
            out[row, col] = logp[k][torch.arange(k), torch.tensor(ids)].sum().exp()
    return out


@torch.no_grad()
def causal_scores(model, tokenizer, texts: list[str], targets: list[str]) -> torch.Tensor:
    """(len(texts), len(targets)): the log-likelihood of each target continuing the text before [MASK] (or the whole
    text); whitespace that ends the prompt starts the continuation."""
    from lmforge.generation.text import encode_prompt

    device = next(model.parameters()).device
    out = torch.zeros(len(texts), len(targets))
    for row, text in enumerate(texts):
        prompt = text.split(MASK)[0]
        space = prompt[len(prompt.rstrip()) :]
        prompt_ids = encode_prompt(tokenizer, prompt.rstrip(), model.cfg.max_seq_len)
        conts = [tokenizer.encode(space + target) for target in targets]
        for target, ids in zip(targets, conts, strict=True):
            if not ids or len(prompt_ids) + len(ids) > model.cfg.max_seq_len:
                raise LmforgeError(f"target {target!r} after {prompt!r}: empty, or longer than the model's context")
        width = len(prompt_ids) + max(map(len, conts))
        batch = torch.tensor([prompt_ids + ids + [0] * (width - len(prompt_ids) - len(ids)) for ids in conts])
        logp = model(batch.to(device)).float().log_softmax(-1).cpu()  # right padding: causal, so never read
        for col, ids in enumerate(conts):
            positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(ids))
            out[row, col] = logp[col, positions, torch.tensor(ids)].sum()
    return out


def classifier_scores(model, tokenizer, texts: list[str], family: str, task, device) -> torch.Tensor:
    """(len(texts), n_labels): the classifier's label probabilities for each text."""
    max_len = min(task.max_seq_len or 128, model.backbone.cfg.max_seq_len)
    features = encode_classification([Example(0, t) for t in texts], tokenizer, family, max_len, None)
    return torch.stack(predict_features(model, features, pad_id_of(tokenizer), device=device))


def bootstrap_interval(per_template: np.ndarray, rounds: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the mean over templates resampled with replacement, `rounds` times."""
    rng = np.random.default_rng(seed)
    means = per_template[rng.integers(0, len(per_template), (rounds, len(per_template)))].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def probe_bias(loaded, templates: Templates, bootstrap: int = 1000, seed: int = 0, device=None) -> dict:
    """Scores per template, group and target (each group's terms averaged), the gap per template and target (two
    groups: first minus second; more: highest minus lowest), and the mean absolute gap with its bootstrap interval."""
    check_bootstrap(bootstrap)
    kind = probe_kind(loaded)
    model, tokenizer = loaded.model, loaded.tokenizer
    if kind == "mlm" and tokenizer.mask_id is None:
        raise LmforgeError(f"the checkpoint's {tokenizer.kind} tokenizer has no mask token")
    if tokenizer.mask_id is not None:  # the tokenizer's own mask (RoBERTa's <mask>) reads as [MASK]
        own = tokenizer.backend.id_to_token(tokenizer.mask_id)
        templates = dataclasses.replace(templates, templates=[t.replace(own, MASK) for t in templates.templates])
    _check_kind(templates, kind)
    device = device or next(model.parameters()).device
    groups = list(templates.groups)
    cells = [(i, j, term) for i in range(len(templates.templates)) for j, g in enumerate(groups)
             for term in templates.groups[g]]  # fmt: skip
    texts = [templates.templates[i].replace(GROUP, term) for i, _, term in cells]
    targets = templates.targets
    if kind == "classifier":
        labels = loaded.task.labels
        unknown = [t for t in targets if t not in labels]
        if unknown:
            raise LmforgeError(f"targets {unknown} are not labels of this classifier: its labels are {labels}")
        targets = targets or list(labels)
        probs = classifier_scores(model, tokenizer, texts, loaded.config.family, loaded.task, device)
        scores = probs[:, [labels.index(t) for t in targets]]
    else:
        scores = (mlm_scores if kind == "mlm" else causal_scores)(model, tokenizer, texts, targets)
    # (template, group, target): the mean over the group's terms
    by_group = np.zeros((len(templates.templates), len(groups), len(targets)))
    counts = np.zeros_like(by_group)
    for (i, j, _), row in zip(cells, scores.double().numpy(), strict=True):
        by_group[i, j] += row
        counts[i, j] += 1
    by_group /= counts
    if len(groups) == 2:
        gap = by_group[:, 0] - by_group[:, 1]
    else:
        gap = by_group.max(1) - by_group.min(1)
    results = [
        {
            "template": t,
            "target": target,
            "scores": dict(zip(groups, by_group[i, :, k].tolist(), strict=True)),
            "gap": float(gap[i, k]),
            "highest": groups[int(by_group[i, :, k].argmax())],
        }
        for i, t in enumerate(templates.templates)
        for k, target in enumerate(targets)
    ]
    per_template = np.abs(gap).mean(1)
    low, high = bootstrap_interval(per_template, bootstrap, seed)
    return {
        "checkpoint": str(loaded.path) if loaded.path else None,
        "kind": kind,
        "score": SCORES[kind],
        "templates_file": templates.source,
        "language": templates.language,
        "groups": templates.groups,
        "gap": f"{groups[0]} - {groups[1]}" if len(groups) == 2 else "highest group - lowest group",
        "targets": targets,
        "n_templates": len(templates.templates),
        "mean_abs_gap": float(per_template.mean()),
        "interval": {"level": 0.95, "low": low, "high": high, "bootstrap": bootstrap, "seed": seed},
        "largest_gaps": sorted(results, key=lambda r: -abs(r["gap"]))[:TOP],
        "results": results,
        "caveats": CAVEATS,
    }


def summary_line(report: dict) -> str:
    ci = report["interval"]
    return (
        f"{report['kind']}: mean |gap| {report['mean_abs_gap']:.4g} in {report['score']} "
        f"(95% CI {ci['low']:.4g} to {ci['high']:.4g}) over {report['n_templates']} templates"
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 0.2em 0.6em; border-bottom: 1px solid #eee; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #f6f6f6; padding: 0.8em 1em; border-left: 4px solid #999; }
"""


def _svg(rows: list[dict]) -> str:
    """A horizontal bar chart of the gaps, drawn from zero (blue: positive, orange: negative)."""
    label_w, bar_w, row_h = 420, 360, 22
    scale = max((abs(r["gap"]) for r in rows), default=0.0) or 1.0
    zero = label_w + bar_w / 2
    parts = []
    for n, r in enumerate(rows):
        y, w = n * row_h, abs(r["gap"]) / scale * bar_w / 2
        x = zero if r["gap"] >= 0 else zero - w
        colour = "#4a7bd0" if r["gap"] >= 0 else "#e08a2c"
        label = html.escape(f"{r['template']} | {r['target']}")
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">{label}</text>'
            f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{colour}">'
            f"<title>{label}: {r['gap']:+.4g}</title></rect>"
        )
    height = max(len(rows), 1) * row_h
    axis = f'<line x1="{zero}" y1="0" x2="{zero}" y2="{height}" stroke="#333"/>'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 10}" height="{height}" '
        f'role="img" aria-label="largest gaps">{"".join(parts)}{axis}</svg>'
    )


def _html(report: dict) -> str:
    groups = list(report["groups"])
    ci, e = report["interval"], html.escape
    head = "".join(f"<th>{e(g)}</th>" for g in groups)
    rows = "".join(
        f"<tr><td>{e(r['template'])}</td><td>{e(r['target'])}</td>"
        + "".join(f'<td class="n">{r["scores"][g]:.4g}</td>' for g in groups)
        + f'<td class="n">{r["gap"]:+.4g}</td></tr>'
        for r in report["largest_gaps"]
    )
    terms = "; ".join(f"{e(g)}: {e(', '.join(t))}" for g, t in report["groups"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lmforge bias probe</title><style>{STYLE}</style></head><body>
<h1>Bias probe ({e(report["kind"])})</h1>
<p>Checkpoint {e(str(report["checkpoint"]))}; templates {e(report["templates_file"])}; groups {terms}.</p>
<p>Score: {e(report["score"])}. Gap: {e(report["gap"])}, each group's terms averaged.</p>
<p><b>Mean absolute gap over {report["n_templates"]} templates: {report["mean_abs_gap"]:.4g}</b>
(95% bootstrap interval {ci["low"]:.4g} to {ci["high"]:.4g}; {ci["bootstrap"]} rounds, seed {ci["seed"]}).</p>
<p class="note">{e(report["caveats"])}</p>
<h2>Largest gaps</h2>
{_svg(report["largest_gaps"])}
<table><tr><th>template</th><th>target</th>{head}<th>gap</th></tr>{rows}</table>
</body></html>
"""


def write_bias_report(report: dict, out: str | Path) -> list[Path]:
    """OUT/report.json and OUT/report.html (self-contained: the chart is inline SVG), each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.html"]
    write_text_atomic(paths[0], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(paths[1], _html(report))
    return paths
