"""Rubrics: what a judge grades on, on which integer scale.

    rubric = load_rubric("docqa")            # shipped: docqa, instruct
    rubric = load_rubric("my-rubric.yaml")   # a user rubric
    rubric.criteria_for("ko")                # the criteria in Korean (falls back to English)

A user rubric is YAML, checked like every tunelab config (unknown keys name the closest one):

    name: support-answers
    version: v1                  # goes into the cache key and the results; bump it when you edit
    scale: [1, 5]                # the lowest and the highest integer score
    criteria:                    # a list, or one list per language (en, ko)
      en: ["States the correct fix", "Polite"]
      ko: ["올바른 해결책을 제시한다", "정중하다"]
    levels:                      # optional: what each score means (per language or one map)
      en: {1: "wrong", 3: "partly right", 5: "right and complete"}

The reply format (`SCORE:` / `REASON:`) is fixed by tunelab, not by the rubric, so that every
rubric is parsed the same strict way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.config import explain_errors, read_yaml
from tunelab.errors import TunelabError
from tunelab.judge.shipped import SHIPPED

LANGS = ("en", "ko")
PerLang = Union[list[str], dict[str, list[str]]]


class Rubric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="Short name, shown in reports.")
    version: str = Field("v1", min_length=1, description="Part of the cache key: bump it when the wording changes.")
    scale: tuple[int, int] = Field((1, 5), description="[lowest, highest] integer score.")
    criteria: PerLang = Field(..., description="What the judge checks: a list, or {en: [...], ko: [...]}.")
    levels: Optional[dict] = Field(None, description="Optional meaning of scores: {score: text}, or {en: {...}, ko: {...}}.")
    pairwise: bool = Field(True, description="Whether the rubric may be used to compare two answers.")

    @field_validator("scale")
    @classmethod
    def _scale_order(cls, v):
        if v[0] >= v[1]:
            raise ValueError(f"scale must be [lowest, highest] with lowest < highest, got {list(v)}")
        if v[1] - v[0] > 20:
            raise ValueError("scale spans more than 21 scores; a judge cannot use so many reliably")
        return v

    @model_validator(mode="after")
    def _languages(self) -> Rubric:
        c, lv = self.criteria, self.levels
        if isinstance(c, dict) and (not c or not set(c) <= set(LANGS) or not all(c.values())):
            raise ValueError(f"criteria: a list, or one non-empty list per language ({', '.join(LANGS)})")
        if isinstance(c, list) and not c:
            raise ValueError("criteria: give at least one")
        if lv and not (set(lv) <= set(LANGS) or all(_is_score(k) for k in lv)):
            raise ValueError(f"levels: a map of score -> meaning, or one such map per language ({', '.join(LANGS)})")
        return self

    def criteria_for(self, lang: str) -> list[str]:
        c = self.criteria
        return c if isinstance(c, list) else c.get(lang) or c.get("en") or next(iter(c.values()))

    def levels_for(self, lang: str) -> dict[int, str]:
        lv = self.levels or {}
        if lv and all(k in LANGS for k in lv):
            lv = lv.get(lang) or lv.get("en") or next(iter(lv.values()))
        return {int(k): str(v) for k, v in sorted(lv.items(), key=lambda kv: int(kv[0]))}

    @property
    def scores(self) -> list[int]:
        return list(range(self.scale[0], self.scale[1] + 1))


def _is_score(key) -> bool:
    try:
        int(key)
    except (TypeError, ValueError):
        return False
    return True


def load_rubric(spec: str | Path) -> Rubric:
    """A shipped rubric by name, or a user rubric from a YAML file."""
    if str(spec) in SHIPPED:
        return Rubric(**SHIPPED[str(spec)])
    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise TunelabError(f"--rubric {spec}: not a shipped rubric ({', '.join(SHIPPED)}) nor a .yaml file")
    if not path.is_file():
        raise TunelabError(f"rubric file not found: {path}")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise TunelabError(f"{path}: a rubric is a YAML mapping (name, scale, criteria, ...)")
    try:
        return Rubric(**data)
    except ValidationError as err:
        raise TunelabError(f"invalid rubric {path}:\n  " + "\n  ".join(explain_errors(err, Rubric))) from None
