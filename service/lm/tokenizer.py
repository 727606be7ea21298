"""Token ids of a Spirit LM checkpoint, computed by our own code.

The facts followed: docs/format.md#language-model, docs/format.md#token-vocabulary and
docs/format.md#generation-settings.

`SpiritTokenizer.encode` returns exactly the ids that the reference's slow `LlamaTokenizer`
(legacy behaviour, `add_bos_token=True`, `add_eos_token=False`) gives for a prompt, for either
conforming way of storing the speech tokens: as pieces inside `tokenizer.model`, or as added
tokens in `tokenizer_config.json`. The reference algorithm, which this module follows step by
step, is:

1. Split the prompt on every added token (the special tokens `<unk>`, `<s>`, `</s>` always count,
   plus `added_tokens_decoder`): leftmost match first, longest match at a position, no empty
   pieces. Tokens flagged `lstrip`/`rstrip`/`single_word` then eat or join neighbouring text.
2. Encode every remaining text segment on its own with sentencepiece. Each call adds the dummy
   prefix: ` hello` after an added `[Text]` is encoded as `▁▁hello`, and `The` in `[Text]The`
   as `▁The`. (With in-model pieces the whole prompt is one segment; the prefix then yields a
   lone `▁` before a leading `[Text]`, and text touching a piece gets no `▁`.)
3. Put `<s>` in front; no `</s>`.

Speed: with added tokens, runs of speech tokens become consecutive added-token matches and map
straight to ids in step 1, without sentencepiece. With in-model pieces, sentencepiece matches
USER_DEFINED pieces atomically (frozen symbols that BPE never merges) in C++, which is fast.

`decode_ids` reproduces the reference's `decode(ids, skip_special_tokens=True,
clean_up_tokenization_spaces=False)`. One difference is deliberate: transformers 4.x joins the
text around added tokens with a space (`spaces_between_special_tokens` defaults to True inside
`_decode`), which for the added-token form turns `[Hu1][Hu2]` into `[Hu1] [Hu2]` and breaks the
reference's own prompt-stripping by character count (docs/format.md#parsing-generated-output).
We join without spaces by default; `spaces_between_added_tokens=True` gives the transformers-4.x
string. Either way, in the added-token form a space right after an added token is lost
(`[Text] hi` decodes to `[Text]hi`), as in the reference: the reference strips the leading `▁` of
each decoded run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from service.errors import CheckpointError
from service.lm.prompt import OutputModality

SPACE = "\u2581"  # sentencepiece's whitespace symbol
TEXT_MARKER = "[Text]"
SPEECH_MARKER = "[Speech]"

# Official id map (docs/format.md#token-vocabulary). Units are parsed from the files; these only
# validate what was parsed.
OFFICIAL_MARKER_IDS = {TEXT_MARKER: 32000, SPEECH_MARKER: 32001}
OFFICIAL_UNITS = {"hubert": (32002, 501), "pitch": (32503, 64), "style": (32567, 100)}
_UNIT_STREAMS = {"Hu": "hubert", "Pi": "pitch", "St": "style"}
_UNIT_TOKEN = re.compile(r"\[(Hu|Pi|St)(\d+)\]")

TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
ADDED_TOKENS = "added_tokens.json"
MODEL_CONFIG = "config.json"
_BOTH_FILES = f"{TOKENIZER_MODEL} and {TOKENIZER_CONFIG}"


class TokenKind(str, Enum):
    SPECIAL = "special"  # a special token of the text vocabulary: <unk>, <s>, </s>
    TEXT = "text"  # any other id of the Llama text vocabulary (below [Text])
    TEXT_MARKER = "text_marker"  # [Text]
    SPEECH_MARKER = "speech_marker"  # [Speech]
    HUBERT = "hubert"
    PITCH = "pitch"
    STYLE = "style"
    OTHER = "other"  # a token outside the official id map; the reference never bans it
    PADDING = "padding"  # an embedding row without a token (docs/format.md#token-vocabulary)


_UNIT_KINDS = {"hubert": TokenKind.HUBERT, "pitch": TokenKind.PITCH, "style": TokenKind.STYLE}


@dataclass(frozen=True)
class AddedToken:
    """An added (never split) token with the flags that decide how it treats its neighbours."""

    content: str
    id: int
    special: bool = False
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


class SpiritTokenizer:
    """Prompt -> ids and ids -> kinds/units/text for one Spirit LM directory."""

    def __init__(
        self,
        lm_dir: Path,
        sp: spm.SentencePieceProcessor,
        added: list[AddedToken],
        special_contents: dict[str, str],
        vocab_size: int,
        add_prefix_space: bool,
    ) -> None:
        self.lm_dir = Path(lm_dir)
        self._sp = sp
        self._added = {token.content: token for token in added}
        self._add_prefix_space = add_prefix_space
        self._strings = _token_strings(self.lm_dir, sp, added)
        self.num_tokens = len(self._strings)
        self.vocab_size = vocab_size
        self._special_strings = set(special_contents.values())
        self._special_ids = {self._id_of(content) for content in self._special_strings}
        self.bos_id = self._id_of(special_contents["bos_token"])
        self.eos_id = self._id_of(special_contents["eos_token"])
        self.unk_id = self._id_of(special_contents["unk_token"])
        # The reference skips only the named special tokens; every other added token (whatever
        # its `special` flag) decodes as its literal content between sentencepiece runs.
        self._literal_added = set(self._added) - self._special_strings
        self._added_pattern = _longest_match_regex(list(self._added))
        self._strip_flags = any(t.lstrip or t.rstrip or t.single_word for t in added)
        self._sp_remap = self._colliding_pieces()
        self._kinds, self._units = self._classify()
        self._allowed_cache: dict[tuple[OutputModality, bool], list[int]] = {}

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def from_dir(cls, lm_dir: Path) -> SpiritTokenizer:
        """Load and validate `tokenizer.model`, the tokenizer JSON files and `config.json`."""
        lm_dir = Path(lm_dir)
        sp = _load_sentencepiece(lm_dir / TOKENIZER_MODEL)
        config = _read_json(lm_dir / TOKENIZER_CONFIG, required=True)
        special_map = _read_json(lm_dir / SPECIAL_TOKENS_MAP, required=False)
        _check_supported(lm_dir / TOKENIZER_CONFIG, config)
        contents = _special_contents(lm_dir / TOKENIZER_CONFIG, config, special_map)
        added = _added_tokens(lm_dir, sp, config, special_map, contents)
        vocab_size = _model_vocab_size(lm_dir / MODEL_CONFIG)
        tokenizer = cls(
            lm_dir,
            sp,
            added,
            contents,
            vocab_size,
            add_prefix_space=bool(config.get("add_prefix_space", True)),
        )
        if tokenizer.num_tokens > vocab_size:
            raise CheckpointError(
                lm_dir / MODEL_CONFIG,
                f"vocab_size {vocab_size} is smaller than the {tokenizer.num_tokens} tokens of "
                "the tokenizer",
            )
        return tokenizer

    def _id_of(self, content: str) -> int:
        # Every special token is an added (never split) token; _added_tokens makes sure of it.
        return self._added[content].id

    def _colliding_pieces(self) -> dict[int, int]:
        """Sentencepiece ids whose piece string is also an added token with another id.

        The reference converts pieces to ids through the added-token table first, so such a
        piece gets the added token's id. Normally empty.
        """
        remap = {}
        for content, token in self._added.items():
            piece_id = self._sp.piece_to_id(content)
            if self._sp.id_to_piece(piece_id) == content and piece_id != token.id:
                remap[piece_id] = token.id
        return remap

    def _classify(self) -> tuple[list[TokenKind], dict[int, tuple[str, int]]]:
        """Kind of every id, and the (stream, value) of every unit token.

        Checked against the official map of docs/format.md#token-vocabulary.
        """
        where = self._file_of
        marker_ids = {}
        units: dict[int, tuple[str, int]] = {}
        for token_id, string in enumerate(self._strings):
            if string in OFFICIAL_MARKER_IDS:
                marker_ids[string] = token_id
            match = _UNIT_TOKEN.fullmatch(string)
            if match:
                units[token_id] = (_UNIT_STREAMS[match.group(1)], int(match.group(2)))
        for marker, official in OFFICIAL_MARKER_IDS.items():
            if marker not in marker_ids:
                raise CheckpointError(
                    self.lm_dir / TOKENIZER_MODEL,
                    f"token {marker} is missing (looked in {_BOTH_FILES})",
                )
            if marker_ids[marker] != official:
                raise CheckpointError(
                    where(marker),
                    f"token {marker} has id {marker_ids[marker]}, expected {official}",
                )
        _check_units(units, self.lm_dir, where)
        text_end = OFFICIAL_MARKER_IDS[TEXT_MARKER]
        kinds = []
        for token_id in range(self.num_tokens):
            if token_id in units:
                kinds.append(_UNIT_KINDS[units[token_id][0]])
            elif token_id == OFFICIAL_MARKER_IDS[TEXT_MARKER]:
                kinds.append(TokenKind.TEXT_MARKER)
            elif token_id == OFFICIAL_MARKER_IDS[SPEECH_MARKER]:
                kinds.append(TokenKind.SPEECH_MARKER)
            elif token_id >= text_end:
                kinds.append(TokenKind.OTHER)
            elif token_id in self._special_ids:
                kinds.append(TokenKind.SPECIAL)
            else:
                kinds.append(TokenKind.TEXT)
        return kinds, units

    def _file_of(self, content: str) -> Path:
        name = TOKENIZER_CONFIG if content in self._added else TOKENIZER_MODEL
        return self.lm_dir / name

    # ------------------------------------------------------------------------------ encode

    def encode(self, prompt: str) -> list[int]:
        """`<s>` followed by the prompt's ids, exactly as the reference tokenizes it."""
        ids = [self.bos_id]
        for segment in self._split_on_added(prompt):
            token = self._added.get(segment)
            if token is not None:
                ids.append(token.id)
            else:
                ids.extend(self._encode_text(segment))
        return ids

    def _split_on_added(self, text: str) -> list[str]:
        """Step 1 of the reference: cut out added tokens, then apply their strip flags."""
        parts: list[str] = []
        position = 0
        if self._added_pattern is not None:
            for match in self._added_pattern.finditer(text):
                if match.start() > position:
                    parts.append(text[position : match.start()])
                parts.append(match.group())
                position = match.end()
        if position < len(text):
            parts.append(text[position:])
        if self._strip_flags:
            _apply_strip_flags(parts, self._added)
        return [part for part in parts if part]

    def _encode_text(self, segment: str) -> list[int]:
        ids = self._sp.encode(segment)
        if self._sp_remap:
            ids = [self._sp_remap.get(i, i) for i in ids]
        return ids

    # ------------------------------------------------------------------------------ decode

    def decode_ids(self, ids: Iterable[int], *, spaces_between_added_tokens: bool = False) -> str:
        """Text of `ids` as the reference decodes it, skipping `<s>`, `</s>`, `<unk>`.

        Speech tokens and markers come out as their literal strings. Raises ValueError for an
        id without a token (a padding row, which the reference cannot decode either).
        """
        texts: list[str] = []
        pieces: list[str] = []
        for token_id in ids:
            if token_id in self._special_ids:
                continue
            string = self.token_string(token_id)
            if string in self._special_strings:
                continue
            if string in self._literal_added:
                if pieces:
                    text = self._pieces_to_text(pieces)
                    if text:
                        texts.append(text)
                    pieces = []
                texts.append(string)
            else:
                pieces.append(string)
        if pieces:
            texts.append(self._pieces_to_text(pieces))
        return (" " if spaces_between_added_tokens else "").join(texts)

    def _pieces_to_text(self, pieces: list[str]) -> str:
        # The reference drops the first piece's leading space symbol itself (it assumes it added
        # a prefix space), then lets sentencepiece decode, which drops one more at the start.
        if self._add_prefix_space and pieces[0].startswith(SPACE):
            pieces = [pieces[0][1:], *pieces[1:]]
        return self._sp.decode(pieces)

    # ------------------------------------------------------------------- ids, kinds, units

    def token_string(self, token_id: int) -> str:
        """The token's string: a sentencepiece piece (with ▁) or an added token's content."""
        if 0 <= token_id < self.num_tokens:
            return self._strings[token_id]
        raise ValueError(f"token id {token_id} has no token ({self.num_tokens} tokens)")

    def token_kind(self, token_id: int) -> TokenKind:
        if 0 <= token_id < self.num_tokens:
            return self._kinds[token_id]
        if self.num_tokens <= token_id < self.vocab_size:
            return TokenKind.PADDING
        raise ValueError(f"token id {token_id} is outside the vocabulary of {self.vocab_size}")

    def unit_of(self, token_id: int) -> tuple[str, int] | None:
        """("hubert"|"pitch"|"style", value) for a unit token, None for any other id."""
        return self._units.get(token_id)

    def unit_id(self, stream: str, value: int) -> int:
        """Id of the unit token of `stream` ("hubert", "pitch", "style") with `value`."""
        ids = self.unit_ids(stream)
        if not 0 <= value < len(ids):
            raise ValueError(f"{stream} unit {value} is out of range 0..{len(ids) - 1}")
        return ids[value]

    @property
    def special_strings(self) -> frozenset[str]:
        """The named special tokens (<s>, </s>, <unk>): in prompt text they become those ids."""
        return frozenset(self._special_strings)

    def unit_ids(self, stream: str) -> list[int]:
        """Ids of a stream's unit tokens, indexed by unit value (empty if the files lack it)."""
        by_value = {v: i for i, (s, v) in self._units.items() if s == stream}
        return [by_value[v] for v in range(len(by_value))]

    @property
    def text_marker_id(self) -> int:
        return OFFICIAL_MARKER_IDS[TEXT_MARKER]

    @property
    def speech_marker_id(self) -> int:
        return OFFICIAL_MARKER_IDS[SPEECH_MARKER]

    @property
    def text_ids(self) -> list[int]:
        """The Llama text vocabulary: every id below [Text], special tokens included."""
        return list(range(self.text_marker_id))

    @property
    def expressive(self) -> bool:
        """Whether the files carry the pitch and style tokens of the expressive variant."""
        return any(stream == "pitch" for stream, _ in self._units.values())

    def allowed_ids(self, modality: OutputModality | str, expressive: bool) -> list[int] | None:
        """Ids generation may pick for an output modality: the complement of `banned_ids`.

        None for ARBITRARY (nothing banned). The complement is taken over the ids that have a
        token, so the padding rows are left out although the reference never bans them: with
        the same weights, greedy decoding gives the same ids whenever the reference succeeds,
        because the reference cannot decode a padding id at all (sentencepiece raises). Under
        sampling the only difference is the renormalisation without the padding rows' mass.
        """
        chosen = OutputModality.parse(modality)
        if chosen is OutputModality.ARBITRARY:
            return None
        if expressive and not self.expressive:
            raise CheckpointError(
                self.lm_dir / TOKENIZER_MODEL,
                "the expressive variant needs [Pi]/[St] tokens, which these files lack",
            )
        key = (chosen, expressive)
        if key not in self._allowed_cache:
            banned = self.banned_ids(chosen, expressive)
            self._allowed_cache[key] = [i for i in range(self.num_tokens) if i not in banned]
        return list(self._allowed_cache[key])

    def banned_ids(self, modality: OutputModality | str, expressive: bool) -> set[int]:
        """The banned ids of an output modality (empty for ARBITRARY).

        The sets are listed in docs/format.md#banned-ids-per-output-modality.
        """
        chosen = OutputModality.parse(modality)
        markers = {self.text_marker_id, self.speech_marker_id}
        if chosen is OutputModality.TEXT:
            streams = {"hubert", "pitch", "style"} if expressive else {"hubert"}
            return markers | {i for i, (s, _) in self._units.items() if s in streams}
        if chosen is OutputModality.SPEECH:
            return markers | set(self.text_ids)
        return set()


