"""Row.sample at the edges OpenAI allows: top_p 0 keeps the most likely token instead of none."""


import torch

from tunesmith.inference.rows import Job, Row, Sampling


def test_top_p_zero_samples_the_most_likely_token_not_nan():
    sampling = Sampling(max_tokens=4, temperature=0.7, top_p=0.0, seed=1)
    job = Job([1, 2, 3], None, sampling, lambda _event: None, stream=False)
    row = Row(job, {0}, tokenizer=None, device="cpu")
    logits = torch.tensor([0.1, 2.5, 0.3, -1.0])
    assert [row.sample(logits.clone()) for _ in range(5)] == [1] * 5
