"""What a training stage returns: one typed record instead of a hand-built dict per stage.

state.json stores it as a plain dict (`to_dict`); it reads like one too (`result["metrics"]`), so the report and the
resume logic treat a fresh result and a stored one alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Status = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class StageResult(Mapping[str, Any]):
    status: Status
    reason: str | None = None  # why it was skipped or failed (or, for publish, what happened)
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path (or version name) for later stages
    metrics: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    @classmethod
    def done(
        cls,
        outputs: dict[str, str] | None = None,
        metrics: dict[str, Any] | None = None,
        plots: list[str] | None = None,
        reason: str | None = None,
    ) -> StageResult:
        return cls("done", reason, outputs or {}, metrics or {}, plots or [])

    @classmethod
    def skipped(cls, reason: str, metrics: dict[str, Any] | None = None) -> StageResult:
        return cls("skipped", reason, {}, metrics or {}, [])

    @classmethod
    def failed(cls, error: BaseException) -> StageResult:
        return cls("failed", f"{type(error).__name__}: {error}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # Mapping: read like the dict state.json holds
    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