# ------------------------------------------------------------------------------- file reading


def _load_sentencepiece(path: Path) -> spm.SentencePieceProcessor:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(path, "file is missing") from None
    except OSError as error:
        raise CheckpointError(path, f"cannot be read: {error}") from None
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as error:
        raise CheckpointError(path, f"not a SentencePiece model: {error}") from None
    if not proto.pieces:
        raise CheckpointError(path, "not a SentencePiece model: it has no pieces")
    try:
        sp = spm.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, OSError) as error:
        raise CheckpointError(path, f"sentencepiece cannot load it: {error}") from None
    return sp


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise CheckpointError(path, "file is missing") from None
        return {}
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(path, f"invalid JSON: {error}") from None
    if not isinstance(content, dict):
        raise CheckpointError(path, "expected a JSON object")
    return content


def _check_supported(path: Path, config: dict[str, Any]) -> None:
    """Reject settings under which the reference would tokenize differently from this module."""
    if config.get("legacy", True) is False:
        raise CheckpointError(path, "legacy=false tokenization is not supported (expected legacy)")
    if config.get("sp_model_kwargs"):
        raise CheckpointError(path, "sp_model_kwargs (sampling or other options) is not supported")
    if config.get("do_lower_case"):
        raise CheckpointError(path, "do_lower_case is not supported")


