"""Reference ids and texts from the slow sentencepiece LlamaTokenizer of transformers 4.x.

Run with the reference interpreter (SPIRITLM_TOKENIZER_REFERENCE_PYTHON), never imported by the
service. Reads a JSON request on stdin:
    {"lm_dir": str, "prompts": [str], "decode": [[int]]}
and writes a JSON answer on stdout:
    {"version": str, "ids": [[int]], "decoded": [str], "decoded_spaced": [str], "tokens": [str]}
`decoded` joins added tokens without spaces, `decoded_spaced` with transformers' default.
The tokenizer is loaded the way the Spirit LM reference loads it
(docs/format.md#language-model).
"""

from __future__ import annotations

import json
import sys

import transformers
from transformers import LlamaTokenizer


def main() -> None:
    request = json.load(sys.stdin)
    tokenizer = LlamaTokenizer.from_pretrained(
        request["lm_dir"], add_bos_token=True, add_eos_token=False
    )
    if not hasattr(tokenizer, "sp_model"):
        raise SystemExit(f"transformers {transformers.__version__} has no slow LlamaTokenizer")
    decode = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    answer = {
        "version": transformers.__version__,
        "ids": [tokenizer.encode(prompt) for prompt in request["prompts"]],
        "decoded": [
            tokenizer.decode(ids, spaces_between_special_tokens=False, **decode)
            for ids in request["decode"]
        ],
        "decoded_spaced": [tokenizer.decode(ids, **decode) for ids in request["decode"]],
        "tokens": tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))),
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
