"""The base of grace.yaml's sections."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every manifest section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
