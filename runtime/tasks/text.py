"""The text family: BERT-style encoders (classification, token classification, sentence embeddings).

The only module that knows text models take input_ids / attention_mask / token_type_ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from runtime.errors import ArtifactError, BackendError, InputError, SourceError
from runtime.tasks import Family, Feed, TaskInfo, predictions, read_json
from runtime.tasks.meta import ModelMeta

if TYPE_CHECKING:
    from runtime.artifact import Artifact, TensorSpec

# Architecture knowledge as data: the inputs each model type's forward takes, in export order.
INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "bert": ("input_ids", "attention_mask", "token_type_ids"),
    "distilbert": ("input_ids", "attention_mask"),
    "roberta": ("input_ids", "attention_mask"),
}
INPUT_AXES = ("batch", "sequence")  # every text input is int64[batch, sequence]
MASK = "attention_mask"

# Several batch sizes and lengths: a dynamic-axes bug (a dim frozen at trace time) shows up as a
# failure on at least one of them. The last rows of each batch are padded.
VALIDATION_SHAPES: tuple[tuple[int, int], ...] = ((1, 7), (4, 33), (8, 128))
# ids below 1000 exist in every BERT-family vocabulary: feeds for a manifest that does not record
# vocab_size draw from them
FALLBACK_VOCAB = 1000
SPECIAL_IDS = (101, 102, 0)  # BERT's [CLS], [SEP], [PAD]


def pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]], length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """(token ids, type ids) per row -> input_ids / attention_mask / token_type_ids, padded (or cut) to length."""
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    types = np.zeros((len(rows), length), dtype=np.int64)
    for row, (tok, typ) in enumerate(rows):
        k = min(len(tok), length)
        ids[row, :k], mask[row, :k], types[row, :k] = tok[:k], 1, typ[:k]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def as_row(item: Any) -> tuple[Sequence[int], Sequence[int]]:
    """A tokenized input as (ids, type ids): a `tokenizers.Encoding`, or an (ids, type ids) pair."""
    if hasattr(item, "ids"):
        return item.ids, item.type_ids
    return item


def split_by_padding(padded: Sequence[int], max_batch: int, overhead: float) -> list[tuple[int, int]]:
    """Cut rows sorted longest-first into consecutive groups of at most max_batch rows, minimizing the
    tokens computed: each group costs `overhead` (a model call's fixed cost, in token-equivalents) plus
    rows x the group's padded length. Padding a 12-token sentence to 56 costs more than a second call,
    so a group of mixed lengths is split where that pays; overhead=inf gives plain chunks of max_batch."""
    n = len(padded)
    if overhead == float("inf"):
        return [(s, min(s + max_batch, n)) for s in range(0, n, max_batch)]
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of rows [0, j)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_batch), j):  # group [i, j) is padded to padded[i], its longest
            cost = best[i] + overhead + (j - i) * padded[i]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append((cut[j], j))
        j = cut[j]
    return groups[::-1]


def load_tokenizer(artifact: Artifact) -> Any:
    """The artifact's `tokenizers.Tokenizer`, unpadded (batches pad themselves), truncating at max_length."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BackendError("the text pipelines need the tokenizers library; pip install modelkiln") from None
    meta = ModelMeta.from_dict(artifact.meta)
    path = artifact.path / meta.tokenizer
    if not path.is_file():
        raise ArtifactError(f"artifact {artifact.path} has no tokenizer ({path.name}); re-export it with `kiln export`")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for any parse error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"artifact {artifact.path}: {path.name} is not a valid tokenizers file ({reason}); "
                            "re-export it with `kiln export`") from None
    tok.no_padding()  # padding is done per batch, to the batch's own length
    tok.enable_truncation(meta.max_length)
    return tok


def check_texts(texts: Iterable[Any]) -> list[str]:
    """Any iterable of strings as a list (read once: a generator is materialized, not consumed twice),
    or an InputError saying which item is not a valid string."""
    if isinstance(texts, (str, bytes)):
        what = "string" if isinstance(texts, str) else "bytes object (decode it first)"
        raise InputError(f"texts must be a list of strings, got a single {what}; wrap it in a list")
    try:
        texts = list(texts)
    except TypeError:
        raise InputError(f"texts must be a list (or any iterable) of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}] is {type(t).__name__}; every input must be a string")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:  # tokenizers only says "TextEncodeInput must be Union[...]"
            raise InputError(f"texts[{i}] holds {t[e.start]!r} at position {e.start}, half of a UTF-16 surrogate "
                             "pair, which is not a character; every input must be valid Unicode") from None
    return texts


