"""Tweet normalisation (``data.preprocess``), the kind SemEval-2018 systems used before their tokenizers.

- ``@someone`` -> ``@user``; ``https://t.co/x`` and ``www.x.com`` -> ``http``.
- ``#HappyDay`` -> ``happy day``: split at lower->upper case changes and letter/digit boundaries, lower-cased;
  an all-lowercase tag (``#happyday``) stays one word (no dictionary segmentation).
- Emoji ``keep`` or ``text``: each emoji becomes its Unicode name between spaces (``😂`` -> ``face with tears of
  joy``), from the standard library's ``unicodedata`` (variation selectors and joiners dropped).
- Applied by ``load_data`` to every split and by ``run_model.run_logits`` to every text a run predicts, from the
  run's own config, so training and serving see the same text.

Limits: English-centric; emoji sequences (flags, skin tones, ZWJ families) become the names of their parts.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

USER = re.compile(r"(?<![\w@])@\w{1,50}")
URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
HASHTAG = re.compile(r"(?<![\w#])#(\w+)")
CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_]+")
# Pictographs, dingbats, symbols and flags (regional indicators); joiners and variation selectors separately.
EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff]")
JOINERS = re.compile("[\u200d\ufe0e\ufe0f\U0001f3fb-\U0001f3ff]")
SPACES = re.compile(r"[ \t]{2,}")


def split_hashtag(tag: str) -> str:
    """``HappyDay2018`` -> ``happy day 2018``; ``happyday`` stays ``happyday``."""
    parts = CAMEL.findall(tag)
    return " ".join(parts).lower() if parts else tag.lower()


def _emoji_name(match: re.Match) -> str:
    name = unicodedata.name(match.group(0), "")
    return f" {name.lower()} " if name else match.group(0)


def preprocess_text(text: str, cfg) -> str:
    """One text normalised as ``cfg`` (a ``PreprocessConfig``) says."""
    if cfg.urls:
        text = URL.sub("http", text)
    if cfg.users:
        text = USER.sub("@user", text)
    if cfg.hashtags:
        text = HASHTAG.sub(lambda m: split_hashtag(m.group(1)), text)
    if cfg.emoji == "text":
        text = EMOJI.sub(_emoji_name, JOINERS.sub("", text))
        text = SPACES.sub(" ", text).strip()
    return text


def preprocess_texts(texts: Iterable[str], cfg) -> list[str]:
    """Every text through ``preprocess_text``; ``cfg`` None: the texts unchanged."""
    texts = list(texts)
    return texts if cfg is None else [preprocess_text(text, cfg) for text in texts]
