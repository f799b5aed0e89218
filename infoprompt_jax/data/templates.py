"""Templates: a small string language that turns an example into fixed-shape token arrays.

A template is data, not code (docs/design.md, "Templates"): whitespace-separated items

    <s>          the tokenizer's start token (cls_token, else bos_token: `<s>`, `[CLS]`)
    </s>         the tokenizer's separator (sep_token, else eos_token: `</s>`, `[SEP]`)
    <mask>       the tokenizer's mask token, where the verbalizer word is predicted
    {prompt}     the n_p prompt slots, filled with generated vectors by the model
    {field}      a text field of the example, e.g. `{sentence1}`; names match [a-z_][a-z0-9_]*
    other words  literal text, e.g. `Question:`

for example `"<s> {sentence1} {prompt} <mask> {sentence2} </s>"`. Because the special items stand
for the tokenizer's own tokens, one template serves RoBERTa's BPE and BERT's WordPiece alike.

`TemplateTokenizer` produces the arrays of the "Tokenized batch contract" in
docs/architecture.md: the prompted sequence and the unprompted one (prompt slots left out), both
padded to `max_len`, so the train step compiles once.

Tokenization rules, and why:
- Every text field and every run of consecutive literal words is tokenized on its own with
  `add_special_tokens=False`. For RoBERTa that means the first word of a segment has no leading
  space, exactly as Hugging Face encodes the second sentence of a pair.
- Field text is stripped of surrounding whitespace first: GLUE's SST-2 sentences end in a space,
  which RoBERTa's byte-level BPE would otherwise turn into a stray `Ġ` token.
- Truncation shortens text fields only, one token at a time from the end of the currently
  longest field; a tie cuts the later field (as Hugging Face's `longest_first` cuts the second
  sequence of a pair). Prompt slots, the mask, special tokens and literals are never dropped.
  `min_length` reserves one token per field, and longest-first cutting never takes a non-empty
  field below one token whenever `max_len >= min_length`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Item kinds of a parsed template.
BOS = "bos"
SEP = "sep"
MASK = "mask"
PROMPT = "prompt"
FIELD = "field"
LITERAL = "literal"

_SPECIAL_ITEMS = {"<s>": BOS, "</s>": SEP, "<mask>": MASK}
_PROMPT_ITEM = "{prompt}"
_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

# Which tokenizer attributes each special item stands for, in order of preference.
_SPECIAL_TOKEN_ATTRS = {BOS: ("cls", "bos"), SEP: ("sep", "eos"), MASK: ("mask",)}


class TemplateError(ValueError):
    """A template string is malformed, or cannot fit the requested length."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """One item of a parsed template.

    Attributes:
        kind: one of `bos`, `sep`, `mask`, `prompt`, `field`, `literal`.
        value: the field name for `field`, the text for `literal` (consecutive literal words
            joined by single spaces), the item as written for the others.
    """

    kind: str
    value: str


@dataclasses.dataclass(frozen=True)
class Template:
    """A parsed template: its source text and its segments in order.

    Build it with `Template.parse`; the constructor does not validate.
    """

    text: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parses and validates a template string.

        Args:
            text: e.g. `"<s> {sentence1} {prompt} <mask> {sentence2} </s>"`.

        Returns:
            The parsed template.

        Raises:
            TemplateError: the template does not have exactly one `{prompt}`, exactly one
                `<mask>` and at least one field, names a field twice, or has a malformed
                placeholder. The message quotes the template.
        """
        if not isinstance(text, str):
            raise TypeError(f"template must be a string, got {type(text).__name__}: {text!r}")
        segments: list[Segment] = []
        for word in text.split():
            segment = _parse_item(text, word)
            if segment.kind == LITERAL and segments and segments[-1].kind == LITERAL:
                # A run of literal words is tokenized as one phrase, so "is it" keeps the
                # leading space of "it" in RoBERTa's BPE, as in running text.
                segment = Segment(LITERAL, f"{segments.pop().value} {segment.value}")
            segments.append(segment)
        template = cls(text=text, segments=tuple(segments))
        _validate(template)
        return template

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the text fields, in template order."""
        return tuple(s.value for s in self.segments if s.kind == FIELD)


def _parse_item(text: str, word: str) -> Segment:
    """Classifies one whitespace-separated template item."""
    if word in _SPECIAL_ITEMS:
        return Segment(_SPECIAL_ITEMS[word], word)
    if word == _PROMPT_ITEM:
        return Segment(PROMPT, word)
    placeholder = _PLACEHOLDER.fullmatch(word)
    if placeholder:
        name = placeholder.group(1)
        if not _FIELD_NAME.fullmatch(name):
            raise TemplateError(
                f"template {text!r}: {word!r} is not a valid field; field names match "
                f"[a-z_][a-z0-9_]* (e.g. {{sentence1}}), and the prompt slots are {{prompt}}"
            )
        return Segment(FIELD, name)
    if "{" in word or "}" in word:
        # Almost always a placeholder glued to text, e.g. "{sentence}." -- a silent literal
        # would drop the example's text from the input.
        raise TemplateError(
            f"template {text!r}: item {word!r} mixes a placeholder with text or has unbalanced "
            f"braces; separate items with spaces, e.g. '{{sentence}} .'"
        )
    return Segment(LITERAL, word)


def _validate(template: Template) -> None:
    """Checks the counts of prompt, mask and field items."""
    kinds = [s.kind for s in template.segments]
    for kind, item, why in (
        (PROMPT, _PROMPT_ITEM, "where the prompt vectors go"),
        (MASK, "<mask>", "where the label word is predicted"),
    ):
        if kinds.count(kind) != 1:
            raise TemplateError(
                f"template {template.text!r} has {kinds.count(kind)} {item} items; it needs "
                f"exactly one ({why})"
            )
    fields = template.fields
    if not fields:
        raise TemplateError(
            f"template {template.text!r} has no text field; add at least one, e.g. {{sentence}}"
        )
    repeated = sorted({f for f in fields if fields.count(f) > 1})
    if repeated:
        raise TemplateError(
            f"template {template.text!r} uses the field(s) {repeated} more than once; each "
            f"field may appear once"
        )


@dataclasses.dataclass(frozen=True)
class _Piece:
    """A template segment resolved against a tokenizer.

    `token_ids` is empty for fields, whose tokens come from each example.
    """

    kind: str
    token_ids: tuple[int, ...]
    token_type: int
    field_index: int = -1


class TemplateTokenizer:
    """Tokenizes examples through a template into the fixed-shape arrays of the batch contract.

    Attributes:
        tokenizer: the Hugging Face tokenizer.
        template: the parsed template.
        num_prompt_tokens: n_p, the number of prompt slots.
        max_len: L, the padded length of every output sequence.
        use_token_types: whether segment ids after the pair separator are 1.
        min_length: the shortest `max_len` the template fits in.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: str | Template,
        num_prompt_tokens: int,
        max_len: int,
        use_token_types: bool | None = None,
    ):
        """Resolves the template against the tokenizer.

        Args:
            tokenizer: a Hugging Face tokenizer (RoBERTa BPE, BERT WordPiece, ...).
            template: a template string or a parsed `Template`.
            num_prompt_tokens: n_p >= 0; 0 gives a prompted sequence equal to the unprompted one
                (for baselines that train no prompt).
            max_len: the padded length L of every output sequence.
            use_token_types: when True, tokens after the first `</s>` that is followed by a
                field are segment 1 (BERT's pair encoding); when False, all segment ids are 0.
                None follows the tokenizer: True iff its `model_input_names` lists
                `token_type_ids` (BERT yes, RoBERTa no: its type vocabulary has one entry).

        Raises:
            TemplateError: the template is malformed or `max_len < min_length`.
            ValueError: the tokenizer lacks a special token the template needs.
        """
        self.tokenizer = tokenizer
        self.template = template if isinstance(template, Template) else Template.parse(template)
        self.num_prompt_tokens = _as_int("num_prompt_tokens", num_prompt_tokens)
        if self.num_prompt_tokens < 0:
            raise ValueError(f"num_prompt_tokens must be >= 0, got {num_prompt_tokens}")
        if use_token_types is None:
            use_token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self.use_token_types = bool(use_token_types)
        self._pad_id = _required_token_id(tokenizer, "pad", "padding to max_len", self.template)
        self._pieces = self._resolve_pieces()
        self.min_length = sum(len(p.token_ids) for p in self._pieces) + len(self.template.fields)
        max_len = _as_int("max_len", max_len)
        if max_len < self.min_length:
            raise TemplateError(
                f"max_len={max_len} is too short for template {self.template.text!r} with "
                f"{num_prompt_tokens} prompt tokens: the minimum length is {self.min_length} "
                f"(special tokens, literals, prompt slots and mask, plus one token per field); "
                f"raise max_len to at least {self.min_length}"
            )
        self.max_len = max_len

    def __repr__(self) -> str:
        return (
            f"TemplateTokenizer(template={self.template.text!r}, "
            f"num_prompt_tokens={self.num_prompt_tokens}, max_len={self.max_len})"
        )

    def _resolve_pieces(self) -> tuple[_Piece, ...]:
        """Maps each segment to its fixed token ids and segment id."""
        segments = self.template.segments
        second_start = _second_segment_start(segments) if self.use_token_types else None
        fields = self.template.fields
        pieces = []
        for index, segment in enumerate(segments):
            token_type = int(second_start is not None and index >= second_start)
            if segment.kind == FIELD:
                token_ids: tuple[int, ...] = ()
            elif segment.kind == PROMPT:
                # The model overwrites the slots' embeddings, so any valid id would do; unk
                # keeps them recognisable when a batch is decoded for debugging.
                unk = (
                    _required_token_id(self.tokenizer, "unk", "the prompt slots", self.template)
                    if self.num_prompt_tokens
                    else 0
                )
                token_ids = (unk,) * self.num_prompt_tokens
            elif segment.kind == LITERAL:
                token_ids = tuple(_tokenize(self.tokenizer, [segment.value])[0])
            else:
                token_ids = (_special_token_id(self.tokenizer, segment, self.template),)
            field_index = fields.index(segment.value) if segment.kind == FIELD else -1
            pieces.append(_Piece(segment.kind, token_ids, token_type, field_index))
        return tuple(pieces)

    def encode(self, fields: Mapping[str, str]) -> dict[str, np.ndarray]:
        """Encodes one example.

        Args:
            fields: the example's text fields by name; keys the template does not use (e.g.
                `label`) are ignored.

        Returns:
            The batch-contract arrays without the batch axis: `[L]` sequences,
            `prompt_positions` `[n_p]`, `mask_position` and `unprompted_mask_position` `[]`; int32.

        Raises:
            KeyError: the example lacks a field the template needs.
            TypeError: a field's value is not a string.
        """
        return {
            key: value[0]
            for key, value in self._encode([fields], describe=lambda _: "example").items()
        }

    def encode_batch(self, examples: Sequence[Mapping[str, str]]) -> dict[str, np.ndarray]:
        """Encodes a list of examples into stacked arrays (the tokenized batch contract).

        Args:
            examples: each example's text fields by name.

        Returns:
            `[N, L]` sequences, `prompt_positions` `[N, n_p]`, `mask_position` and
            `unprompted_mask_position` `[N]`; all int32.

        Raises:
            KeyError: an example lacks a field the template needs.
            TypeError: a field's value is not a string.
        """
        return self._encode(examples, describe=lambda row: f"example {row}")

    def _encode(self, examples, describe) -> dict[str, np.ndarray]:
        """Tokenizes each field across the batch at once (fast tokenizers batch in Rust)."""
        fields = self.template.fields
        texts = [
            [self._field_text(example, name, describe(row)) for row, example in enumerate(examples)]
            for name in fields
        ]
        tokens_by_field = [_tokenize(self.tokenizer, column) for column in texts]
        batch = self._empty_batch(len(examples))
        for row in range(len(examples)):
            self._fill_row(batch, row, [column[row] for column in tokens_by_field])
        return batch

    def _field_text(self, example: Mapping[str, str], name: str, where: str) -> str:
        """Fetches one field, with errors that name the example, the field and the fix."""
        if name not in example:
            raise KeyError(
                f"{where} has no field {name!r} (it has {sorted(example)}); template "
                f"{self.template.text!r} needs the fields {list(self.template.fields)}"
            )
        text = example[name]
        if not isinstance(text, str):
            raise TypeError(
                f"{where} field {name!r} must be a string, got {type(text).__name__}: {text!r}"
            )
        return text.strip()

    def _empty_batch(self, size: int) -> dict[str, np.ndarray]:
        """Allocates padded output arrays, keys in contract order; `_fill_row` fills rows."""

        def sequences(fill: int = 0) -> np.ndarray:
            return np.full((size, self.max_len), fill, np.int32)

        return {
            "input_ids": sequences(self._pad_id),
            "attention_mask": sequences(),
            "token_type_ids": sequences(),
            "prompt_positions": np.zeros((size, self.num_prompt_tokens), np.int32),
            "mask_position": np.zeros((size,), np.int32),
            "unprompted_input_ids": sequences(self._pad_id),
            "unprompted_attention_mask": sequences(),
            "unprompted_token_type_ids": sequences(),
            "unprompted_mask_position": np.zeros((size,), np.int32),
            "unprompted_context_mask": sequences(),
        }

    def _fill_row(
        self, batch: dict[str, np.ndarray], row: int, field_tokens: Sequence[Sequence[int]]
    ) -> None:
        """Assembles one example's sequence and writes its prompted and unprompted forms."""
        budget = self.max_len - (self.min_length - len(field_tokens))
        kept = _truncate_longest_first([len(t) for t in field_tokens], budget)
        ids, kinds, types = [], [], []
        for piece in self._pieces:
            piece_ids = (
                field_tokens[piece.field_index][: kept[piece.field_index]]
                if piece.kind == FIELD
                else piece.token_ids
            )
            ids.extend(piece_ids)
            kinds.extend([piece.kind] * len(piece_ids))
            types.extend([piece.token_type] * len(piece_ids))
        ids_T, types_T = np.asarray(ids, np.int32), np.asarray(types, np.int32)
        kinds_T = np.asarray(kinds)
        is_prompt_T = kinds_T == PROMPT
        self._write(batch, row, "", ids_T, types_T, kinds_T)
        keep = ~is_prompt_T
        self._write(batch, row, "unprompted_", ids_T[keep], types_T[keep], kinds_T[keep])
        batch["prompt_positions"][row] = np.flatnonzero(is_prompt_T)
        batch["unprompted_context_mask"][row, : keep.sum()] = kinds_T[keep] == FIELD

    @staticmethod
    def _write(batch, row, prefix, ids_T, types_T, kinds_T) -> None:
        """Writes one unpadded sequence into the padded arrays under `prefix`."""
        length = len(ids_T)
        batch[prefix + "input_ids"][row, :length] = ids_T
        batch[prefix + "attention_mask"][row, :length] = 1
        batch[prefix + "token_type_ids"][row, :length] = types_T
        batch[prefix + "mask_position"][row] = np.flatnonzero(kinds_T == MASK)[0]


