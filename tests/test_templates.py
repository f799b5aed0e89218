"""Tests of the template language and the tokenized batch contract."""

import json
import random

import numpy as np
import pytest
import shared_data
import tiny_models
import transformers

from infoprompt_jax.data import templates
from infoprompt_jax.data.templates import Template, TemplateError, TemplateTokenizer

ROBERTA_DIR = shared_data.ROBERTA_TOKENIZER_DIR

WORDS = (
    "it is great the movie was good bad and a film story yes no not very "
    "this that plot actor acting fun boring long short scene music we they "
    "liked hated ending located in of question answer"
).split()

SINGLE = "<s> {sentence} {prompt} <mask> </s>"
PAIR = "<s> {sentence1} {prompt} <mask> {sentence2} </s>"
PAIR_SEP = "<s> {sentence1} </s> </s> {sentence2} {prompt} <mask> </s>"
PAIR_LITERAL = "<s> question : {sentence1} </s> {sentence2} it was {prompt} <mask> </s>"
NUM_PROMPT_TOKENS = 3


def _sentence(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def _train_byte_level_bpe() -> transformers.PreTrainedTokenizerFast:
    """The stand-in RoBERTa tokenizer, trained on text over WORDS (so each has its own token)."""
    rng = random.Random(0)
    lines = ["It is great", "It was bad"] * 20 + [_sentence(rng, 12) for _ in range(60)]
    return tiny_models.trained_byte_level_bpe(lines)


@pytest.fixture(scope="module")
def roberta():
    """The real RoBERTa tokenizer from ../shared, or a trained stand-in in a bare clone."""
    if ROBERTA_DIR.is_dir():
        print(f"RoBERTa tokenizer: real, from {ROBERTA_DIR}")
        return transformers.AutoTokenizer.from_pretrained(
            str(ROBERTA_DIR), **tiny_models.ROBERTA_SPECIALS
        )
    print(f"RoBERTa tokenizer: {ROBERTA_DIR} is absent; using a byte-level BPE trained here")
    return _train_byte_level_bpe()


@pytest.fixture(scope="module")
def trained_bpe():
    return _train_byte_level_bpe()


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    """A BERT WordPiece tokenizer over WORDS (lower-cased, as BERT uncased)."""
    folder = tmp_path_factory.mktemp("wordpiece")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ".", "##s"] + sorted(set(WORDS))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # from_pretrained, not BertTokenizerFast(vocab_file=...): transformers 5 ignores vocab_file.
    return transformers.BertTokenizerFast.from_pretrained(str(folder))


