"""Hosted fine-tuning: the provider trains, tunesmith checks, prices, watches and records.

`prices` and `tokens` are what a job costs before a cent is spent (also used by `tunesmith cost`);
`limits` are the provider's own rules, checked locally before anything is uploaded.
"""
