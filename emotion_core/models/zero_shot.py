"""Zero-shot classification with an instruct LLM: one yes/no question per (text, label), no training.

Features
- ``logits[:, j] = log p(yes) - log p(no)`` from the next-token distribution after label ``j``'s prompt
  (``models.prompts``): the shape of a trained model's logits, so thresholds, calibration and comparison
  treat this family like the others.
- The text is cut to fit ``model.max_length``, never the question; ``model.batch_size`` prompts a pass.
- Few-shot (``model.few_shot``): seeded training examples, saved with the run (``zero_shot.json``, no
  weights: the base model is resolved again on load).

Limits
- One forward pass per (text, label) (28 per GoEmotions text); no KV-cache sharing between labels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.utils import ModelOutput

from emotion_core.config import RunConfig
from emotion_core.errors import ConfigError, ModelError
from emotion_core.labels import LabelSchema
from emotion_core.model_configs import ZeroShotConfig
from emotion_core.models import prompts
from emotion_core.models.family import Family
from emotion_core.models.resolve import resolve_model
from emotion_core.models.tokenized import TokenizedTexts

SAVED = "zero_shot.json"
MIN_TEXT_TOKENS = 16
"""The prompt (question, examples) must leave at least this many tokens of ``max_length`` for the text."""


@dataclass
class ZeroShotOutput(ModelOutput):
    """``logits`` (batch, labels) = log p(yes) - log p(no); ``loss``: BCE-with-logits when labels were given;
    ``answer_mass`` (batch, labels): the next-token probability of all yes/no variants together (a prompt whose
    answer position is right puts most of the mass there)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    answer_mass: torch.Tensor | None = None


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask: every sequence ends in the last column."""
    width = max(1, max(map(len, seqs)))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


class YesNoClassifier(nn.Module):
    """Causal LM -> per-label log-odds of the "yes" over the "no" answer tokens.

    ``forward(input_ids, attention_mask, labels=None)`` takes a batch of tokenized texts (any
    padding side; ``attention_mask`` marks the text tokens) and returns ``ZeroShotOutput``.
    Prompt ``(text, label)`` is ``heads[label] + text + tails[label]``; the answer follows it.
    When every label has the same head (no few-shot examples) and ``share_prefix`` is on, the
    common ``head + text`` is run once per text and its key/value cache reused by every label's
    tail (same numbers up to float rounding, ~3x less compute on GoEmotions).
    """

    def __init__(
        self,
        lm: nn.Module,
        heads: list[list[int]],
        tails: list[list[int]],
        yes_ids: list[int],
        no_ids: list[int],
        pad_id: int,
        batch_size: int,
        share_prefix: bool = True,
    ) -> None:
        super().__init__()
        self.lm = lm
        self.heads, self.tails = heads, tails
        self.pad_id, self.batch_size = pad_id, batch_size
        self.share_prefix = share_prefix
        self._plain_cache: bool | None = None
        self.register_buffer("yes_ids", torch.tensor(yes_ids, dtype=torch.long), persistent=False)
        self.register_buffer("no_ids", torch.tensor(no_ids, dtype=torch.long), persistent=False)

    @property
    def num_labels(self) -> int:
        return len(self.heads)

    @property
    def device(self) -> torch.device:
        return self.yes_ids.device

    def can_share_prefix(self) -> bool:
        """One head for all labels, and a model whose cache is plain full-attention layers (no sliding window)."""
        if not self.share_prefix or any(h != self.heads[0] for h in self.heads):
            return False
        if self._plain_cache is None:
            from transformers import DynamicCache
            from transformers.cache_utils import DynamicLayer

            layers = DynamicCache(config=self.lm.config).layers
            self._plain_cache = bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
        return self._plain_cache

    def _answer(self, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        last = last.float()
        yes, no = torch.logsumexp(last[:, self.yes_ids], -1), torch.logsumexp(last[:, self.no_ids], -1)
        # softmax restricted to the yes+no variants: the full vocabulary's normaliser cancels in yes - no
        mass = torch.exp(torch.logaddexp(yes, no) - torch.logsumexp(last, -1))
        return yes - no, mass

    def answer_logits(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-odds, answer mass) at the position after each full prompt, ``batch_size`` prompts per pass."""
        scores, masses = [], []
        for start in range(0, len(prompts), self.batch_size):
            ids, mask = (t.to(self.device) for t in _left_pad(prompts[start : start + self.batch_size], self.pad_id))
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each prompt starts at position 0, as if unpadded
            last = self.lm(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1
            ).logits[:, -1]
            score, mass = self._answer(last)
            scores.append(score)
            masses.append(mass)
        return torch.cat(scores), torch.cat(masses)

    def shared_answer_logits(self, texts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``answer_logits`` over every (text, label) prompt, text-major; ``head + text`` computed once a text."""
        from transformers import DynamicCache

        n_labels, head = self.num_labels, self.heads[0]
        scores, masses = [], []
        for start in range(0, len(texts), self.batch_size):
            group = texts[start : start + self.batch_size]
            prefix_ids, prefix_mask = (t.to(self.device) for t in _left_pad([head + t for t in group], self.pad_id))
            out = self.lm(
                input_ids=prefix_ids,
                attention_mask=prefix_mask,
                position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
            kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
            lengths = prefix_mask.sum(-1)
            pairs = [(i, j) for i in range(len(group)) for j in range(n_labels)]
            for first in range(0, len(pairs), self.batch_size):
                chunk = pairs[first : first + self.batch_size]
                rows = torch.tensor([i for i, _ in chunk], device=self.device)
                tails = _left_pad([self.tails[j] for _, j in chunk], self.pad_id)
                tail_ids, tail_mask = (t.to(self.device) for t in tails)
                cache = DynamicCache([(k[rows], v[rows]) for k, v in kv])
                positions = lengths[rows, None] + (tail_mask.cumsum(-1) - 1).clamp(min=0)
                last = self.lm(
                    input_ids=tail_ids,
                    attention_mask=torch.cat([prefix_mask[rows], tail_mask], -1),
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                ).logits[:, -1]
                score, mass = self._answer(last)
                scores.append(score)
                masses.append(mass)
        return torch.cat(scores), torch.cat(masses)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        texts = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())]
        if self.can_share_prefix():
            scores, mass = self.shared_answer_logits(texts)
        else:
            scores, mass = self.answer_logits([h + t + tl for t in texts for h, tl in zip(self.heads, self.tails)])
        logits = scores.view(len(texts), self.num_labels)
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.device, logits.dtype))
        return ZeroShotOutput(loss=loss, logits=logits, answer_mass=mass.view(len(texts), self.num_labels))


def _dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def _load_lm(spec: ZeroShotConfig):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec.model, spec.revision, spec.trust_remote_code)
    revision = None if Path(source).exists() else spec.revision
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=spec.trust_remote_code)
    lm = AutoModelForCausalLM.from_pretrained(
        source, revision=revision, trust_remote_code=spec.trust_remote_code, use_safetensors=True, dtype=_dtype()
    )
    lm.requires_grad_(False)
    lm.eval()
    return tokenizer, lm


def _shorten(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]).rstrip() + "..."


def _family(cfg: RunConfig, schema: LabelSchema, saved: dict, tokenizer, lm) -> Family:
    """The family for the prompt description ``saved`` (what ``save`` writes)."""
    spec: ZeroShotConfig = cfg.model
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    heads, tails, parts = _encoded_prompts(schema, saved, tokenizer, encode)
    budget = _text_budget(cfg, heads, tails)
    yes_ids, no_ids, pairs = _answer_ids(spec, saved, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = YesNoClassifier(lm, heads, tails, yes_ids, no_ids, pad_id if pad_id is not None else 0, spec.batch_size)
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    saved = {
        **saved,
        "prompt_parts": dict(zip(schema.names, parts)),
        "yes_token_ids": yes_ids,
        "no_token_ids": no_ids,
        "answer_variants": [list(p) for p in pairs],
        "max_text_tokens": budget,
    }

    def make_dataset(texts: list[str], labels: np.ndarray | None) -> TokenizedTexts:
        ids = [encode(text)[:budget] for text in texts]
        return TokenizedTexts({"input_ids": ids}, None if labels is None else labels.astype(np.float32))

    def save(folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / SAVED).write_text(json.dumps(saved, indent=2, ensure_ascii=False), encoding="utf-8")

    return Family("zero_shot", model, make_dataset, _collate_for(model), save, has_lengths=True, trained=False)


def _encoded_prompts(
    schema: LabelSchema, saved: dict, tokenizer, encode
) -> tuple[list[list[int]], list[list[int]], list[list[str]]]:
    """Per label: the token ids of the prompt before and after the text, and those two strings."""
    prompt = prompts.PromptSpec(**saved["prompt"])
    heads, tails, parts = [], [], []
    for name in schema.names:
        phrase = saved["label_phrases"][name]
        block = prompts.render_examples(prompt, phrase, [tuple(e) for e in saved["examples"].get(name, [])])
        head, tail = prompts.render_prompt(tokenizer, prompt, phrase, block)
        heads.append(encode(head))
        tails.append(encode(tail))
        parts.append([head, tail])
    return heads, tails, parts


def _text_budget(cfg: RunConfig, heads: list[list[int]], tails: list[list[int]]) -> int:
    """Tokens left for the text in the longest prompt; a ``ConfigError`` below ``MIN_TEXT_TOKENS``."""
    spec: ZeroShotConfig = cfg.model
    longest = max(len(h) + len(t) for h, t in zip(heads, tails))
    budget = spec.max_length - longest
    if budget < MIN_TEXT_TOKENS:
        raise ConfigError(
            f"config '{cfg.name}': model.max_length {spec.max_length} leaves {budget} tokens for the "
            f"text (the longest prompt without it is {longest} tokens); raise model.max_length"
            + (" or lower model.few_shot" if spec.few_shot else "")
        )
    return budget


def _answer_ids(spec: ZeroShotConfig, saved: dict, tokenizer) -> tuple[list[int], list[int], list[tuple[str, str]]]:
    """``prompts.answer_token_ids`` of the tokenizer; a ``ModelError`` when they differ from the run's saved ones."""
    yes_ids, no_ids, pairs = prompts.answer_token_ids(tokenizer)
    if "yes_token_ids" in saved and (saved["yes_token_ids"], saved["no_token_ids"]) != (yes_ids, no_ids):
        raise ModelError(
            f"model '{spec.model}': its tokenizer maps yes/no to {yes_ids}/{no_ids}, "
            f"the run was made with {saved['yes_token_ids']}/{saved['no_token_ids']}"
        )
    return yes_ids, no_ids, pairs


def _collate_for(model: YesNoClassifier) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Right-pad the texts' token ids with the model's pad id, with an attention mask (and labels when given)."""

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(1, max(len(item["input_ids"]) for item in items))
        ids = torch.full((len(items), width), model.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            ids[row, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if "labels" in items[0]:
            batch["labels"] = torch.from_numpy(np.stack([item["labels"] for item in items]).astype(np.float32))
        return batch

    return collate


def describe(
    cfg: RunConfig, schema: LabelSchema, train_texts: list[str], train_labels: np.ndarray | None, tokenizer=None
) -> dict:
    """The prompt description of a new run: template, label phrases and the seeded few-shot examples."""
    spec: ZeroShotConfig = cfg.model
    dataset = cfg.data.dataset
    prompt = prompts.prompt_spec(dataset, spec.template)
    prompts.check_template(prompt.template, spec.few_shot)
    phrases = {name: prompts.label_phrase(dataset, name) for name in schema.names}
    examples: dict[str, list[list[str]]] = {}
    if spec.few_shot:
        if train_labels is None or len(train_texts) == 0:
            raise ConfigError(f"config '{cfg.name}': model.few_shot needs labelled training texts")
        per_example = max(8, spec.max_length // (2 * (spec.few_shot + 1)))  # examples take at most ~half the prompt
        for column, name in enumerate(schema.names):
            picked = prompts.pick_examples(train_texts, train_labels, column, spec.few_shot, cfg.training.seed)
            examples[name] = [
                [_shorten(tokenizer, t, per_example) if tokenizer is not None else t, a] for t, a in picked
            ]
    return {
        "format": 1,
        "family": "zero_shot",
        "model": spec.model,
        "revision": spec.revision,
        "dataset": dataset,
        "prompt": {
            "template": prompt.template,
            "example": prompt.example,
            "examples_header": prompt.examples_header,
            "examples_footer": prompt.examples_footer,
            "system": prompt.system,
        },
        "labels": list(schema.names),
        "label_phrases": phrases,
        "few_shot": spec.few_shot,
        "seed": cfg.training.seed,
        "examples": examples,
        "max_length": spec.max_length,
    }


def build(cfg: RunConfig, schema: LabelSchema, train_texts: list[str], train_labels: np.ndarray) -> Family:
    """The prompted classifier over ``cfg.model.model``; few-shot examples are drawn (seeded) from the training rows."""
    spec: ZeroShotConfig = cfg.model
    template = prompts.prompt_spec(cfg.data.dataset, spec.template).template
    prompts.check_template(template, spec.few_shot)  # before loading
    tokenizer, lm = _load_lm(spec)
    saved = describe(cfg, schema, train_texts, train_labels, tokenizer)
    return _family(cfg, schema, saved, tokenizer, lm)


def load(cfg: RunConfig, schema: LabelSchema, folder: Path) -> Family:
    """The same classifier again from a run's ``model/`` folder: same prompts and examples, base resolved again."""
    path = Path(folder) / SAVED
    if not path.is_file():
        raise ModelError(f"{folder}: no {SAVED}; not a zero_shot run's model folder")
    saved = json.loads(path.read_text(encoding="utf-8"))
    if list(saved["labels"]) != list(schema.names):
        raise ModelError(f"{path}: labels {saved['labels']} differ from the run's {list(schema.names)}")
    spec: ZeroShotConfig = cfg.model
    if spec.model != saved["model"]:
        raise ModelError(f"{path}: made with model '{saved['model']}', the config names '{spec.model}'")
    tokenizer, lm = _load_lm(spec)
    return _family(cfg, schema, saved, tokenizer, lm)
