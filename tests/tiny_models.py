"""Tiny random Hugging Face checkpoints for tests, with a real or on-the-fly tokenizer.

The RoBERTa tokenizer is the real one from `../shared/data/roberta_tokenizer` (CI has it beside
the checkout); where that folder is absent, as on a user's clone, a byte-level BPE is trained on
the fly so the tests still run. Weights are random (no RoBERTa weights can be downloaded here).
"""

import pathlib
import shutil

import shared_data

SHARED_TOKENIZER = shared_data.ROBERTA_TOKENIZER_DIR

_WORDS = (
    "the a an it is was good bad great terrible movie film plot actor yes no maybe not "
    "very really quite story this that and but or because so fun boring dull bright "
    "man woman city river house car dog cat runs walks eats sees likes hates"
).split()


# RoBERTa's special tokens; its tokenizer folder in ../shared has no tokenizer_config.json to
# name them, and the trained stand-in needs them too.
ROBERTA_SPECIALS = dict(
    bos_token="<s>",
    eos_token="</s>",
    sep_token="</s>",
    cls_token="<s>",
    unk_token="<unk>",
    pad_token="<pad>",
    mask_token="<mask>",
)


def trained_byte_level_bpe(corpus: list[str]):
    """A byte-level BPE in RoBERTa's format (vocabulary 400, RoBERTa's special tokens), trained
    on `corpus`: the stand-in for the real RoBERTa tokenizer where `../shared` is absent."""
    import tokenizers
    import transformers

    tokenizer = tokenizers.ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(
        corpus,
        vocab_size=400,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    return transformers.RobertaTokenizerFast(
        tokenizer_object=tokenizer._tokenizer, **ROBERTA_SPECIALS
    )


def roberta_tokenizer_kind() -> str:
    """Which tokenizer `install_roberta_tokenizer` installs here: "real" or "trained"."""
    return "real" if SHARED_TOKENIZER.is_dir() else "trained"


def install_roberta_tokenizer(directory: pathlib.Path) -> str:
    """Puts a RoBERTa tokenizer in `directory`; returns which one ("real" or "trained")."""
    import transformers

    if roberta_tokenizer_kind() == "real":
        tokenizer = transformers.RobertaTokenizerFast.from_pretrained(str(SHARED_TOKENIZER))
        tokenizer.save_pretrained(directory)
        return "real"
    corpus = [" ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(12)) for i in range(300)]
    trained_byte_level_bpe(corpus).save_pretrained(directory)
    return "trained"


def make_tiny_roberta(
    directory: pathlib.Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    with_mlm_head: bool = True,
) -> pathlib.Path:
    """A tiny random RoBERTa (with an MLM head) and a RoBERTa tokenizer in `directory`."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    which = install_roberta_tokenizer(directory)
    vocab_size = len(transformers.AutoTokenizer.from_pretrained(str(directory)))
    print(f"tiny RoBERTa tokenizer: {which}, vocab {vocab_size}")
    config = transformers.RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden + 5,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model_class = transformers.RobertaForMaskedLM if with_mlm_head else transformers.RobertaModel
    model_class(config).save_pretrained(directory, safe_serialization=True)
    return directory


def make_tiny_bert(
    directory: pathlib.Path, *, hidden: int = 32, layers: int = 2, seed: int = 0
) -> pathlib.Path:
    """A tiny random BertModel (no MLM head, like MiniLM) with a small WordPiece vocabulary."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    vocab = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + _WORDS + [f"word{i}" for i in range(40)]
    )
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores BertTokenizerFast(vocab_file=...); from_pretrained reads vocab.txt.
    transformers.BertTokenizerFast.from_pretrained(str(directory)).save_pretrained(directory)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden + 5,
        max_position_embeddings=130,
        type_vocab_size=2,
    )
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


