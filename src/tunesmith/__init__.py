"""tunesmith: one narrow task, from a pile of examples to a small fine-tuned model that does it reliably."""

__version__ = "0.1.0"
