"""Prompts of the zero-shot family: one yes/no question per (text, label) for an instruct LLM.

Features
- A default prompt per dataset, or ``model.template`` (``{text}``, ``{label}``, ``{examples}``), in the
  tokenizer's chat template; readable label phrases.
- Answer tokens: the single-token yes/no variants, kept in pairs.
- Few-shot examples per label (seeded, about half positive).

Limits
- The text is tokenised on its own and spliced in: token boundaries at the quotes may differ.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass

import numpy as np

from emotion_core.errors import ConfigError

TEXT_MARK = "\x00TEXT\x00"
"""Placeholder for the text while the prompt is rendered; the prompt is split around it."""

FIELDS = {"text", "label", "examples"}

SYSTEM = "You recognise the emotions expressed in short texts. Answer only yes or no."


@dataclass(frozen=True)
class PromptSpec:
    """A dataset's prompt: the user message (``{examples}``, ``{text}``, ``{label}``) and one few-shot example line."""

    template: str
    example: str  # fields {text}, {label}, {answer}
    examples_header: str = "Examples:\n"
    examples_footer: str = "Now the question:\n"
    system: str = SYSTEM


DEFAULTS: dict[str, PromptSpec] = {
    "goemotions": PromptSpec(
        template='{examples}Reddit comment: "{text}"\n\nDoes this comment express {label}? Answer yes or no.',
        example='Reddit comment: "{text}"\nDoes it express {label}? {answer}\n\n',
    ),
    "semeval2018-ec": PromptSpec(
        template='{examples}Tweet: "{text}"\n\nDoes this tweet express {label}? Answer yes or no.',
        example='Tweet: "{text}"\nDoes it express {label}? {answer}\n\n',
    ),
    "tabular": PromptSpec(
        template='{examples}Text: "{text}"\n\nDoes this text express the emotion "{label}"? Answer yes or no.',
        example='Text: "{text}"\nDoes it express the emotion "{label}"? {answer}\n\n',
    ),
}

LABEL_PHRASES: dict[str, dict[str, str]] = {
    "goemotions": {"neutral": "no particular emotion (a neutral tone)"},
    "semeval2018-ec": {},
    "tabular": {},
}
"""Per dataset, label name -> phrase asked about; unlisted names are used as they are (lower-cased)."""

YES_NO_PAIRS = (("yes", "no"), ("Yes", "No"), (" yes", " no"), (" Yes", " No"), ("YES", "NO"), (" YES", " NO"))


def prompt_spec(dataset: str, template: str | None = None) -> PromptSpec:
    """The dataset's default prompt, or ``template`` (a config's ``model.template``) in its place."""
    spec = DEFAULTS.get(dataset, DEFAULTS["tabular"])
    return spec if template is None else dataclasses.replace(spec, template=template)


def check_template(template: str, few_shot: int, where: str = "model.template") -> None:
    """``ConfigError`` unless ``template`` has ``{text}`` and ``{label}`` once each (``{examples}`` for few-shot)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid template ({exc}); write literal braces as {{{{ and }}}}") from None
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; "
            "allowed: {text}, {label}, {examples}"
        )
    for name in ("text", "label"):
        if fields.count(name) != 1:
            raise ConfigError(f"{where}: needs {{{name}}} exactly once (found {fields.count(name)})")
    if few_shot > 0 and "examples" not in fields:
        raise ConfigError(f"{where}: model.few_shot is {few_shot} but the template has no {{examples}}")


def label_phrase(dataset: str, name: str) -> str:
    """What the question asks about for label ``name`` ("disapproval", "no particular emotion ...")."""
    phrases = LABEL_PHRASES.get(dataset, {})
    return phrases.get(name, " ".join(name.replace("_", " ").replace("-", " ").split()).lower())


def pick_examples(texts: list[str], labels: np.ndarray, column: int, k: int, seed: int) -> list[tuple[str, str]]:
    """``k`` seeded ``(text, "yes"|"no")`` examples for label ``column``: ceil(k/2) positives when there
    are that many (the rest negatives), in a seeded order. Same data, seed and column: same examples."""
    if k <= 0 or len(texts) == 0:
        return []
    rng = np.random.default_rng([seed, column])
    column_values = np.asarray(labels)[:, column] > 0.5
    positives, negatives = np.flatnonzero(column_values), np.flatnonzero(~column_values)
    n_pos = min(len(positives), (k + 1) // 2)
    n_neg = min(len(negatives), k - n_pos)
    n_pos = min(len(positives), k - n_neg)  # too few negatives: fill with positives
    chosen = [(int(i), "yes") for i in rng.choice(positives, size=n_pos, replace=False)]
    chosen += [(int(i), "no") for i in rng.choice(negatives, size=n_neg, replace=False)]
    order = rng.permutation(len(chosen))
    return [(texts[chosen[j][0]], chosen[j][1]) for j in order]


def render_examples(spec: PromptSpec, phrase: str, examples: list[tuple[str, str]]) -> str:
    """The ``{examples}`` block for one label ('' without examples). Texts are used as given (shorten them first)."""
    if not examples:
        return ""
    return (
        spec.examples_header
        + "".join(
            spec.example.format(text=" ".join(text.split()), label=phrase, answer=answer) for text, answer in examples
        )
        + spec.examples_footer
    )


def render_prompt(tokenizer, spec: PromptSpec, phrase: str, examples_block: str) -> tuple[str, str]:
    """``(head, tail)``: the full prompt for one label is ``head + text + tail``; the answer comes next."""
    user = spec.template.format(text=TEXT_MARK, label=phrase, examples=examples_block)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": spec.system}, {"role": "user", "content": user}]
        try:
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role (Gemma): the instruction goes first in the user turn
            messages = [{"role": "user", "content": f"{spec.system}\n\n{user}"}]
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        rendered = f"{spec.system}\n\n{user}\nAnswer:"
    head, tail = rendered.split(TEXT_MARK)
    return head, tail


def answer_token_ids(tokenizer) -> tuple[list[int], list[int], list[tuple[str, str]]]:
    """``(yes_ids, no_ids, pairs)``: first-answer-token ids of the yes/no variants that are one token each."""
    yes_ids: list[int] = []
    no_ids: list[int] = []
    pairs = []
    for yes, no in YES_NO_PAIRS:
        y, n = (tokenizer.encode(w, add_special_tokens=False) for w in (yes, no))
        if len(y) == 1 and len(n) == 1 and y[0] != n[0] and y[0] not in no_ids and n[0] not in yes_ids:
            if y[0] not in yes_ids:
                yes_ids.append(y[0])
            if n[0] not in no_ids:
                no_ids.append(n[0])
            pairs.append((yes, no))
    if not yes_ids:
        raise ConfigError(
            "model: the tokenizer has no single-token 'yes'/'no' answers; the zero_shot family needs them"
        )
    return yes_ids, no_ids, pairs
