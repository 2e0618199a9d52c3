"""A tiny randomly initialised BERT-style model and tokenizer, built in code: the ci suite's model
(benchmarks/harness/ci_model.py) and the unit tests' (tests/conftest.py). Here, in an installed package, because
`kiln bench --suite ci` runs from an installed `kiln`, where the tests folder is not importable."""

from __future__ import annotations

from pathlib import Path

WORDS = ("the a an movie film story acting plot is was not very good great bad boring fun dull "
         "beautiful awful , . ! ' and but it this too long short").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz",
         *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]


def write_tokenizer(path: Path) -> None:
    """A BERT-style WordPiece tokenizer over VOCAB, saved as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=160)
    fast.save_pretrained(str(path))
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")


def build_tiny(path: Path, model_type: str = "bert", task: str = "text-classification", seed: int = 0) -> Path:
    """A tiny randomly initialised model + tokenizer, saved as a Hugging Face directory."""
    import torch
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=len(VOCAB), max_position_embeddings=160, num_labels=2,
                  id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    if model_type == "bert":
        cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, **common)
    elif model_type == "distilbert":
        cfg = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **common)
    elif model_type == "roberta":
        cfg = transformers.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, pad_token_id=0, **common)
    else:
        raise ValueError(model_type)
    auto = transformers.AutoModelForSequenceClassification if task == "text-classification" else transformers.AutoModel
    model = auto.from_config(cfg).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    write_tokenizer(path)
    return path