def _special_contents(
    path: Path, config: dict[str, Any], special_map: dict[str, Any]
) -> dict[str, str]:
    """Contents of bos/eos/unk/pad tokens; special_tokens_map.json wins, as in transformers."""
    defaults = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}
    contents: dict[str, str] = {}
    for key, default in defaults.items():
        value = special_map.get(key, config.get(key, default))
        content = value.get("content") if isinstance(value, dict) else value
        if content:
            contents[key] = str(content)
        elif key != "pad_token":
            raise CheckpointError(path, f"{key} is not set")
    for index, value in enumerate(_additional_specials(config, special_map)):
        contents[f"additional_{index}"] = value
    return contents


def _additional_specials(config: dict[str, Any], special_map: dict[str, Any]) -> list[str]:
    values = special_map.get("additional_special_tokens", config.get("additional_special_tokens"))
    return [v.get("content") if isinstance(v, dict) else str(v) for v in values or []]


def _added_tokens(
    lm_dir: Path,
    sp: spm.SentencePieceProcessor,
    config: dict[str, Any],
    special_map: dict[str, Any],
    contents: dict[str, str],
) -> list[AddedToken]:
    """Every no-split token: `added_tokens_decoder`, `added_tokens.json`, then the specials.

    Specials missing from both lists get the flags LlamaTokenizer gives them (all false) or
    those written in special_tokens_map.json.
    """
    path = lm_dir / TOKENIZER_CONFIG
    tokens: dict[str, AddedToken] = {}
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise CheckpointError(path, "added_tokens_decoder must be an object")
    for key, entry in decoder.items():
        token = _added_token_entry(path, key, entry)
        tokens.setdefault(token.content, token)
    legacy_file = _read_json(lm_dir / ADDED_TOKENS, required=False)
    for content, token_id in legacy_file.items():
        if content not in tokens:
            tokens[content] = AddedToken(content=content, id=int(token_id))
    for key, content in contents.items():
        if content in tokens:
            continue
        token_id = sp.piece_to_id(content)
        if sp.id_to_piece(token_id) != content:
            raise CheckpointError(path, f"{key} {content!r} is neither a piece nor an added token")
        flags = special_map.get(key) if isinstance(special_map.get(key), dict) else {}
        tokens[content] = AddedToken(
            content=content,
            id=token_id,
            special=True,
            lstrip=bool(flags.get("lstrip", False)),
            rstrip=bool(flags.get("rstrip", False)),
            single_word=bool(flags.get("single_word", False)),
        )
    return sorted(tokens.values(), key=lambda token: token.id)


