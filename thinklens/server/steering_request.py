"""What a request asks the served model to steer, from its model name or its `steering` field.

The model name grammar (what an OpenAI client puts in `model`):

    NAME  := BASE ( "+" EDIT )* ( ":" POLICY )?
    EDIT  := "f" ID "@" STRENGTH      add STRENGTH × the feature's typical max activation
           | "f" ID "=" VALUE         clamp the feature's activation to VALUE × its typical max
           | "f" ID "*" FACTOR        scale the feature's activation by FACTOR
           | "c" CONTRAST "@" STRENGTH  add STRENGTH × the contrast's direction (mean A − mean B)
    POLICY := first_token | after_prefix | thinking | answer | index:N   (default after_prefix)

e.g. `smollm2-r1+f1234@4:after_prefix`, `smollm2-r1+f12@-2+f40*0.5:thinking`,
`smollm2-r1+coperator-mul-vs-rest@1`. BASE is the served model's id (`/v1/models`). The body's
`steering` field says the same as JSON: `{"features": [{"feature": 1234, "strength": 4, "mode": "add"}],
"contrast": {"name": …, "strength": …}, "policy": "after_prefix"}`; given both, the body wins.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thinklens.errors import ThinklensError
from thinklens.steering.engine import MAX_STRENGTH, check_policy

MAX_EDITS = 8  # features (and directions) one request may steer
_EDIT = re.compile(r"^(?:f(?P<feature>\d{1,9})(?P<op>[@=*])|c(?P<contrast>[A-Za-z0-9_.\-]{1,100})@)"
                   r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?)$")
_MODES = {"@": "add", "=": "clamp", "*": "scale"}


class FeatureSteer(BaseModel):
    """One feature and how to push it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    feature: int = Field(ge=0, description="SAE feature id.")
    strength: float = Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH, description="Amount (add), target (clamp) or factor.")
    mode: Literal["add", "clamp", "scale"] = Field(default="add", description="add, clamp or scale.")


class ContrastSteer(BaseModel):
    """A contrast's difference-of-means direction and its strength (model units)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$", description="Contrast name.")
    strength: float = Field(ge=-MAX_STRENGTH, le=MAX_STRENGTH, description="Multiple of the direction added.")


class Steering(BaseModel):
    """What to steer, from where; empty: the unsteered model."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    features: tuple[FeatureSteer, ...] = Field(default=(), max_length=MAX_EDITS, description="Features to push.")
    contrast: ContrastSteer | None = Field(default=None, description="A contrast direction to add.")
    policy: str = Field(default="after_prefix", description="Position policy: first_token, after_prefix, thinking, "
                                                            "answer or index:N.")

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, policy: str) -> str:
        return check_policy(policy)

    @property
    def empty(self) -> bool:
        return not self.features and self.contrast is None

    def model_name(self, base: str) -> str:
        """This steering written in the model name grammar (the inverse of `parse_model_name`)."""
        if self.empty:
            return base
        edits = [f"f{edit.feature}{ {'add': '@', 'clamp': '=', 'scale': '*'}[edit.mode]}{edit.strength:g}"
                 for edit in self.features]
        if self.contrast is not None:
            edits.append(f"c{self.contrast.name}@{self.contrast.strength:g}")
        return "+".join([base, *edits]) + f":{self.policy}"


def parse_model_name(name: str, base: str) -> Steering:
    """The steering a model name asks for; a ThinklensError naming the grammar when it is not one."""
    if len(name) > 1000:
        raise ThinklensError("model name longer than 1000 characters")
    stem, policy = name, "after_prefix"
    head, colon, tail = name.rpartition(":")
    if colon and not tail.isdigit():
        stem, policy = head, tail
    elif colon and head.endswith(":index"):  # `…:index:12`
        stem, policy = head.removesuffix(":index"), f"index:{tail}"
    parts = stem.split("+")
    if parts[0] != base:
        raise ThinklensError(f"unknown model {parts[0]!r}: this server serves {base!r} (steered: "
                             f"{base}+f<ID>@<STRENGTH>[:<POLICY>]; see GET /v1/models)")
    if len(parts) - 1 > MAX_EDITS:
        raise ThinklensError(f"at most {MAX_EDITS} edits per model name")
    features, contrast = [], None
    for part in parts[1:]:
        match = _EDIT.match(part)
        if match is None:
            raise ThinklensError(f"cannot read {part!r} in the model name: write f<ID>@<STRENGTH> (add), "
                                 "f<ID>=<VALUE> (clamp), f<ID>*<FACTOR> (scale) or c<CONTRAST>@<STRENGTH>")
        value = float(match["value"])
        if match["contrast"]:
            if contrast is not None:
                raise ThinklensError("one contrast direction per model name")
            contrast = {"name": match["contrast"], "strength": value}
        else:
            features.append({"feature": int(match["feature"]), "strength": value, "mode": _MODES[match["op"]]})
    return Steering.model_validate({"features": features, "contrast": contrast, "policy": policy})
