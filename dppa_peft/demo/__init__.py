"""The offline demo zoo: a local tokenizer, synthetic domains and tasks, tiny Llama models trained on them."""
