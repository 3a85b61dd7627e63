"""The LLM judge: rubric grading and pairwise comparison over the shared OpenAI-compatible client.

By noun: `results` (inputs, scores, verdicts, `JudgeError`), `config` (`JudgeConfig`, the self-judging
check), `prompts` (what the judge is asked), `parsing` (strict reading of its replies), `runner`
(`judge_rubric`, `judge_pairwise`). The project's judge applied to an `eval` is `evaluate.judged`.
"""
