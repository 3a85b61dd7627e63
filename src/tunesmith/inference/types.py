"""What a generation backend takes (`DecodeSettings`) and returns per prompt (`Generation`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from tunesmith.inference.constraints import Constraint
from tunesmith.inference.contract_stop import ContractSpec


@dataclass(frozen=True)
class DecodeSettings:
    """Greedy by default: an evaluation must be repeatable."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = 0
    #: end an answer as soon as it can no longer meet this contract (`inference.contract_stop`);
    #: None decodes to the end whatever the answer looks like
    contract: ContractSpec | None = None
    #: enforce this at decode time (a grammar mask: the answer cannot break it); None decodes freely
    constraint: Constraint | None = None

    def key(self) -> str:
        data = asdict(self)
        for optional in ("contract", "constraint"):  # keys from before these existed stay valid
            if data[optional] is None:
                data.pop(optional)
        return json.dumps(data, sort_keys=True)


@dataclass
class Generation:
    text: str
    #: "stop" (ended with the end-of-turn token or a stop string), "length" (hit max_new_tokens),
    #: "contract" (cut once it could no longer meet the output contract), "grammar" (a constrained
    #: answer whose grammar allowed no next token), "error"
    finish_reason: str
    output_tokens: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
