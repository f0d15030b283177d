"""A tiny CLIP dual encoder with a tokenizer trained locally, saved like a Hub checkpoint.

:func:`build_tiny_dual_encoder` trains a lower-case BPE tokenizer (``tokenizers``) on the given
notes, builds a small :class:`transformers.CLIPModel` from a :class:`transformers.CLIPConfig` whose
special-token ids match the tokenizer, and saves model, tokenizer and image processor with
``save_pretrained``; ``AutoModel`` / ``AutoTokenizer`` / ``AutoImageProcessor`` / ``AutoProcessor``
``.from_pretrained(out_dir)`` then work offline exactly as with a Hub name.

Special tokens: ``<pad>`` = 0, ``<unk>`` = 1, ``<|startoftext|>`` = 2, ``<|endoftext|>`` = 3.
``CLIPTextTransformer`` pools the hidden state at the first ``eos_token_id`` when that id is not
2 (a legacy branch pools at ``argmax(input_ids)`` instead), so eos is 3 and every encoded text
ends with it (the post-processor adds it after truncation).
"""

from __future__ import annotations

import json
import os
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from numpy import asarray as np_asarray

from fairvlm_lightning.data.transforms import ImageTransform
from fairvlm_lightning.encoders import DualEncoder

if TYPE_CHECKING:
    from transformers.image_processing_utils import ImageProcessingMixin

__all__ = [
    "MODEL_PRESETS",
    "SPECIAL_TOKENS",
    "build_tiny_dual_encoder",
    "train_note_tokenizer",
    "warm_start_dual_encoder",
]

#: pad, unk, bos, eos, in id order 0..3.
SPECIAL_TOKENS: tuple[str, str, str, str] = ("<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>")
_SUFFIX = "</w>"

#: Architectures :func:`build_tiny_dual_encoder` can build with random weights instead of the tiny
#: default (``preset=``). ``clip-vit-base-patch16`` has the hyper-parameters of the Hub's
#: ``openai/clip-vit-base-patch16`` config (ViT-B/16 at 224 px, 12-layer 512-wide text tower,
#: 77 positions, quick-GELU, 512-d joint space); only the vocabulary is the local tokenizer's.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "clip-vit-base-patch16": {
        "text": dict(
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            hidden_act="quick_gelu",
        ),
        "vision": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
        ),
        "image_size": 224,
        "patch_size": 16,
        "max_length": 77,
        "projection_dim": 512,
        "logit_scale_init_value": 2.6592,
    },
}


def _train_bpe(
    word_counts: Mapping[str, int], alphabet: Sequence[str], vocab_size: int, min_frequency: int
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Deterministic BPE: the most frequent adjacent pair wins, ties broken by the pair's text.

    ``tokenizers``' own ``BpeTrainer`` numbers the alphabet and breaks ties between equally
    frequent pairs in hash-map order, so two runs on the same texts can give different ids and
    merges; this loop gives the same vocabulary every time.
    """
    chars = sorted(set(alphabet) | {ch for w in word_counts for ch in w})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in [*chars, *(ch + _SUFFIX for ch in chars)]:
        vocab.setdefault(sym, len(vocab))
    words = [([*w[:-1], w[-1] + _SUFFIX], c) for w, c in sorted(word_counts.items()) if w]
    merges: list[tuple[str, str]] = []
    pairs: Counter[tuple[str, str]] = Counter()
    for syms, c in words:
        for pair in zip(syms, syms[1:], strict=False):
            pairs[pair] += c
    while len(vocab) < vocab_size and pairs:
        (a, b), count = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if count < min_frequency:
            break
        merged = a + b
        merges.append((a, b))
        vocab.setdefault(merged, len(vocab))
        for syms, c in words:
            if len(syms) < 2 or a not in syms:
                continue
            i, out = 0, []
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            if len(out) == len(syms):
                continue
            for pair in zip(syms, syms[1:], strict=False):
                pairs[pair] -= c
            for pair in zip(out, out[1:], strict=False):
                pairs[pair] += c
            syms[:] = out
        pairs = Counter({k: v for k, v in pairs.items() if v > 0})
    return vocab, merges


def train_note_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 1024, max_length: int = 64
) -> Any:
    """Train a lower-case BPE tokenizer on ``texts`` and wrap it as a fast HF tokenizer.

    A ``tokenizers`` pipeline (NFD + lower-case + accent stripping, split on whitespace and
    punctuation, BPE with CLIP's end-of-word suffix ``</w>``) whose merges are learnt by a small
    deterministic trainer (same texts, same tokenizer). The base alphabet holds all printable
    ASCII, inside and at the end of a word, so ASCII text never maps to ``<unk>``. Encoding adds
    ``<|startoftext|>`` ... ``<|endoftext|>`` (also after truncation).

    Args:
        texts: training texts (e.g. the training notes).
        vocab_size: upper bound of the vocabulary (fewer if no pair occurs twice any more).
        max_length: ``model_max_length`` of the tokenizer (the text model's positions).

    Returns:
        A :class:`transformers.PreTrainedTokenizerFast` with pad/unk/bos/eos set.

    Example:
        >>> tok = train_note_tokenizer(["cup to disc ratio 0.7, glaucoma"] * 4, vocab_size=300)
        >>> ids = tok("Glaucoma")["input_ids"]
        >>> ids[0] == tok.bos_token_id == 2, ids[-1] == tok.eos_token_id == 3, len(ids)
        (True, True, 3)
        >>> tok.decode(ids, skip_special_tokens=True)
        'glaucoma'
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a non-empty iterable of str")
    alphabet = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    minimum = len(SPECIAL_TOKENS) + 2 * len(alphabet)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be >= {minimum} (special tokens + ASCII alphabet, inside and at the "
            f"end of a word), got {vocab_size}"
        )
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3, got {max_length}")
    normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    pre_tokenizer = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab, merges = _train_bpe(counts, alphabet, vocab_size, min_frequency=2)
    tok = Tokenizer(
        models.BPE(
            vocab=vocab, merges=merges, unk_token=SPECIAL_TOKENS[1], end_of_word_suffix=_SUFFIX
        )
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    bos, eos = SPECIAL_TOKENS[2], SPECIAL_TOKENS[3]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])],
    )
    tok.decoder = decoders.BPEDecoder(suffix=_SUFFIX)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS[0],
        unk_token=SPECIAL_TOKENS[1],
        bos_token=bos,
        eos_token=eos,
        model_max_length=max_length,
    )