def _as_int(name: str, value: Any) -> int:
    """`value` as an int: numpy integers are accepted, bools and floats refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    return int(value)


def _second_segment_start(segments: Sequence[Segment]) -> int | None:
    """Index of the first segment after the first `</s>` that has a field after it, if any.

    That separator ends BERT's first segment (`[CLS] A [SEP] | B [SEP]`); a template's final
    `</s>` has no field after it and starts nothing.
    """
    for index, segment in enumerate(segments):
        if segment.kind == SEP and any(s.kind == FIELD for s in segments[index + 1 :]):
            return index + 1
    return None


def _truncate_longest_first(lengths: Sequence[int], budget: int) -> list[int]:
    """Token counts to keep per field so that they sum to at most `budget`.

    One token at a time comes off the currently longest field; a tie cuts the later field.
    """
    kept = list(lengths)
    for _ in range(sum(kept) - budget):
        longest = max(range(len(kept)), key=lambda i: (kept[i], i))
        kept[longest] -= 1
    return kept


def _tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens; `verbose=False` because long texts
    exceeding the model's maximum are expected here and truncated by the template."""
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)
    return [[int(i) for i in ids] for ids in encoded["input_ids"]]


def _tokenizer_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _required_token_id(tokenizer: Any, attr: str, purpose: str, template: Template) -> int:
    """The id of `tokenizer.<attr>_token`, or an error that says how to supply it."""
    token_id = getattr(tokenizer, f"{attr}_token_id", None)
    if token_id is None:
        raise _missing_token_error(tokenizer, (attr,), purpose, template)
    return int(token_id)


