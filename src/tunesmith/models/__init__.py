"""Models: resolving a model reference to a local trainable checkpoint, loading its tokenizer."""
