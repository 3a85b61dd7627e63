"""The LLM judge: rubric grading and pairwise comparison over the shared OpenAI-compatible client.

By noun: `results` (inputs, scores, verdicts, `JudgeError`), `config` (`JudgeConfig`, the self-judging
check), `prompts` (what the judge is asked), `parsing` (strict reading of its replies), `runner`
(`judge_rubric`, `judge_pairwise`), `evaluation` (the project's judge applied to an `eval`).
"""

from tunesmith.judge.config import SELF_JUDGING_HINT, JudgeConfig, check_not_self
from tunesmith.judge.parsing import JudgeParseError, parse_pairwise_reply, parse_rubric_reply
from tunesmith.judge.results import (
    JudgeError,
    JudgeFailure,
    PairInput,
    PairVerdict,
    PairwiseResult,
    RubricInput,
    RubricResult,
    RubricScore,
)
from tunesmith.judge.runner import judge_pairwise, judge_rubric

__all__ = [
    "JudgeConfig",
    "JudgeError",
    "JudgeFailure",
    "JudgeParseError",
    "PairInput",
    "PairVerdict",
    "PairwiseResult",
    "RubricInput",
    "RubricResult",
    "RubricScore",
    "SELF_JUDGING_HINT",
    "check_not_self",
    "judge_pairwise",
    "judge_rubric",
    "parse_pairwise_reply",
    "parse_rubric_reply",
]