def _added_token_entry(path: Path, key: str, entry: Any) -> AddedToken:
    if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
        raise CheckpointError(path, f"added_tokens_decoder[{key!r}] has no string content")
    try:
        token_id = int(key)
    except ValueError:
        raise CheckpointError(path, f"added_tokens_decoder key {key!r} is not an id") from None
    return AddedToken(
        content=entry["content"],
        id=token_id,
        special=bool(entry.get("special", False)),
        lstrip=bool(entry.get("lstrip", False)),
        rstrip=bool(entry.get("rstrip", False)),
        single_word=bool(entry.get("single_word", False)),
    )


def _model_vocab_size(path: Path) -> int:
    config = _read_json(path, required=True)
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise CheckpointError(path, f"vocab_size must be a positive integer, got {vocab_size!r}")
    return vocab_size


def _token_strings(
    lm_dir: Path, sp: spm.SentencePieceProcessor, added: list[AddedToken]
) -> list[str]:
    """String of every id; added tokens override pieces, as in the reference's id -> token."""
    size = sp.get_piece_size()
    strings: dict[int, str] = {i: sp.id_to_piece(i) for i in range(size)}
    for token in added:
        if token.id < 0:
            raise CheckpointError(
                lm_dir / TOKENIZER_CONFIG, f"added token {token.content!r} has id {token.id}"
            )
        strings[token.id] = token.content
    count = max(strings) + 1
    gaps = [i for i in range(count) if i not in strings]
    if gaps:
        raise CheckpointError(
            lm_dir / TOKENIZER_CONFIG, f"added token ids leave gaps, first missing id {gaps[0]}"
        )
    return [strings[i] for i in range(count)]


