"""Inference: how tunesmith asks a model for answers.

`openai_client` is the one layer every remote call goes through (the teacher, the judge, `eval
--endpoint`): one OpenAI client, one retry policy, one request cache.
"""
