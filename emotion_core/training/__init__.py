"""Training: fit a model family with the Hugging Face Trainer, and batched prediction."""