@pytest.fixture(params=["roberta", "wordpiece", "trained_bpe"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def _long_example(template: str) -> dict[str, str]:
    rng = random.Random(len(template))
    fields = Template.parse(template).fields
    # Unequal lengths, so which field is cut first matters.
    return {name: _sentence(rng, 30 - 12 * i) for i, name in enumerate(fields)}


def _runs(mask_T: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of ones."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask_T, [0]])))
    return list(zip(edges[::2], edges[1::2]))


def _check_contract(tokenizer, encoded: dict[str, np.ndarray], max_len: int, n_p: int) -> None:
    """Everything the batch contract promises about one encoded example."""
    assert set(encoded) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "prompt_positions",
        "mask_position",
        "unprompted_input_ids",
        "unprompted_attention_mask",
        "unprompted_token_type_ids",
        "unprompted_mask_position",
        "unprompted_context_mask",
    }
    for key, value in encoded.items():
        assert value.dtype == np.int32, key
        expected_shape = {
            "prompt_positions": (n_p,),
            "mask_position": (),
            "unprompted_mask_position": (),
        }.get(key, (max_len,))
        assert value.shape == expected_shape, key
    ids, unprompted_ids = encoded["input_ids"], encoded["unprompted_input_ids"]
    length = int(encoded["attention_mask"].sum())
    np.testing.assert_array_equal(encoded["attention_mask"], np.arange(max_len) < length)
    assert np.all(ids[length:] == tokenizer.pad_token_id)
    assert ids[0] == tokenizer.cls_token_id and ids[length - 1] == tokenizer.sep_token_id
    # Prompt slots: n_p contiguous unk tokens at prompt_positions, and no other unk.
    slots = encoded["prompt_positions"]
    np.testing.assert_array_equal(slots, slots[0] + np.arange(n_p))
    assert np.all(ids[slots] == tokenizer.unk_token_id)
    assert np.sum(ids[:length] == tokenizer.unk_token_id) == n_p
    assert ids[encoded["mask_position"]] == tokenizer.mask_token_id
    assert np.sum(ids == tokenizer.mask_token_id) == 1
    # The unprompted input is the prompted one with the slots removed, padded to the same length.
    unprompted_length = length - n_p
    np.testing.assert_array_equal(
        encoded["unprompted_attention_mask"], np.arange(max_len) < unprompted_length
    )
    np.testing.assert_array_equal(
        unprompted_ids[:unprompted_length], np.delete(ids[:length], slots)
    )
    assert np.all(unprompted_ids[unprompted_length:] == tokenizer.pad_token_id)
    np.testing.assert_array_equal(
        encoded["unprompted_token_type_ids"][:unprompted_length],
        np.delete(encoded["token_type_ids"][:length], slots),
    )
    assert np.all(encoded["token_type_ids"][length:] == 0)
    assert np.all(encoded["unprompted_token_type_ids"][unprompted_length:] == 0)
    assert unprompted_ids[encoded["unprompted_mask_position"]] == tokenizer.mask_token_id
    assert np.all(encoded["unprompted_context_mask"][unprompted_length:] == 0)


def _field_tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", [SINGLE, PAIR, PAIR_SEP, PAIR_LITERAL])
def test_contract_holds_at_every_length(tokenizer, template):
    example = _long_example(template)
    fields = Template.parse(template).fields
    full_tokens = [_field_tokens(tokenizer, example[name]) for name in fields]
    n_p = NUM_PROMPT_TOKENS
    untruncated = TemplateTokenizer(tokenizer, template, n_p, max_len=1000).encode(example)
    full_length = int(untruncated["attention_mask"].sum())
    fixed_unprompted = untruncated["unprompted_input_ids"][
        (untruncated["unprompted_attention_mask"] == 1)
        & (untruncated["unprompted_context_mask"] == 0)
    ]
    min_length = len(fixed_unprompted) + n_p + len(fields)
    assert full_length == len(fixed_unprompted) + n_p + sum(map(len, full_tokens))

    previous_counts = None
    for max_len in range(full_length + 2, min_length - 1, -1):
        template_tokenizer = TemplateTokenizer(tokenizer, template, n_p, max_len)
        assert template_tokenizer.min_length == min_length
        encoded = template_tokenizer.encode(example)
        _check_contract(tokenizer, encoded, max_len, n_p)
        assert encoded["attention_mask"].sum() == min(max_len, full_length)
        unprompted_ids, context = (
            encoded["unprompted_input_ids"],
            encoded["unprompted_context_mask"],
        )
        # unprompted_context_mask marks exactly the field tokens, in template order, each a prefix
        # of the field's own tokenization; everything else is the fixed part of the template.
        runs = _runs(context)
        assert len(runs) == len(fields)
        counts = [end - start for start, end in runs]
        for (start, end), tokens in zip(runs, full_tokens):
            assert unprompted_ids[start:end].tolist() == tokens[: end - start]
        real = encoded["unprompted_attention_mask"] == 1
        np.testing.assert_array_equal(unprompted_ids[real & (context == 0)], fixed_unprompted)
        # Truncation: only shrinks, cuts the longest field first (ties: the later one).
        if previous_counts is not None:
            assert all(c <= p for c, p in zip(counts, previous_counts))
        for i, (count, tokens) in enumerate(zip(counts, full_tokens)):
            if count < len(tokens):
                for j, other in enumerate(counts):
                    assert other <= count + (1 if j < i else 0), (max_len, counts)
        previous_counts = counts
    assert previous_counts == [1] * len(fields)

    with pytest.raises(TemplateError) as error:
        TemplateTokenizer(tokenizer, template, n_p, min_length - 1)
    assert template in str(error.value) and f"minimum length is {min_length}" in str(error.value)


def test_roberta_ids_by_hand(roberta):
    encoded = TemplateTokenizer(roberta, SINGLE, 2, max_len=10).encode({"sentence": "It is great"})
    specials = [roberta.unk_token_id] * 2 + [roberta.mask_token_id, roberta.sep_token_id]
    expected = [0] + _field_tokens(roberta, "It is great") + specials + [1, 1]
    assert encoded["input_ids"].tolist() == expected
    assert encoded["attention_mask"].tolist() == [1] * 8 + [0] * 2
    assert encoded["prompt_positions"].tolist() == [4, 5]
    assert encoded["mask_position"] == 6
    assert encoded["unprompted_input_ids"].tolist() == expected[:4] + expected[6:8] + [1] * 4
    assert encoded["unprompted_mask_position"] == 4
    assert encoded["unprompted_context_mask"].tolist() == [0, 1, 1, 1] + [0] * 6
    assert encoded["token_type_ids"].tolist() == [0] * 10


@shared_data.requires_shared(ROBERTA_DIR)
def test_real_roberta_vocabulary_ids(roberta):
    """Ids checked by hand against the real vocab.json, so the stand-in cannot hide a change."""
    encoded = TemplateTokenizer(roberta, SINGLE, 2, max_len=10).encode({"sentence": "It is great"})
    tokens = ["<s>", "It", "Ġis", "Ġgreat", "<unk>", "<unk>", "<mask>", "</s>"]
    vocab = json.loads((ROBERTA_DIR / "vocab.json").read_text())
    assert [vocab[t] for t in tokens] == [0, 243, 16, 372, 3, 3, 50264, 2]
    assert encoded["input_ids"].tolist() == [0, 243, 16, 372, 3, 3, 50264, 2, 1, 1]
    # Hello 31414, Ġthere 89: a second field has no leading space, as in HF's pair
    # `<s> A </s></s> B </s>`.
    pair = {"sentence1": "It is great", "sentence2": "Hello there"}
    encoded = TemplateTokenizer(roberta, PAIR, 1, max_len=32).encode(pair)
    assert encoded["input_ids"][6:8].tolist() == [31414, 89]
    assert roberta("It is great", "Hello there")["input_ids"][-3:-1] == [31414, 89]
    assert templates.verbalizer_token_ids(roberta, [" yes", " no"]) == [[4420], [117]]


def test_roberta_second_field_has_no_leading_space(roberta):
    """Each field is tokenized on its own, like Hugging Face's second sentence of a pair."""
    example = {"sentence1": "It is great", "sentence2": "Hello there"}
    encoded = TemplateTokenizer(roberta, PAIR, 1, max_len=32).encode(example)
    first, second = (_field_tokens(roberta, text) for text in example.values())
    expected = (
        [roberta.cls_token_id]
        + first
        + [roberta.unk_token_id, roberta.mask_token_id]
        + second
        + [roberta.sep_token_id]
    )
    assert encoded["input_ids"][: len(expected)].tolist() == expected
    assert second != _field_tokens(roberta, " Hello there")  # "Hello", not "ĠHello"


def test_literal_words_are_tokenized_as_one_phrase(roberta):
    template = Template.parse("<s> {sentence} It was {prompt} <mask> </s>")
    assert template.segments[2] == templates.Segment(templates.LITERAL, "It was")
    encoded = TemplateTokenizer(roberta, template, 1, max_len=16).encode({"sentence": "fun"})
    literal = _field_tokens(roberta, "It was")
    start = 1 + len(_field_tokens(roberta, "fun"))
    assert encoded["input_ids"][start : start + len(literal)].tolist() == literal
    assert encoded["unprompted_context_mask"].sum() == len(_field_tokens(roberta, "fun"))


def test_field_text_is_stripped(roberta):
    template_tokenizer = TemplateTokenizer(roberta, SINGLE, 1, max_len=12)
    padded = template_tokenizer.encode({"sentence": "  It is great "})
    clean = template_tokenizer.encode({"sentence": "It is great"})
    for key in clean:
        np.testing.assert_array_equal(padded[key], clean[key], err_msg=key)


def test_ties_cut_the_later_field(wordpiece):
    example = {"sentence1": "the movie was good", "sentence2": "the film was bad"}
    full = TemplateTokenizer(wordpiece, PAIR, 1, max_len=64).encode(example)
    length = int(full["attention_mask"].sum())  # [CLS] 4 [P] [MASK] 4 [SEP] = 12
    assert length == 12
    for max_len, counts in ((11, [4, 3]), (10, [3, 3]), (9, [3, 2])):
        encoded = TemplateTokenizer(wordpiece, PAIR, 1, max_len).encode(example)
        assert [e - s for s, e in _runs(encoded["unprompted_context_mask"])] == counts, max_len


def test_bert_pair_token_types(wordpiece):
    template = "<s> {sentence1} </s> {sentence2} {prompt} <mask> </s>"
    example = {"sentence1": "it is great", "sentence2": "we liked it"}
    encoded = TemplateTokenizer(wordpiece, template, 2, max_len=16).encode(example)
    # [CLS] it is great [SEP] | we liked it [P] [P] [MASK] [SEP] [PAD] ...
    assert encoded["token_type_ids"].tolist() == [0] * 5 + [1] * 7 + [0] * 4
    assert encoded["unprompted_token_type_ids"].tolist() == [0] * 5 + [1] * 5 + [0] * 6
    # The unprompted input is BERT's own pair encoding with the mask before the last [SEP].
    bert = wordpiece("it is great", "we liked it")
    unprompted_ids = encoded["unprompted_input_ids"][:10].tolist()
    assert unprompted_ids == bert["input_ids"][:-1] + [
        wordpiece.mask_token_id,
        wordpiece.sep_token_id,
    ]
    assert encoded["unprompted_token_type_ids"][:10].tolist() == bert["token_type_ids"][:-1] + [
        1,
        1,
    ]
    off = TemplateTokenizer(wordpiece, template, 2, max_len=16, use_token_types=False)
    assert off.encode(example)["token_type_ids"].sum() == 0


def test_token_types_follow_the_tokenizer_by_default(roberta, wordpiece):
    example = {"sentence1": "it is great", "sentence2": "we liked it"}
    # RoBERTa's type vocabulary has one entry: its `</s> </s>` template stays all zeros.
    assert TemplateTokenizer(roberta, PAIR_SEP, 2, 32).encode(example)["token_type_ids"].sum() == 0
    forced = TemplateTokenizer(roberta, PAIR_SEP, 2, 32, use_token_types=True).encode(example)
    assert forced["token_type_ids"].sum() > 0
    # A BERT single-sentence template has no separator before a field: all zeros.
    single = TemplateTokenizer(wordpiece, SINGLE, 2, 32).encode({"sentence": "it is great"})
    assert single["token_type_ids"].sum() == 0


def test_encode_batch_stacks_encode(tokenizer):
    rng = random.Random(1)
    examples = [
        {"sentence1": _sentence(rng, n), "sentence2": _sentence(rng, m), "label": "x"}
        for n, m in ((3, 20), (25, 2), (0, 5), (10, 10))
    ]
    template_tokenizer = TemplateTokenizer(tokenizer, PAIR_SEP, NUM_PROMPT_TOKENS, max_len=24)
    batch = template_tokenizer.encode_batch(examples)
    singles = [template_tokenizer.encode(example) for example in examples]
    for key, value in batch.items():
        np.testing.assert_array_equal(value, np.stack([s[key] for s in singles]), err_msg=key)
    assert batch["input_ids"].shape == (4, 24) and batch["prompt_positions"].shape == (4, 3)
    # An empty field keeps zero tokens: nothing of it reaches the context mask.
    assert len(_runs(batch["unprompted_context_mask"][2])) == 1
    empty = template_tokenizer.encode_batch([])
    assert empty["input_ids"].shape == (0, 24) and empty["prompt_positions"].shape == (0, 3)
    assert empty["mask_position"].shape == (0,)
    assert all(value.dtype == np.int32 for value in empty.values())


def test_zero_prompt_tokens_give_the_unprompted_input(wordpiece):
    encoded = TemplateTokenizer(wordpiece, SINGLE, 0, max_len=8).encode({"sentence": "it is"})
    assert encoded["prompt_positions"].shape == (0,)
    for key in ("input_ids", "attention_mask", "token_type_ids", "mask_position"):
        np.testing.assert_array_equal(encoded[key], encoded["unprompted_" + key])


@pytest.mark.parametrize(
    "text, message",
    [
        ("<s> {sentence} {prompt} <mask> <mask> </s>", "2 <mask> items"),
        ("<s> {sentence} <mask> </s>", "0 {prompt} items"),
        ("<s> {sentence} {prompt} {prompt} <mask> </s>", "2 {prompt} items"),
        ("<s> {prompt} <mask> </s>", "no text field"),
        ("<s> {Sentence} {prompt} <mask> </s>", "'{Sentence}' is not a valid field"),
        ("<s> {sentence}. {prompt} <mask> </s>", "'{sentence}.' mixes a placeholder"),
        ("<s> {sentence} {prompt} <mask> {sentence} </s>", "['sentence'] more than once"),
    ],
)
def test_parse_errors_quote_the_template(text, message):
    with pytest.raises(TemplateError) as error:
        Template.parse(text)
    assert repr(text) in str(error.value) and message in str(error.value)


def test_parse_segments():
    template = Template.parse(PAIR_SEP)
    assert template.fields == ("sentence1", "sentence2")
    assert [s.kind for s in template.segments] == [
        "bos",
        "field",
        "sep",
        "sep",
        "field",
        "prompt",
        "mask",
        "sep",
    ]


def test_missing_field_names_the_field_and_the_needs(wordpiece):
    template_tokenizer = TemplateTokenizer(wordpiece, PAIR, 1, max_len=16)
    with pytest.raises(KeyError) as error:
        template_tokenizer.encode_batch([{"sentence1": "a", "sentence2": "b"}, {"sentence1": "a"}])
    assert "example 1 has no field 'sentence2'" in str(error.value)
    assert "['sentence1', 'sentence2']" in str(error.value)
    with pytest.raises(TypeError, match="field 'sentence2' must be a string"):
        template_tokenizer.encode({"sentence1": "a", "sentence2": None})


def test_bad_lengths_are_refused(wordpiece):
    with pytest.raises(TypeError, match="max_len must be an int, got NoneType"):
        TemplateTokenizer(wordpiece, SINGLE, 1, max_len=None)
    with pytest.raises(ValueError, match="num_prompt_tokens must be >= 0, got -1"):
        TemplateTokenizer(wordpiece, SINGLE, -1, max_len=16)
    assert TemplateTokenizer(wordpiece, SINGLE, np.int64(2), np.int64(16)).max_len == 16


def test_tokenizer_without_special_tokens_is_refused():
    bare = _train_byte_level_bpe()
    bare = transformers.PreTrainedTokenizerFast(tokenizer_object=bare.backend_tokenizer)
    with pytest.raises(ValueError, match="pad_token=") as error:
        TemplateTokenizer(bare, SINGLE, 1, max_len=16)
    assert "has no pad_token" in str(error.value)


def test_roberta_verbalizers_are_single_space_prefixed_tokens(roberta):
    vocab = roberta.get_vocab()
    expected = [[vocab["Ġyes"]], [vocab["Ġno"]]]
    assert templates.verbalizer_token_ids(roberta, [" yes", " no"]) == expected
    assert templates.verbalizer_token_ids(roberta, ["yes", "no"]) == expected
    located_in = templates.verbalizer_token_ids(roberta, [" located in"])[0]
    assert located_in == [vocab["Ġlocated"], vocab["Ġin"]]


def test_wordpiece_verbalizers(wordpiece):
    vocab = wordpiece.get_vocab()
    assert templates.verbalizer_token_ids(wordpiece, [" yes", "no", "greats"]) == [
        [vocab["yes"]],
        [vocab["no"]],
        [vocab["great"], vocab["##s"]],
    ]
    with pytest.raises(ValueError, match="'zzzq' maps to the unknown token"):
        templates.verbalizer_token_ids(wordpiece, ["yes", "zzzq"])
    with pytest.raises(ValueError, match="verbalizer word ' ' gives no tokens"):
        templates.verbalizer_token_ids(wordpiece, [" "])
    with pytest.raises(ValueError, match="'Yes' and 'yes' give the same tokens"):
        templates.verbalizer_token_ids(wordpiece, ["Yes", "yes"])
    with pytest.raises(TypeError, match="wrap it in a list"):
        templates.verbalizer_token_ids(wordpiece, "yes")
