"""The store's records as types: a run, a job, an evaluation result.

The store keeps plain JSON dicts; a reader that takes a record across a layer (the queue and
its scheduler, the dashboard) converts it here, at the boundary, and reads attributes instead
of ``record.get("...")``. The store's checks (``store.schema``) decode through the same types,
so the fields listed here are the fields it checks:

- a field typed ``X | None`` is checked: present and not null, it must be an X (a float field
  takes an int; no field takes a bool unless it says so). A record that fails is damaged: the
  store hides it (a run file, a job) and says so in one line;
- a field typed ``Any`` is carried unchecked (read by some, written by older versions too);
- other keys are kept as they are in ``extra`` and written back by ``to_dict``.

``from_dict`` takes what the store gives (extra and legacy keys included) and raises
``msgspec.ValidationError`` only on a record that the store's checks refuse too.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from advtui.core.status import JOB_STATUSES, JobStatus

_Number = float  # msgspec takes an int for a float field, and refuses bool and str
_R = TypeVar("_R", bound="_Record")


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    """A record's typed fields and, in ``extra``, the keys it has beside them."""

    # Named so that no record's own key lands here: only ``from_dict`` fills it.
    extra: dict[str, Any] = msgspec.field(default_factory=dict, name="~extra")

    @classmethod
    def from_dict(cls: type[_R], data: dict[str, Any]) -> _R:
        record = msgspec.convert(data, cls, strict=True)
        known = cls._known()
        extra = {key: value for key, value in data.items() if key not in known}
        return msgspec.structs.replace(record, extra=extra) if extra else record

    def to_dict(self) -> dict[str, Any]:
        """The record as the store keeps it: its extra keys, then every field that is not None."""
        out = dict(self.extra)
        for name in self._known():
            value = getattr(self, name)
            if value is not None:
                out[name] = msgspec.to_builtins(value) if isinstance(value, msgspec.Struct) else value
        return out

    @classmethod
    def _known(cls) -> tuple[str, ...]:
        return tuple(name for name in cls.__struct_fields__ if name != "extra")


class RunRecord(_Record, frozen=True, kw_only=True):
    """A run's record (its ``run.json``). Only the configuration's dict is kept as it is."""

    id: str
    status: str | None = None  # one of core.status.RUN_STATUSES (the store checks that too)
    name: str | None = None
    error: str | None = None  # why it failed or was stopped; "... before it started" for a run that never did
    defense: str | None = None
    dataset: str | None = None
    model: str | None = None
    host: str | None = None
    group: str | None = None
    device: str | None = None
    config: dict[str, Any] | None = None
    checkpoints: dict[str, Any] | None = None  # kind -> a path relative to the run folder (or None)
    metrics: dict[str, Any] | None = None  # the last epoch's numbers
    epoch: int | None = None  # epochs done
    epochs: int | None = None  # epochs it trains to
    pid: int | None = None
    created: _Number | None = None
    started: _Number | None = None
    ended: _Number | None = None
    pid_start_time: _Number | None = None
    # Carried unchecked.
    train_time: Any = None  # seconds trained, over every (re)start
    health: Any = None  # the health findings the training process recorded

    @property
    def configured_epochs(self) -> int | None:
        """The epochs it trains to: the record's, else its config's."""
        if self.epochs:
            return self.epochs
        epochs = (self.config or {}).get("epochs")
        return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


class EvalOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What ``advtui eval`` takes from an eval job (an unknown option damages the job)."""

    limit: int | None = None
    batch_size: int | None = None
    eps: _Number | None = None
    step_size: _Number | None = None
    seed: int | None = None


EVAL_OPTION_KEYS: tuple[str, ...] = EvalOptions.__struct_fields__

# How a job stopped by a kill was recorded before ``stopped_by``: its error began with this.
KILLED_BY_USER = "killed by user"


class JobRecord(_Record, frozen=True, kw_only=True):
    """A job of the queue: a training or an evaluation of one run."""

    id: str | None = None
    kind: Literal["train", "eval"] | None = None
    run_id: str | None = None
    status: Literal[JOB_STATUSES] | None = None  # type: ignore[valid-type]  # the tuple of core.status
    priority: int | None = None
    needs: Literal["gpu", "cpu", "auto"] | None = None
    gpu_index: int | None = None
    nproc: int | None = None
    depends_on: list[str] | None = None
    attacks: list[str] | None = None
    eval_options: EvalOptions | None = None
    created: _Number | None = None
    started: _Number | None = None
    ended: _Number | None = None
    pid: int | None = None
    pid_start_time: _Number | None = None
    host: str | None = None
    slot: dict[str, Any] | None = None
    exit_code: int | None = None
    error: str | None = None
    blocked_by: str | None = None  # the job whose end cancelled this one
    kill_requested: _Number | None = None
    stopped_by: Literal["user"] | None = None  # a running job stopped by `advtui kill` (the dashboard's k)
    # Carried unchecked.
    log: Any = None
    resumed: Any = None
    resumed_from: Any = None

    @property
    def killed_by_user(self) -> bool:
        """Stopped by a kill while it ran: ``stopped_by``, or (a job recorded by an earlier
        version) the error it was cancelled with."""
        if self.status != JobStatus.CANCELLED:
            return False
        return self.stopped_by == "user" or (self.error or "").startswith(KILLED_BY_USER)


class Result(_Record, frozen=True, kw_only=True):
    """One evaluation result of a run's checkpoint: an attack's accuracy, or a summary over
    attacks (``kind``). Results are not checked by the store; these are the fields readers use."""

    run_id: str
    attack: str
    kind: str | None = None  # attack | summary
    label: str | None = None
    checkpoint: str | None = None
    checkpoint_hash: str | None = None
    checkpoint_kind: str | None = None
    checkpoint_epoch: int | None = None
    date: _Number | None = None
    eval_id: str | None = None
    accuracy: _Number | None = None  # percent of the examples still classified right
    robust: int | None = None
    n: int | None = None
    clean_accuracy: _Number | None = None  # the same examples, unattacked
    clean_robust: int | None = None
    flags: list[Any] | None = None
    settings: dict[str, Any] | None = None
