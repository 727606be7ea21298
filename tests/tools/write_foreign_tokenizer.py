"""Writes a Spirit LM tokenizer the way a transformers 4.x user would, for a foreign checkpoint.

Run with the reference interpreter (SPIRITLM_TOKENIZER_REFERENCE_PYTHON), never imported by the
service. Starts from a text-only sentencepiece `tokenizer.model` and puts the speech tokens at
the ids that follow its pieces, in one of the two forms a conforming checkpoint may use:

* added: the slow LlamaTokenizer adds them as added tokens (`add_tokens`);
* pieces: sentencepiece's own model proto gets them as USER_DEFINED pieces.

Either way `save_pretrained` writes tokenizer.model, tokenizer_config.json,
special_tokens_map.json (and added_tokens.json); none of our writer's JSON is involved.

usage: write_foreign_tokenizer.py {added,pieces} TEXT_ONLY_MODEL OUT_DIR TOKEN [TOKEN ...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2
from transformers import AddedToken, LlamaTokenizer


def slow_tokenizer(model: str) -> LlamaTokenizer:
    return LlamaTokenizer(vocab_file=model, legacy=True, add_bos_token=True, add_eos_token=False)


def with_added_tokens(model: str, tokens: list[str]) -> LlamaTokenizer:
    tokenizer = slow_tokenizer(model)
    tokenizer.add_tokens([AddedToken(token, normalized=False, special=False) for token in tokens])
    return tokenizer


def with_pieces(model: str, tokens: list[str], scratch: Path) -> LlamaTokenizer:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(model).read_bytes())
    user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    for token in tokens:
        proto.pieces.add(piece=token, score=0.0, type=user_defined)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    extended = scratch / "tokenizer.model"
    extended.write_bytes(proto.SerializeToString())
    return slow_tokenizer(str(extended))


def main() -> None:
    form, model, out_dir, *tokens = sys.argv[1:]
    first = len(slow_tokenizer(model))
    with tempfile.TemporaryDirectory() as scratch:
        if form == "added":
            tokenizer = with_added_tokens(model, tokens)
        elif form == "pieces":
            tokenizer = with_pieces(model, tokens, Path(scratch))
        else:
            raise SystemExit(f"unknown form {form!r}; expected added or pieces")
        ids = tokenizer.convert_tokens_to_ids(tokens)
        if ids != list(range(first, first + len(tokens))):
            raise SystemExit(f"the {len(tokens)} tokens did not land at ids {first}...")
        tokenizer.save_pretrained(out_dir)


if __name__ == "__main__":
    main()