def _image_processor(image_size: int, mean: list[float], std: list[float]) -> ImageProcessingMixin:
    import transformers

    # transformers >= 5: pick the PIL backend explicitly (no torchvision needed); 4.x has one
    # (the fallback is looked up only when needed: touching CLIPImageProcessor on 5.x without
    # torchvision logs a "falling back" warning)
    processor: type[ImageProcessingMixin] = (
        getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    )
    return processor(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=3,  # bicubic, as CLIP
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=mean,
        image_std=std,
        do_convert_rgb=True,
    )


def build_tiny_dual_encoder(
    out_dir: str | os.PathLike[str],
    texts: Iterable[str],
    *,
    seed: int = 0,
    vocab_size: int = 1024,
    max_length: int = 64,
    image_size: int = 64,
    patch_size: int = 32,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    projection_dim: int = 64,
    image_mean: float | Sequence[float] = 0.5,
    image_std: float | Sequence[float] = 0.25,
    preset: str | None = None,
) -> Path:
    """Train a tokenizer on ``texts``, build a tiny CLIP model, save both and an image processor.

    Args:
        out_dir: output folder (created; existing files of the same names are replaced).
        texts: texts for the tokenizer (the training notes, plus any prompts to be encoded).
        seed: seed of the model's initial weights (the tokenizer is deterministic).
        vocab_size: tokenizer vocabulary bound (see :func:`train_note_tokenizer`).
        max_length: text positions of the model and ``model_max_length`` of the tokenizer.
        image_size: input side of the vision tower; the processor resizes the shortest edge to it
            and centre-crops a square.
        patch_size: ViT patch side; must divide ``image_size``. The default 32 (a 2 x 2 grid on
            64 px) is deliberate: from scratch, a tiny ViT with 8-px patches did not learn the
            cup-to-disc ratio within 6 epochs of the synthetic twin; with 32-px patches it does.
        hidden_size: width of both towers (MLP width is 2x).
        num_layers: transformer layers of each tower.
        num_heads: attention heads; must divide ``hidden_size``.
        projection_dim: dimension of the joint embedding.
        image_mean: normalisation mean on the [0, 1] scale (a float is used for all 3 channels;
            grayscale images are replicated to 3 channels).
        image_std: normalisation std, likewise.
        preset: build a real-size architecture from :data:`MODEL_PRESETS` instead (random
            weights; e.g. ``"clip-vit-base-patch16"``): its tower sizes, image and patch size,
            text positions and projection replace the size arguments above.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: an unknown ``preset``, inconsistent sizes (patch vs image, heads vs width)
            or a non-positive one.
        TypeError: ``texts`` is not an iterable of strings.

    Example:
        >>> import tempfile
        >>> from transformers import AutoModel, AutoTokenizer
        >>> out = build_tiny_dual_encoder(tempfile.mkdtemp(), ["c/d 0.7, glaucoma"] * 8,
        ...                               image_size=16, patch_size=8, hidden_size=16)
        >>> model, tok = AutoModel.from_pretrained(out), AutoTokenizer.from_pretrained(out)
        >>> batch = tok(["glaucoma"], return_tensors="pt")
        >>> model.get_text_features(**batch).pooler_output.shape
        torch.Size([1, 64])
    """
    from transformers import CLIPConfig, CLIPModel

    spec: dict[str, Any] = {}
    if preset is not None:
        if preset not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(MODEL_PRESETS)}")
        spec = MODEL_PRESETS[preset]
        image_size, patch_size = spec["image_size"], spec["patch_size"]
        max_length, projection_dim = spec["max_length"], spec["projection_dim"]
    for name, v in dict(
        vocab_size=vocab_size,
        max_length=max_length,
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        projection_dim=projection_dim,
    ).items():
        if int(v) <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    if image_size % patch_size:
        raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
    if hidden_size % num_heads:
        raise ValueError(f"num_heads {num_heads} must divide hidden_size {hidden_size}")
    mean = [float(image_mean)] * 3 if isinstance(image_mean, (int, float)) else list(image_mean)
    std = [float(image_std)] * 3 if isinstance(image_std, (int, float)) else list(image_std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"image_mean/image_std need 3 values with std > 0, got {mean}, {std}")

    tokenizer = train_note_tokenizer(texts, vocab_size=vocab_size, max_length=max_length)
    pad, _, bos, eos = (tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS)
    tower = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        projection_dim=projection_dim,
    )
    text_tower = dict(spec["text"], projection_dim=projection_dim) if spec else tower
    vision_tower = dict(spec["vision"], projection_dim=projection_dim) if spec else tower
    extra = {"logit_scale_init_value": spec["logit_scale_init_value"]} if spec else {}
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=max_length,
            pad_token_id=pad,
            bos_token_id=bos,
            eos_token_id=eos,
            **text_tower,
        ),
        vision_config=dict(
            image_size=image_size, patch_size=patch_size, num_channels=3, **vision_tower
        ),
        projection_dim=projection_dim,
        **extra,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _image_processor(image_size, mean, std).save_pretrained(out)
    # Name the generic fast-tokenizer class, which every transformers version resolves.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def warm_start_dual_encoder(
    model_dir: str | os.PathLike[str],
    images: Any,
    texts: Sequence[str],
    labels: Any,
    *,
    steps: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> Path:
    """Warm-start a saved dual encoder so that both towers already separate the classes.

    A CLIP trained from scratch on templated notes sits on a loss plateau for a random number of
    epochs before it finds the cup-to-disc signal (measured: 4 to more than 10 epochs on the
    synthetic twin), so a short fine-tune may end at chance. This gives the tiny model what a Hub
    checkpoint has — features that already mean something — cheaply: both towers' normalised
    embeddings are trained for ``steps`` steps against one shared linear class head (cross-entropy,
    temperature 0.1), which puts images and texts of the same class in the same direction; the
    head is then dropped and the model saved back in place. Runs single-threaded (restored after)
    and seeded, so the result is the same for the same inputs.

    Args:
        model_dir: folder written by :func:`build_tiny_dual_encoder` (model, tokenizer, processor).
        images: uint8 grayscale images ``(N, H, W)``.
        texts: ``N`` notes.
        labels: ``N`` class ids (0/1).
        steps: optimisation steps (0 leaves the model untouched).
        batch_size: samples per step.
        lr: AdamW learning rate.
        seed: seed of the head's initialisation and of the batch order.

    Returns:
        ``model_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: inputs of different lengths, non-binary labels, or negative ``steps``.

    Example:
        >>> import tempfile, numpy as np
        >>> notes = ["c/d 0.3, non-glaucoma.", "c/d 0.8, glaucoma."] * 8
        >>> out = build_tiny_dual_encoder(tempfile.mkdtemp(), notes, image_size=16,
        ...                               patch_size=8, hidden_size=16)
        >>> images = np.zeros((16, 16, 16), np.uint8); images[1::2, 4:12, 4:12] = 255
        >>> warm_start_dual_encoder(out, images, notes, [0, 1] * 8, steps=3) == out
        True
    """
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    out = Path(model_dir)
    labels_t = torch.as_tensor(np_asarray(labels), dtype=torch.long)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not len(texts) == len(labels_t) == len(images):
        raise ValueError(
            f"images, texts and labels differ in length: {len(images)}, {len(texts)}, "
            f"{len(labels_t)}"
        )
    if len(labels_t) and not bool(((labels_t == 0) | (labels_t == 1)).all()):
        raise ValueError("labels must be 0 or 1")
    if steps == 0 or len(labels_t) == 0:
        return out
    model = AutoModel.from_pretrained(out)
    encoder = DualEncoder(model)
    tokenizer = AutoTokenizer.from_pretrained(out)
    transform = ImageTransform.from_processor(AutoImageProcessor.from_pretrained(out))
    pixels = transform.resize(np_asarray(images))
    enc = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dim = model.config.projection_dim
            head = torch.nn.Linear(dim, 2)
            gen = torch.Generator().manual_seed(seed)
            params = [*model.parameters(), *head.parameters()]
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            model.train()
            order = torch.randperm(len(labels_t), generator=gen)
            pos = 0
            for _ in range(steps):
                if pos + batch_size > len(order):
                    order, pos = torch.randperm(len(labels_t), generator=gen), 0
                idx = order[pos : pos + batch_size]
                pos += batch_size
                # L2-normalised embeddings, as training sees them.
                img = encoder.encode_image(transform.normalize(pixels[idx]))
                txt = encoder.encode_text(enc["input_ids"][idx], enc["attention_mask"][idx])
                y = labels_t[idx]
                loss = torch.nn.functional.cross_entropy(
                    head(img) * 10.0, y
                ) + torch.nn.functional.cross_entropy(head(txt) * 10.0, y)
                loss.backward()
                opt.step()
                opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out)
    return out