def synthetic_text(input_names: Sequence[str], vocab_size: int, shapes: Sequence[tuple[int, int]] = VALIDATION_SHAPES,
                   seed: int = 0, special_ids: tuple[int, int, int] = SPECIAL_IDS) -> Iterator[Feed]:
    """Seeded token-id feeds that look like tokenized text: [CLS] tokens [SEP] then padding.

    special_ids is (cls, sep, pad); ids outside the vocabulary are replaced by 1..vocab_size-1.
    """
    rng = np.random.default_rng(seed)
    cls_id, sep_id, pad_id = (i if 0 <= i < vocab_size else 1 for i in special_ids)
    low = min(1000, vocab_size // 2)  # skip the reserved/unused ids at the start of BERT vocabularies
    for batch, seq in shapes:
        ids = np.full((batch, seq), pad_id, dtype=np.int64)
        mask = np.zeros((batch, seq), dtype=np.int64)
        for row in range(batch):
            # the first row is full length; the others are shorter, so padding is exercised
            length = seq if row == 0 else int(rng.integers(min(2, seq), seq + 1))
            ids[row, :length] = rng.integers(low, vocab_size, size=length)
            ids[row, 0] = cls_id
            ids[row, length - 1] = sep_id
            mask[row, :length] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        yield {k: feed[k] for k in input_names}


def from_texts(tokenizer: Any, texts: Sequence[str], max_length: int, input_names: Sequence[str],
               batch_size: int = 1, pad_to: int | None = None, pad_id: int = 0) -> Iterator[Feed]:
    """Feeds from texts with a `tokenizers.Tokenizer`. pad_to fixes every batch to one shape
    (onnxruntime's percentile/entropy calibrators need all batches to share a shape)."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    texts = list(texts)
    for start in range(0, len(texts), batch_size):
        encs = tokenizer.encode_batch(texts[start:start + batch_size])
        feed = pad_rows([(e.ids, e.type_ids) for e in encs], pad_to or max(len(e.ids) for e in encs), pad_id)
        yield {k: feed[k] for k in input_names}


def sample_by_length(texts: Sequence[str], lengths: Sequence[int], n: int, seed: int = 0) -> list[str]:
    """n texts stratified by token length: sort by length, cut into n strata, draw one from each."""
    if n >= len(texts):
        return list(texts)
    rng = np.random.default_rng(seed)
    order = np.argsort(np.asarray(lengths), kind="stable")
    strata = np.array_split(order, n)
    return [texts[int(rng.choice(s))] for s in strata]


def checkpoint_text_meta(model_dir: Path, config: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Pre/post-processing facts the runtime needs: labels, max length, pooling, special ids."""
    limits = [int(config.get("max_position_embeddings", 512))]
    tok_cfg = model_dir / "tokenizer_config.json"
    if tok_cfg.is_file():
        mml = read_json(tok_cfg).get("model_max_length")
        if isinstance(mml, int) and 0 < mml < 1_000_000:  # transformers writes 1e30 for "no limit"
            limits.append(mml)
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        msl = read_json(st_cfg).get("max_seq_length", limits[0])
        if not isinstance(msl, int) or isinstance(msl, bool) or msl < 1:
            raise SourceError(f"{st_cfg}: max_seq_length must be a positive integer, got {msl!r}")
        limits.append(msl)
    meta: dict[str, Any] = {"model_type": config["model_type"], "max_length": min(limits),
                            "pad_token_id": int(config.get("pad_token_id") or 0),
                            "vocab_size": int(config.get("vocab_size", 0)),
                            "num_heads": int(config.get("num_attention_heads", config.get("n_heads", 0))),
                            "hidden_size": int(config.get("hidden_size", config.get("dim", 0)))}
    if task == "text-classification" or task == "token-classification":
        id2label = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(int(config.get("num_labels", 2)))}
        meta["labels"] = {str(k): v for k, v in id2label.items()}
    if task == "feature-extraction":
        pooling, normalize = "mean", False
        pool_cfg = model_dir / "1_Pooling" / "config.json"
        if pool_cfg.is_file() and read_json(pool_cfg).get("pooling_mode_cls_token"):
            pooling = "cls"
        modules = model_dir / "modules.json"
        if modules.is_file():
            normalize = any("Normalize" in str(m.get("type", "")) if isinstance(m, dict) else False
                            for m in read_json(modules, list))
        meta.update(pooling=pooling, normalize=normalize)
    return meta


