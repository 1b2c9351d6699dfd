"""Class text embeddings as files (SemiVL reads them; no text encoder at train or test time).

A text-embedding file is a float16/float32 ``.npy`` of shape (R, E), one unit-norm row per class, or per
concept when classes are described by concept lists. A classes file says which rows belong to which
class: one class per line, its concepts separated by ``|`` (a line without ``|`` is one concept, the class
name); row r of the embeddings is the r-th concept in reading order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UnimatchError

CONCEPT_SEPARATOR = "|"
PROMPT = "a photo of a {}"  # SemiVL's single template
OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")  # non-tensor entries of OpenAI's archives


class TextEmbeddingError(UnimatchError, ValueError):
    """A text-embedding or classes file that cannot be used; the message names the file."""


def read_class_concepts(path: str | Path) -> list[list[str]]:
    """Concept lists, one per class (a class named alone is its own single concept)."""
    path = Path(path)
    if not path.is_file():
        raise TextEmbeddingError(f"classes file not found: {path}")
    classes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        concepts = [concept.strip() for concept in line.split(CONCEPT_SEPARATOR)]
        if not all(concepts):
            raise TextEmbeddingError(f"{path}:{number}: empty concept in '{line.strip()}'")
        classes.append(concepts)
    if len(classes) < 2:
        raise TextEmbeddingError(f"{path}: needs at least two classes, found {len(classes)}")
    return classes


def concept_classes(classes: list[list[str]]) -> list[int]:
    """The class index of each concept row, in reading order: [[a, b], [c]] -> [0, 0, 1]."""
    return [index for index, concepts in enumerate(classes) for _ in concepts]


def load_text_embeddings(path: str | Path, rows: int | None = None) -> torch.Tensor:
    """The (R, E) embeddings of ``path`` as float32, checked unit-norm (and R == ``rows`` when given)."""
    path = Path(path)
    if not path.is_file():
        raise TextEmbeddingError(f"text-embedding file not found: {path} (`unimatch text-embeddings` computes one)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise TextEmbeddingError(f"{path}: not a .npy array: {error}") from error
    if array.ndim != 2 or array.dtype not in (np.float16, np.float32):
        raise TextEmbeddingError(
            f"{path}: expected a float16/float32 (rows, width) array, got {array.dtype} {array.shape}"
        )
    if rows is not None and array.shape[0] != rows:
        raise TextEmbeddingError(
            f"{path}: {array.shape[0]} rows, expected {rows} (one per class, or per concept of the classes file)"
        )
    embeddings = torch.from_numpy(array.astype(np.float32))
    norms = embeddings.norm(dim=1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-2):  # float16 files round to ~1e-3
        raise TextEmbeddingError(f"{path}: rows are not unit-norm (norms {norms.min():.3f}..{norms.max():.3f})")
    return embeddings


def aggregate_concepts(scores: torch.Tensor, row_class: torch.Tensor, nclass: int) -> torch.Tensor:
    """(B, R, H, W) per-concept scores -> (B, nclass, H, W): each class scores the max over its concepts."""
    if scores.shape[1] == nclass:
        return scores
    index = row_class.view(1, -1, 1, 1).expand_as(scores)
    out = scores.new_full((scores.shape[0], nclass, *scores.shape[2:]), float("-inf"))
    return out.scatter_reduce(1, index, scores, reduce="amax", include_self=False)


def random_text_embeddings(rows: int, width: int, seed: int) -> np.ndarray:
    """Seeded random unit vectors in the text-embedding file format: a plumbing stand-in, never CLIP's."""
    vectors = np.random.default_rng(seed).standard_normal((rows, width))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def encode_class_concepts(classes: list[list[str]], model: torch.nn.Module, tokenizer) -> np.ndarray:
    """Unit-norm CLIP text embeddings (float16, one row per concept) of the prompt "a photo of a {c}"."""
    prompts = [PROMPT.format(concept) for concepts in classes for concept in concepts]
    with torch.no_grad():
        embeddings = model.encode_text(tokenizer(prompts)).float()
    return torch.nn.functional.normalize(embeddings, dim=-1).numpy().astype(np.float16)


def average_concepts(embeddings: np.ndarray, classes: list[list[str]]) -> np.ndarray:
    """One unit row per class: the mean of its concept rows, re-normalised (SemiVL's ``conceptavg`` files)."""
    rows = np.split(embeddings.astype(np.float32), np.cumsum([len(concepts) for concepts in classes])[:-1])
    means = np.stack([row.mean(axis=0) for row in rows])
    return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(embeddings.dtype)


def open_clip_text_encoder(architecture: str, weights: str | Path, quick_gelu: bool = True):
    """open_clip's ``architecture`` with the weights of ``weights`` (OpenAI's ``ViT-B-16.pt``, a TorchScript archive,
    or an open_clip state dict of the same layout), loaded strictly, and its tokenizer. OpenAI's models use
    QuickGELU (``quick_gelu``); open_clip's own trainings mostly GELU. open_clip is the optional extra ``clip``."""
    try:
        import open_clip
    except ImportError:
        raise TextEmbeddingError(
            "computing text embeddings needs open_clip: pip install 'unimatch-pipeline[clip]'"
        ) from None
    from .weights import read_checkpoint

    state = read_checkpoint(weights)
    state = state.get("state_dict", state)
    state = {key.removeprefix("module."): value for key, value in state.items() if key not in OPENAI_METADATA}
    model = open_clip.create_model(architecture, force_quick_gelu=quick_gelu, device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TextEmbeddingError(
            f"{weights} does not fit open_clip's {architecture}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval(), open_clip.get_tokenizer(architecture)