def _special_token_id(tokenizer: Any, segment: Segment, template: Template) -> int:
    """The tokenizer's own id for `<s>`, `</s>` or `<mask>`, in order of preference."""
    attrs = _SPECIAL_TOKEN_ATTRS[segment.kind]
    for attr in attrs:
        token_id = getattr(tokenizer, f"{attr}_token_id", None)
        if token_id is not None:
            return int(token_id)
    raise _missing_token_error(tokenizer, attrs, f"the item {segment.value!r}", template)


def _missing_token_error(
    tokenizer: Any, attrs: Sequence[str], purpose: str, template: Template
) -> ValueError:
    names = " or ".join(f"{attr}_token" for attr in attrs)
    return ValueError(
        f"tokenizer {_tokenizer_name(tokenizer)!r} has no {names}, needed for {purpose} in "
        f"template {template.text!r}; a tokenizer folder without tokenizer_config.json or "
        f"special_tokens_map.json loads without its special tokens: pass them, e.g. "
        f"AutoTokenizer.from_pretrained(path, {attrs[0]}_token=...)"
    )


def verbalizer_token_ids(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """Token ids of each verbalizer word as the tokenizer sees it mid-sentence.

    The word is tokenized with one leading space: RoBERTa's BPE then gives `" yes"` -> `Ġyes`,
    the form that follows other words in running text, and WordPiece simply drops the space.

    Args:
        tokenizer: a Hugging Face tokenizer.
        words: one word (or phrase) per class, e.g. `["yes", "no"]`; surrounding whitespace is
            ignored, so `"yes"` and `" yes"` are the same word.

    Returns:
        One list of token ids per word; a word may take several tokens (the model averages
        their embeddings).

    Raises:
        ValueError: a word is empty, tokenizes to nothing or to the unknown token, or two words
            give the same tokens (their classes would start indistinguishable).
    """
    if isinstance(words, str):
        raise TypeError(
            f"words must be a sequence of strings, one per class, got the string "
            f"{words!r}; wrap it in a list"
        )
    unk_id = getattr(tokenizer, "unk_token_id", None)
    seen: dict[tuple[int, ...], str] = {}
    token_ids = []
    for word in words:
        ids = _tokenize(tokenizer, [" " + word.strip()])[0] if word.strip() else []
        if not ids:
            raise ValueError(
                f"verbalizer word {word!r} gives no tokens with tokenizer "
                f"{_tokenizer_name(tokenizer)!r}; use a non-empty word"
            )
        if unk_id is not None and unk_id in ids:
            raise ValueError(
                f"verbalizer word {word!r} maps to the unknown token with tokenizer "
                f"{_tokenizer_name(tokenizer)!r}; pick a word in its vocabulary"
            )
        if tuple(ids) in seen:
            raise ValueError(
                f"verbalizer words {seen[tuple(ids)]!r} and {word!r} give the same "
                f"tokens {ids}; each class needs its own word"
            )
        seen[tuple(ids)] = word
        token_ids.append(ids)
    return token_ids
