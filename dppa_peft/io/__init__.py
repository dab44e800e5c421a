"""Checkpoints on disk and on the Hub: safetensors reading, checkpoint folders (read tensor by tensor, sharded
atomic writes), base references, and model/tokenizer loading."""
