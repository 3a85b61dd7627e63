"""Data: formats, reading JSONL, curation checks, splitting, fixing and sampling."""
