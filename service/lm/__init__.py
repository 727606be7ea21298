"""Language-model side: tokenizer ids, prompts, output parsing, the vLLM worker and its client."""
