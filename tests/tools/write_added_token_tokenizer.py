"""Writes a Spirit LM tokenizer the way a transformers 4.x user would, for a foreign checkpoint.

Run with the reference interpreter (SPIRITLM_TOKENIZER_REFERENCE_PYTHON), never imported by the
service. Loads a text-only sentencepiece `tokenizer.model` with the slow LlamaTokenizer, adds
`[Text]`, `[Speech]` and the unit tokens as added tokens (ids 32000, 32001, ...) and lets
`save_pretrained` write tokenizer.model, tokenizer_config.json, special_tokens_map.json and
added_tokens.json. None of our writer's JSON is involved.

usage: write_added_token_tokenizer.py TEXT_ONLY_MODEL OUT_DIR TOKEN [TOKEN ...]
"""

from __future__ import annotations

import sys

from transformers import AddedToken, LlamaTokenizer


def main() -> None:
    model, out_dir, *tokens = sys.argv[1:]
    tokenizer = LlamaTokenizer(
        vocab_file=model, legacy=True, add_bos_token=True, add_eos_token=False
    )
    first = len(tokenizer)
    added = tokenizer.add_tokens(
        [AddedToken(token, normalized=False, special=False) for token in tokens]
    )
    if added != len(tokens) or tokenizer.convert_tokens_to_ids(tokens[0]) != first:
        raise SystemExit(f"added {added} of {len(tokens)} tokens, first at {first}")
    tokenizer.save_pretrained(out_dir)


if __name__ == "__main__":
    main()
