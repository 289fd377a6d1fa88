"""On-disk cache of tokenised texts, shared by every process on a machine (``tokenized.text_io`` uses it).

Features
- Configs sharing a tokenizer and ``max_length`` tokenise their texts once: one ``<key>.npz`` (no pickles)
  under ``$EMOTION_CACHE_DIR/tokenized``, keyed by sha256 of the tokenizer's fingerprint, the encoding
  parameters and the texts; written atomically (``os.replace``).
- A file that does not match its key is rebuilt; a file that cannot be written is logged.
- Small inputs (< ``$EMOTION_TOKEN_CACHE_MIN_TEXTS``, default 1000) are not cached; ``EMOTION_TOKEN_CACHE=0``
  turns it off. ``stats`` counts hits, misses, rebuilds.

Limits
- Fast tokenizers only; no eviction (delete the folder at any time).
- The key trusts the caller to list every parameter that changes the encodings.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emotion_core.settings import cache_root

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ENABLE_ENV = "EMOTION_TOKEN_CACHE"
MIN_TEXTS_ENV = "EMOTION_TOKEN_CACHE_MIN_TEXTS"
DEFAULT_MIN_TEXTS = 1000
_MUTABLE_STATE = ("truncation", "padding")  # backend JSON fields rewritten by every call, not part of the tokenizer


@dataclass
class CacheStats:
    """This process's cache outcomes: ``hits``, ``misses`` (tokenised and written), ``rebuilt`` (misses
    whose file was unreadable), ``uncached`` (cache off, slow tokenizer, or too few texts)."""

    hits: int = 0
    misses: int = 0
    rebuilt: int = 0
    uncached: int = 0

    def reset(self) -> None:
        self.hits = self.misses = self.rebuilt = self.uncached = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


stats = CacheStats()
_lock = threading.Lock()
_warned_slow: set[str] = set()


def _count(field: str) -> None:
    with _lock:
        setattr(stats, field, getattr(stats, field) + 1)


def cache_dir() -> Path:
    return cache_root() / "tokenized"


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def min_texts() -> int:
    raw = os.environ.get(MIN_TEXTS_ENV, "").strip()
    try:
        return int(raw) if raw else DEFAULT_MIN_TEXTS
    except ValueError:
        log.warning("%s=%r is not an integer; using %d", MIN_TEXTS_ENV, raw, DEFAULT_MIN_TEXTS)
        return DEFAULT_MIN_TEXTS


# -- key -------------------------------------------------------------------------------------------
def _backend_json_digest(backend) -> str:
    """sha256 of the backend tokenizer's JSON without its ``truncation``/``padding`` state."""
    text = backend.to_str()
    # to_str() writes version, truncation, padding, then added_tokens...: hash from added_tokens on
    # when the part before it is provably just those fields (it parses on its own as an object),
    # else parse the whole JSON (~0.1 s for a 30k vocabulary) and drop them.
    cut = text.find(',"added_tokens":')
    if cut > 0:
        try:
            head = json.loads(text[:cut] + "}")
        except ValueError:
            head = None
        if isinstance(head, dict) and set(head) <= {"version", *_MUTABLE_STATE}:
            digest = hashlib.sha256(str(head.get("version")).encode())
            digest.update(text[cut:].encode("utf-8", "surrogatepass"))
            return digest.hexdigest()
    data = json.loads(text)
    for name in _MUTABLE_STATE:
        data.pop(name, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str | None:
    """sha256 naming what a fast tokenizer produces, or None for one that cannot be fingerprinted (slow)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or not hasattr(backend, "to_str"):
        return None
    import tokenizers
    import transformers

    special = getattr(tokenizer, "special_tokens_map", {}) or {}
    payload = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "backend": _backend_json_digest(backend),
        "model_input_names": list(getattr(tokenizer, "model_input_names", [])),
        "special_tokens": {
            k: str(v) if not isinstance(v, list) else [str(x) for x in v] for k, v in sorted(special.items())
        },
        "truncation_side": getattr(tokenizer, "truncation_side", None),
        "versions": [tokenizers.__version__, transformers.__version__],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_key(texts: Sequence[str], fingerprint: str, params: dict) -> str:
    """sha256 over the format version, the tokenizer fingerprint, the encoding parameters and the texts."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {"format": FORMAT_VERSION, "tokenizer": fingerprint, "params": params}, sort_keys=True, default=str
        ).encode()
    )
    digest.update(b"\n")
    digest.update(json.dumps(list(texts)).encode())  # ASCII-escaped: any str, unambiguous boundaries
    return digest.hexdigest()