def _check_units(
    units: dict[int, tuple[str, int]], lm_dir: Path, where: Callable[[str], Path]
) -> None:
    """Every unit token present must sit at its official id; streams are complete or absent.

    The official ids are listed in docs/format.md#token-vocabulary.
    """
    by_stream: dict[str, dict[int, int]] = {}
    for token_id, (stream, value) in units.items():
        by_stream.setdefault(stream, {})[value] = token_id
    if "hubert" not in by_stream:
        raise CheckpointError(
            lm_dir / TOKENIZER_MODEL,
            f"the [Hu] unit tokens are missing (looked in {_BOTH_FILES})",
        )
    if ("pitch" in by_stream) != ("style" in by_stream):
        present = "pitch" if "pitch" in by_stream else "style"
        raise CheckpointError(
            lm_dir / TOKENIZER_MODEL, f"only the {present} tokens of the expressive variant exist"
        )
    prefixes = {stream: prefix for prefix, stream in _UNIT_STREAMS.items()}
    for stream, values in by_stream.items():
        first, count = OFFICIAL_UNITS[stream]
        for value in range(count):
            token = f"[{prefixes[stream]}{value}]"
            if value not in values:
                raise CheckpointError(lm_dir / TOKENIZER_MODEL, f"token {token} is missing")
            if values[value] != first + value:
                raise CheckpointError(
                    where(token), f"token {token} has id {values[value]}, expected {first + value}"
                )
        extra = sorted(set(values) - set(range(count)))
        if extra:
            token = f"[{prefixes[stream]}{extra[0]}]"
            raise CheckpointError(where(token), f"unexpected unit token {token}")


