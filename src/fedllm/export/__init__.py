"""Taking a trained run out of fedllm: the adapter merged into its base (Hugging Face layout) and GGUF."""