def make_tiny_mpnet(
    directory: pathlib.Path, *, hidden: int = 32, layers: int = 2, seed: int = 0
) -> pathlib.Path:
    """A tiny random MPNetModel (no MLM head, like all-mpnet-base-v2) with its WordPiece
    tokenizer: RoBERTa's `<s> <pad> </s> <unk>` first and `<mask>` last, as the real vocab.txt."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    vocab = (
        ["<s>", "<pad>", "</s>", "<unk>", "[PAD]", "[UNK]"]
        + _WORDS
        + [f"word{i}" for i in range(40)]
        + ["<mask>"]
    )
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.MPNetTokenizerFast.from_pretrained(str(directory)).save_pretrained(directory)
    config = transformers.MPNetConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden + 5,
        max_position_embeddings=130,
    )
    torch.manual_seed(seed)
    transformers.MPNetModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


def copy_checkpoint(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    shutil.copytree(source, target)
    return target


def _corpus() -> list[str]:
    return [" ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(12)) for i in range(300)]


def trained_unigram_tokenizer():
    """A SentencePiece-style Unigram tokenizer in DeBERTa-v3's format (`▁` starts a word; [PAD],
    [CLS], [SEP], [UNK] first, [MASK] last): no DeBERTa tokenizer can be downloaded here.

    The pieces are learnt by BPE merges on the test words (the Unigram trainer of `tokenizers`
    keeps mostly single letters on so small a corpus); each piece scores -1 and each letter -5,
    so the Viterbi segmentation takes the fewest, longest pieces.
    """
    import tokenizers
    import transformers

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False
    )
    bpe.train_from_iterator(_corpus(), trainer)
    pieces = sorted(set(bpe.get_vocab()) - set(specials), key=lambda p: bpe.token_to_id(p))
    vocab = [(piece, 0.0) for piece in specials]
    vocab += [(piece, -1.0 if len(piece) > 1 else -5.0) for piece in pieces]
    return transformers.DebertaV2Tokenizer(vocab=[*vocab, ("[MASK]", 0.0)])


def trained_modernbert_tokenizer():
    """A byte-level BPE with ModernBERT's special tokens ([CLS], [SEP], [MASK], [PAD], [UNK]),
    trained on the test words: the stand-in for ModernBERT's own BPE tokenizer."""
    import tokenizers
    import transformers

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tokenizer = tokenizers.ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(
        _corpus(), vocab_size=400, min_frequency=1, special_tokens=specials, show_progress=False
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer._tokenizer,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
    )


def make_tiny_deberta(
    directory: pathlib.Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    initializer_range: float = 0.02,
) -> pathlib.Path:
    """A tiny random DeBERTa-v3 (`DebertaV2ForMaskedLM`, v3 settings and MLM head) with a trained
    Unigram tokenizer. Small buckets (8) and span (32) make the log buckets matter at length 16."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = trained_unigram_tokenizer()
    tokenizer.save_pretrained(directory)
    config = transformers.DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden + 5,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
        **DEBERTA_V3_SETTINGS,
    )
    torch.manual_seed(seed)
    transformers.DebertaV2ForMaskedLM(config).save_pretrained(directory, safe_serialization=True)
    return directory


def make_tiny_modernbert(
    directory: pathlib.Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    initializer_range: float = 0.02,
) -> pathlib.Path:
    """A tiny random `ModernBertForMaskedLM` with a trained BPE tokenizer: layer 0 global,
    layer 1 local with an 8-token window (4 each side), so the window matters at length 16."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = trained_modernbert_tokenizer()
    tokenizer.save_pretrained(directory)
    config = transformers.ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden + 5,
        max_position_embeddings=128,
        local_attention=8,
        global_attn_every_n_layers=2,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        cls_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(seed)
    transformers.ModernBertForMaskedLM(config).save_pretrained(directory, safe_serialization=True)
    return directory


# DeBERTa-v3's options (microsoft/deberta-v3-* config.json) with small buckets for tiny tests.
DEBERTA_V3_SETTINGS = dict(
    relative_attention=True,
    position_buckets=8,
    max_relative_positions=32,
    pos_att_type=["p2c", "c2p"],
    share_att_key=True,
    norm_rel_ebd="layer_norm",
    position_biased_input=False,
    type_vocab_size=0,
    legacy=False,  # The checkpoints' `lm_predictions.lm_head`.
)