# ------------------------------------------------------------------------- added-token split


def _longest_match_regex(strings: list[str]) -> re.Pattern[str] | None:
    """A regex finding, left to right, the longest of `strings` at the earliest position.

    Built as a trie (longer continuations tried before stopping) so matching costs one pass,
    unlike a flat alternation of hundreds of literals.
    """
    if not strings:
        return None
    trie: dict[str, Any] = {}
    for string in strings:
        node = trie
        for char in string:
            node = node.setdefault(char, {})
        node[""] = {}
    return re.compile(_trie_pattern(trie))


def _trie_pattern(node: dict[str, Any]) -> str:
    branches = [
        re.escape(char) + _trie_pattern(child) for char, child in sorted(node.items()) if char
    ]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if "" in node:
        return f"(?:{body})?"
    return body


def _apply_strip_flags(parts: list[str], added: dict[str, AddedToken]) -> None:
    """The reference's neighbour handling for lstrip/rstrip/single_word, in place."""
    for i, part in enumerate(parts):
        token = added.get(part)
        if token is None:
            continue
        left = parts[i - 1] if i > 0 else None
        right = parts[i + 1] if i < len(parts) - 1 else None
        if token.rstrip and right:
            parts[i + 1] = right.lstrip()
        if token.lstrip and left:
            parts[i - 1] = left.rstrip()
        if token.single_word and left and left[-1] != " ":
            parts[i - 1] += part
            parts[i] = ""
        elif token.single_word and right and right[0] != " ":
            parts[i + 1] = part + parts[i + 1]
            parts[i] = ""


__all__ = ["AddedToken", "SpiritTokenizer", "TokenKind"]
