"""Evaluation: generation backends, metrics, an LLM judge, paired statistics, regression gate, report."""