# -- file format -----------------------------------------------------------------------------------
def _flat_dtype(flat: np.ndarray):
    """The smallest of uint8/uint16/int32/int64 that holds every value."""
    if flat.size == 0:
        return np.uint8
    low, high = int(flat.min()), int(flat.max())
    for dtype in (np.uint8, np.uint16, np.int32):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return dtype
    return np.int64


def _to_arrays(encodings: dict[str, list], key: str) -> dict[str, np.ndarray] | None:
    """The file's arrays, or None when the encodings do not fit the format (no names, ragged per name)."""
    names = list(encodings)
    if not names:
        return None
    rows = len(encodings[names[0]])
    lengths = [len(r) for r in encodings[names[0]]]
    arrays = {}
    for i, name in enumerate(names):
        column = encodings[name]
        if len(column) != rows or any(len(r) != n for r, n in zip(column, lengths)):
            return None
        flat = np.fromiter(itertools.chain.from_iterable(column), dtype=np.int64, count=sum(lengths))
        arrays[f"v{i}"] = flat.astype(_flat_dtype(flat), copy=False)
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    meta = {"format": FORMAT_VERSION, "key": key, "rows": rows, "names": names}
    return {"meta": np.array(json.dumps(meta)), "offsets": offsets, **arrays}


def _read(path: Path, key: str, rows: int) -> dict[str, list]:
    """The encodings in ``path``; raises (any exception) when the file is unreadable or not this key's."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT_VERSION or meta.get("key") != key or meta.get("rows") != rows:
            raise ValueError(f"header {meta!r} does not match the key or the {rows} rows asked for")
        offsets = z["offsets"]
        if offsets.shape != (rows + 1,) or offsets[0] != 0 or (rows and np.any(np.diff(offsets) < 0)):
            raise ValueError("offsets are not a valid row index")
        bounds = offsets.tolist()
        flats = {}
        for i, name in enumerate(meta["names"]):
            flat = z[f"v{i}"]
            if flat.ndim != 1 or flat.shape[0] != bounds[-1] or flat.dtype.kind not in "iu":
                raise ValueError(f"'{name}' holds {flat.shape} {flat.dtype} values, the offsets say {bounds[-1]}")
            flats[name] = flat
    # Tens of thousands of new lists: without the cyclic GC rescanning them all (about half the time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        encodings = {}
        for name, flat in flats.items():
            values = flat.tolist()
            encodings[name] = [values[a:b] for a, b in zip(bounds, bounds[1:])]
    finally:
        if collecting:
            gc.enable()
    return encodings


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from other users sharing the cache
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- entry point -----------------------------------------------------------------------------------
def cached_encode(
    tokenizer, texts: Sequence[str], encode: Callable[[list[str]], dict[str, list]], params: dict
) -> tuple[dict[str, list], str]:
    """``encode(texts)`` through the cache: ``(encodings, status)``, status ``hit``, ``miss`` or ``off``.

    ``encode`` returns ``{input name: list of token lists}`` (one per text, unpadded); ``params`` must
    name everything besides the tokenizer and the texts that changes its result (e.g. ``max_length``).
    """
    texts = list(texts)
    if not enabled() or len(texts) < min_texts():
        _count("uncached")
        return encode(texts), "off"
    started = time.perf_counter()
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        name = type(tokenizer).__name__
        with _lock:
            first = name not in _warned_slow
            _warned_slow.add(name)
        if first:
            log.info("token cache: %s is not a fast tokenizer (no backend JSON to fingerprint); not cached", name)
        _count("uncached")
        return encode(texts), "off"
    key = cache_key(texts, fingerprint, params)
    path = cache_dir() / f"{key}.npz"
    rebuilt = False
    if path.is_file():
        try:
            encodings = _read(path, key, len(texts))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt
            log.warning("token cache: %s unreadable (%s: %s); rebuilding it", path, type(exc).__name__, exc)
            rebuilt = True
        else:
            _count("hits")
            log.info("token cache hit %s: %d texts in %.2fs", key[:12], len(texts), time.perf_counter() - started)
            return encodings, "hit"
    encodings = encode(texts)
    tokenised = time.perf_counter() - started
    arrays = _to_arrays(encodings, key)
    if arrays is None:
        log.warning(
            "token cache: %s gave no input names or names of different lengths; not cached", type(tokenizer).__name__
        )
    else:
        try:
            _write(path, arrays)
        except OSError as exc:
            log.warning("token cache: could not write %s (%s); continuing without it", path, exc)
    _count("misses")
    if rebuilt:
        _count("rebuilt")
    log.info(
        "token cache miss %s: tokenised %d texts in %.2fs (%.2fs with the write)",
        key[:12],
        len(texts),
        tokenised,
        time.perf_counter() - started,
    )
    return encodings, "miss"