def tokenize_for_training(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """(token ids, type ids) per text with a transformers tokenizer (what training batches are collated from)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
    return enc["input_ids"], types


def pool(hidden: np.ndarray, mask: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """Sentence embeddings from [batch, sequence, hidden]: mean over real tokens, or the first token."""
    if meta.pooling == "cls":
        emb = hidden[:, 0]
    else:
        m = mask[:, :, None].astype(hidden.dtype)
        emb = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    emb = emb.astype(np.float32)
    if meta.normalize:
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def capture_safe_mask(mask: Any, dtype: Any, model_type: str) -> Any:
    """A 2-D 0/1 attention mask in the form whose handling in transformers reads no tensor value on the host.

    Given a 2-D mask, transformers asks `mask.all()` (can the mask be skipped?), a host sync that CUDA graph
    capture refuses (and whose answer a graph would bake in for every replay). transformers 5 takes a 4-D
    additive mask as it is; 4.x BERT/RoBERTa turn a 3-D one into the additive form with tensor arithmetic,
    and 4.x DistilBERT has no such form."""
    import torch
    import transformers

    batch, seq = mask.shape
    if int(transformers.__version__.split(".")[0]) >= 5:
        additive = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        return additive.expand(batch, 1, seq, seq)
    if model_type == "distilbert":
        raise BackendError(f"CUDA graphs for distilbert need transformers >= 5 (this is {transformers.__version__}); "
                           "upgrade transformers, or run without cuda_graphs")
    return mask[:, None, :].expand(batch, seq, seq)


class TextFamily(Family):
    name = "text"
    tasks = {
        "text-classification": TaskInfo("AutoModelForSequenceClassification", "logits", ("batch", "num_labels")),
        "token-classification": TaskInfo("AutoModelForTokenClassification", "logits",
                                         ("batch", "sequence", "num_labels")),
        "feature-extraction": TaskInfo("AutoModel", "last_hidden_state", ("batch", "sequence", "hidden")),
    }
    # onnxruntime.transformers.optimizer fuses all three as "bert"
    model_types = {"bert": "bert", "distilbert": "bert", "roberta": "bert"}

    def input_specs(self, model_type: str, config: Mapping[str, Any]) -> tuple[TensorSpec, ...]:
        from runtime.artifact import TensorSpec

        if model_type not in INPUT_NAMES:
            raise SourceError(f"unsupported model_type {model_type!r}; Kiln exports {', '.join(INPUT_NAMES)}")
        return tuple(TensorSpec(n, "int64", INPUT_AXES) for n in INPUT_NAMES[model_type])

    def checkpoint_meta(self, model_dir: Path, config: Mapping[str, Any], task: str) -> dict[str, Any]:
        return checkpoint_text_meta(model_dir, config, task)

    def example_feed(self, inputs: Sequence[TensorSpec], meta: ModelMeta, batch: int = 1,
                     size: int | None = None, seed: int = 0) -> Feed:
        """A full-length (unpadded) feed of in-vocabulary ids, `size` tokens per row (default 128)."""
        seq = size or 128
        rng = np.random.default_rng(seed)
        vocab = meta.vocab_size or FALLBACK_VOCAB
        ids = rng.integers(min(1000, vocab // 2), vocab, size=(batch, seq), dtype=np.int64)
        full = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return {s.name: full[s.name] for s in inputs}

    def validation_feeds(self, inputs: Sequence[TensorSpec], meta: ModelMeta, seed: int = 0) -> list[Feed]:
        """VALIDATION_SHAPES with lengths capped at the model's limit, rows padded like real batches."""
        shapes = [(b, min(s, meta.max_length)) for b, s in VALIDATION_SHAPES]
        return list(synthetic_text([s.name for s in inputs], meta.vocab_size or FALLBACK_VOCAB, shapes, seed))

    def preprocess(self, artifact: Artifact, raw: Sequence[Any]) -> list[Any]:
        """Texts -> `tokenizers.Encoding`s (truncated at max_length)."""
        return load_tokenizer(artifact).encode_batch(check_texts(raw))

    def collate(self, items: Sequence[Any], input_names: Sequence[str], meta: ModelMeta,
                length: int | None = None) -> Feed:
        """Pad tokenized items to `length` (default: the longest) with the model's pad id."""
        rows = [as_row(i) for i in items]
        feed = pad_rows(rows, length or max(len(ids) for ids, _ in rows), meta.pad_token_id)
        return {k: feed[k] for k in input_names}

    def calibration_feeds(self, artifact: Artifact, raw: Sequence[Any], n: int, fixed_shape: bool = False,
                          batch_size: int = 8, seed: int = 0, pad_to: int | None = None) -> list[Feed]:
        """n texts stratified by token length, tokenized; fixed_shape pads every batch to the longest chosen,
        pad_to to that many tokens (within max_length)."""
        meta = ModelMeta.from_dict(artifact.meta)
        tok = load_tokenizer(artifact)
        texts = check_texts(raw)
        lengths = [len(e.ids) for e in tok.encode_batch(texts)]
        chosen = sample_by_length(texts, lengths, n, seed)
        if pad_to is not None:
            pad_to = min(pad_to, meta.max_length)
        elif fixed_shape and lengths:
            pad_to = min(max(lengths), meta.max_length)
        return list(from_texts(tok, chosen, meta.max_length, [s.name for s in artifact.inputs], batch_size,
                               pad_to, meta.pad_token_id))

    def postprocess(self, task: str, meta: ModelMeta, outputs: Mapping[str, np.ndarray], feed: Feed) -> list[Any]:
        """text-classification: a Prediction per row; feature-extraction: an embedding per row;
        token-classification: each row's logits for its real tokens."""
        out = outputs[self.tasks[task].output]
        mask = feed.get(MASK)
        if mask is None:
            mask = np.ones(out.shape[:2], dtype=np.int64)
        if task == "text-classification":
            return predictions(out, meta.labels)
        if task == "feature-extraction":
            return list(pool(out, mask, meta))
        return [row[m.astype(bool)] for row, m in zip(out, mask)]

    def graph_safe_inputs(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """The attention mask in the form transformers handles without reading it on the host."""
        if MASK not in inputs:
            return inputs
        dtype = next(model.parameters()).dtype
        return {**inputs, MASK: capture_safe_mask(inputs[MASK], dtype, getattr(model.config, "model_type", ""))}

    def index_limits(self, inputs: Sequence[TensorSpec], meta: ModelMeta) -> dict[str, int]:
        """Token ids index the embedding table: below vocab_size, where the manifest records it."""
        names = {s.name for s in inputs}
        return {"input_ids": meta.vocab_size} if meta.vocab_size > 0 and "input_ids" in names else {}

    def serves_inputs(self, names: Sequence[str]) -> bool:
        return bool(names) and set(names) <= {n for v in INPUT_NAMES.values() for n in v}

    def pad_feed(self, feed: Feed, length: int, meta: ModelMeta) -> Feed | None:
        """Padding the model masks out: the pad id, mask 0, type 0 after each row's tokens. Only with a mask:
        without one, padding would change what the model computes."""
        if MASK not in feed:
            return None
        out = {}
        for name, value in feed.items():
            extra = length - value.shape[1]
            if extra < 0:
                raise ValueError(f"cannot pad {name} of length {value.shape[1]} to {length}")
            fill = meta.pad_token_id if name == "input_ids" else 0
            out[name] = np.pad(value, ((0, 0), (0, extra)), constant_values=fill)
        return out

    def mask(self, feed: Feed) -> np.ndarray | None:
        """Which positions are real tokens (1) and which padding (0), when the model takes a mask."""
        return feed.get(MASK)


FAMILY = TextFamily()
