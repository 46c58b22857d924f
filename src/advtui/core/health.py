"""Health checks on a training run, computed from its events stream (no torch).

A run that stops learning must not end ``finished`` like a healthy one without a word. The
checks here read the same events the training process writes to ``events.jsonl`` (``start``,
``step``, ``inner``, ``epoch``), so one ``HealthMonitor`` serves the training process (fed each
event as it is written, with the real floats) and every reader (``show``, the dashboard, tests),
which replays a stream with ``replay``.

Findings (``Finding``): a stable ``code``, a ``level``, the (1-based) ``epoch`` the condition
began in, and a one-line ``message`` that says what to try next.

- ``nan-loss`` (error): a step's loss (or an epoch's train loss) is NaN or infinite. The
  training process fails the run with the message. A stream read back holds ``null`` where the
  float was not finite (JSON has no NaN), and that counts too.
- ``stuck-at-chance`` (warning): the epoch end's clean accuracy (validation, or test with
  ``--val-size 0``: ``advtui.core.epochs``) under ``chance_accuracy`` of the run's dataset,
  ``CHANCE_MULTIPLE`` times its chance level (``core.datasets``: 20% for 10 classes, where
  chance is 10%), at ``chance_patience`` epoch ends in a row (RunConfig, default 2).
- ``rnn-behind-pgd`` (warning): in one epoch, on every batch where the learned maximizer was
  compared with PGD (``inner`` events with a ``pgd`` trajectory; at least
  ``MIN_COMPARED_BATCHES``), its final inner loss was below PGD's, and its mean by at least
  ``MIN_LOSS_GAP`` of PGD's (a tie to three decimals is no finding).
- ``rnn-behind-pgd-val`` (warning): the same on held-out batches (``val_inner`` events, written
  at each epoch end on the validation split): a maximizer that fits the training batches only.
- ``robust-above-natural`` (warning): PGD accuracy above clean accuracy by more than
  ``ROBUST_MARGIN`` points at an epoch end: gradient masking or an evaluation bug.
- ``robust-overfitting`` (warning): the epoch-end PGD accuracy has stayed more than a margin
  (``OVERFIT_MARGIN`` points, or two standard errors of the best on its n examples when that
  is more) below its best for ``OVERFIT_PATIENCE`` epoch ends in a row (Rice et al. 2020).
  The message names the best epoch, which best.pt holds.
- ``catastrophic-overfitting`` (warning): the epoch-end PGD accuracy fell by ``COLLAPSE_DROP``
  points or more in one epoch while the training attack's accuracy (``train_acc``) did not fall
  by more than ``TRAIN_ATTACK_HELD``: the model resists its own training attack but no longer
  PGD (Wong et al. 2020, whose ``fast_adversarial`` code stops on a 20-point drop).

A condition that persists is one finding, raised once when it starts (``feed`` returns it) and
not again at every epoch it holds. When the condition ends, the finding is cleared: ``feed``
returns it once more with ``cleared`` set to the epoch at which it ended, and it leaves
``active``; ``findings`` keeps the whole history. A later recurrence is a new finding. A
``start`` event (a resumed run) clears an active error: the run is trying again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable

from advtui.core.datasets import dataset_spec
from advtui.core.defenses import DEFENSE_SPECS
from advtui.core.epochs import EpochAccuracy, epoch_accuracy
from advtui.core.errors import AdvtuiError

WARNING, ERROR = "warning", "error"


# A model that has learned anything is well above twice chance: 20% for 10 classes, where
# chance (a uniform guess) is 10%. CHANCE_ACCURACY is that threshold for 10 classes, and for a
# run whose dataset is not in the table (an odd record).
CHANCE_MULTIPLE = 2
CHANCE_ACCURACY = 20.0
DEFAULT_CHANCE_LEVEL = 10.0
DEFAULT_CHANCE_PATIENCE = 2
# Robust accuracy is at most natural accuracy on the same examples, up to noise in a sample of
# a few hundred; more than a point above it means the attack is not finding the model's worst case.
ROBUST_MARGIN = 1.0

# A learned maximizer is "behind" PGD only on enough compared batches and by a real margin: one
# batch, or means equal to three decimals ("mean 2.310 vs 2.310"), say nothing.
MIN_COMPARED_BATCHES = 3
MIN_LOSS_GAP = 0.01  # of PGD's mean final loss
# Robust overfitting: how far below its best, and for how many epoch ends in a row.
OVERFIT_MARGIN = 3.0
OVERFIT_PATIENCE = 3
# Catastrophic overfitting (Wong et al. 2020, fast_adversarial: ``if robust_acc - prev_robust_acc
# < -0.2: break``): a one-epoch drop of the PGD accuracy, while the training attack's accuracy holds.
COLLAPSE_DROP = 20.0
TRAIN_ATTACK_HELD = 5.0

CODES = ("nan-loss", "stuck-at-chance", "rnn-behind-pgd", "rnn-behind-pgd-val", "robust-above-natural",
         "robust-overfitting", "catastrophic-overfitting")


def chance_level(dataset: Any) -> float:
    """The accuracy (%) of a uniform guess among ``dataset``'s classes (10% for 10 classes)."""
    spec = dataset_spec(dataset)
    return spec.chance_percent if spec is not None else DEFAULT_CHANCE_LEVEL


def chance_accuracy(dataset: Any) -> float:
    """The clean accuracy (%) under which a model of ``dataset`` has not learned: twice chance."""
    spec = dataset_spec(dataset)
    return CHANCE_MULTIPLE * 100.0 / spec.num_classes if spec is not None else CHANCE_ACCURACY


@dataclass(frozen=True)
class Finding:
    code: str
    level: str  # WARNING or ERROR
    epoch: int | None  # 1-based epoch in which the condition began
    message: str
    cleared: int | None = None  # 1-based epoch at which it ended; None while it holds

    @property
    def active(self) -> bool:
        return self.cleared is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Finding | None":
        """A finding from a record or a ``health`` event; None for anything malformed (a record
        written by another version must not break a listing)."""
        if not isinstance(data, dict) or not isinstance(data.get("code"), str):
            return None
        epoch, cleared = data.get("epoch"), data.get("cleared")
        return cls(code=data["code"], level=ERROR if data.get("level") == ERROR else WARNING,
                   epoch=epoch if isinstance(epoch, int) else None, message=str(data.get("message") or data["code"]),
                   cleared=cleared if isinstance(cleared, int) else None)


class RunUnhealthy(AdvtuiError):
    """An error-level finding stopped the training loop; the runner records the run as failed."""

    exit_code = 1

    def __init__(self, finding: Finding):
        super().__init__(finding.message)
        self.finding = finding


def record_findings(record: dict[str, Any]) -> list[Finding]:
    """The active findings a registry record holds (none for runs recorded before health checks)."""
    stored = record.get("health")
    if not isinstance(stored, list):
        return []
    return [f for f in (Finding.from_dict(d) for d in stored) if f is not None and f.active]


def worst_level(findings: Iterable[Finding]) -> str | None:
    levels = {f.level for f in findings if f.active}
    return ERROR if ERROR in levels else (WARNING if levels else None)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _describe_non_finite(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return "non-finite (nan or inf)"  # null in a stream read back: which one is not recorded


def _now(value: Any) -> str:
    return f" (now {value:g})" if _finite(value) else (f" (now {value})" if value is not None else "")


class HealthMonitor:
    """Incremental checks: ``feed`` one event at a time, get back the findings it raised or cleared."""

    def __init__(self, config: dict[str, Any] | None = None):
        self.config: dict[str, Any] = dict(config or {})
        self.findings: list[Finding] = []  # every finding so far, in its latest state
        self._chance_since: int | None = None  # first epoch of the current run of chance-level epochs
        # 1-based epoch -> [batches where the learned maximizer was behind, batches compared,
        # sum of its final losses, sum of PGD's final losses]; on training and on held-out batches
        self._compared: dict[int, list[float]] = {}
        self._compared_val: dict[int, list[float]] = {}
        # The epoch-end PGD accuracy: its best and the epoch of it, the first epoch of the current
        # stretch below it, and the previous epoch end's PGD and training-attack accuracies.
        self._best: tuple[float, int] | None = None
        self._below_since: int | None = None
        self._previous: tuple[float, float | None] | None = None
        self._collapsed_from: float | None = None

    # -- state ----------------------------------------------------------------------------------
    @property
    def active(self) -> list[Finding]:
        return [f for f in self.findings if f.active]

    def active_dicts(self) -> list[dict[str, Any]]:
        """What the registry record keeps (``health``): the findings that hold now."""
        return [f.to_dict() for f in self.active]

    def _current(self, code: str) -> Finding | None:
        return next((f for f in self.findings if f.code == code and f.active), None)

    def _raise(self, code: str, level: str, epoch: int | None, message: str) -> list[Finding]:
        if self._current(code) is not None:
            return []  # still the same condition: said once already
        finding = Finding(code, level, epoch, message)
        self.findings.append(finding)
        return [finding]

    def _clear(self, code: str, epoch: int | None) -> list[Finding]:
        finding = self._current(code)
        if finding is None:
            return []
        cleared = replace(finding, cleared=epoch)
        self.findings[self.findings.index(finding)] = cleared
        return [cleared]

    # -- events ---------------------------------------------------------------------------------
    def feed(self, event: dict[str, Any]) -> list[Finding]:
        """Take one event; the findings it raised or cleared (usually none)."""
        handler = {
            "start": self._on_start, "step": self._on_step, "inner": self._on_inner,
            "val_inner": self._on_val_inner, "epoch": self._on_epoch, "health": self._on_recorded,
        }.get(str(event.get("kind")))
        return handler(event) if handler else []

    def _on_start(self, event: dict[str, Any]) -> list[Finding]:
        if isinstance(event.get("config"), dict):
            self.config = dict(event["config"])
        epoch: int = event["epoch"] if isinstance(event.get("epoch"), int) else 0
        if not event.get("batch"):
            # The epoch restarts from its first batch: comparisons recorded in it before (by a
            # process that died mid-epoch) were made on weights that no longer exist.
            self._compared.pop(epoch + 1, None)
            self._compared_val.pop(epoch + 1, None)
        cleared = []
        for finding in [f for f in self.active if f.level == ERROR]:
            cleared += self._clear(finding.code, epoch + 1)
        return cleared

    def _on_step(self, event: dict[str, Any]) -> list[Finding]:
        if "loss" not in event or _finite(event["loss"]):
            return []
        epoch = _epoch_of_batch(event)
        where = f"in epoch {epoch}" + (f", by batch {event['batch']}" if isinstance(event.get("batch"), int) else "")
        return self._raise("nan-loss", ERROR, epoch,
                           f"loss became {_describe_non_finite(event['loss'])} {where}: {self._nan_advice()}")

    def _nan_advice(self) -> str:
        return f"lower --lr{_now(self.config.get('lr'))} or check the data"

    def _on_inner(self, event: dict[str, Any]) -> list[Finding]:
        return self._count_comparison(event, self._compared)

    def _on_val_inner(self, event: dict[str, Any]) -> list[Finding]:
        return self._count_comparison(event, self._compared_val)

    @staticmethod
    def _count_comparison(event: dict[str, Any], compared: dict[int, list[float]]) -> list[Finding]:
        losses, pgd = event.get("losses"), event.get("pgd")
        if not (isinstance(losses, list) and isinstance(pgd, list) and losses and pgd):
            return []
        learned_final, pgd_final = losses[-1], pgd[-1]
        if not (_finite(learned_final) and _finite(pgd_final)):
            return []  # nothing to compare; a non-finite outer loss is caught at the next step
        counts = compared.setdefault(_epoch_of_batch(event), [0, 0, 0.0, 0.0])
        counts[0] += learned_final < pgd_final
        counts[1] += 1
        counts[2] += learned_final
        counts[3] += pgd_final
        return []

    def _on_epoch(self, event: dict[str, Any]) -> list[Finding]:
        epoch = event.get("epoch")
        if not isinstance(epoch, int):
            return []
        found: list[Finding] = []
        if "train_loss" in event and not _finite(event["train_loss"]):
            found += self._raise("nan-loss", ERROR, epoch,
                                 f"train loss of epoch {epoch} is {_describe_non_finite(event['train_loss'])}: "
                                 f"{self._nan_advice()}")
        accuracy = epoch_accuracy(event)
        found += self._check_chance(epoch, accuracy.clean)
        found += self._check_robust_above_natural(epoch, accuracy.clean, accuracy.robust)
        found += self._check_learned_vs_pgd(epoch)
        found += self._check_learned_vs_pgd_held_out(epoch)
        if _finite(accuracy.robust):
            found += self._check_catastrophic(epoch, accuracy, event.get("train_acc"))
            found += self._check_robust_overfitting(epoch, accuracy)
        return found

    def _on_recorded(self, event: dict[str, Any]) -> list[Finding]:
        """A ``health`` event in a stream being replayed is the training process's own finding:
        it saw the real floats (a NaN, not the null written for it), so its message wins."""
        recorded = Finding.from_dict(event)
        current = self._current(recorded.code) if recorded is not None else None
        if recorded is not None and current is not None and recorded.active and recorded.epoch == current.epoch:
            self.findings[self.findings.index(current)] = replace(current, message=recorded.message)
        return []

    # -- the epoch-end checks ---------------------------------------------------------------------
    def _check_chance(self, epoch: int, clean: Any) -> list[Finding]:
        if not _finite(clean):
            return []
        dataset = self.config.get("dataset")
        if clean >= chance_accuracy(dataset):
            self._chance_since = None
            return self._clear("stuck-at-chance", epoch)
        if self._chance_since is None:
            self._chance_since = epoch
        epochs_at_chance = epoch - self._chance_since + 1
        if epochs_at_chance < self._chance_patience():
            return []
        return self._raise("stuck-at-chance", WARNING, self._chance_since,
                           f"stuck at chance since epoch {self._chance_since}: clean accuracy {clean:.1f}% "
                           f"(chance {chance_level(dataset):g}%) for {epochs_at_chance} epoch{'s' if epochs_at_chance > 1 else ''}; "
                           f"{self._chance_advice()}")

    def _chance_patience(self) -> int:
        patience = self.config.get("chance_patience")
        return patience if isinstance(patience, int) and patience >= 1 else DEFAULT_CHANCE_PATIENCE

    def _chance_advice(self) -> str:
        if self.config.get("defense") == "plain":
            return f"check the model init and the data, or change --lr{_now(self.config.get('lr'))}"
        return (f"check the model init, lower --eps{_now(self.config.get('eps'))}, warm-start with "
                f"--init-from RUN (a plain run) or raise --epochs")

    def _check_robust_above_natural(self, epoch: int, clean: Any, robust: Any) -> list[Finding]:
        if not (_finite(clean) and _finite(robust)):
            return []
        if robust <= clean + ROBUST_MARGIN:
            return self._clear("robust-above-natural", epoch)
        return self._raise("robust-above-natural", WARNING, epoch,
                           f"robust accuracy above natural at epoch {epoch} (PGD {robust:.1f}% > clean "
                           f"{clean:.1f}%): a sign of gradient masking or an eval bug; evaluate with more "
                           f"steps (advtui eval RUN --attacks natural,pgd-100,cw-100) and check the model "
                           f"is in eval mode during attacks")

    def _check_learned_vs_pgd(self, epoch: int) -> list[Finding]:
        return self._check_learned_behind("rnn-behind-pgd", self._compared.pop(epoch, None), epoch,
                                          where="", batches="compared batches", why="")

    def _check_learned_vs_pgd_held_out(self, epoch: int) -> list[Finding]:
        return self._check_learned_behind("rnn-behind-pgd-val", self._compared_val.pop(epoch, None), epoch,
                                          where=" on held-out data", batches="validation batches",
                                          why=", so it attacks the training batches better than new ones")

    def _check_learned_behind(self, code: str, counts, epoch: int, *, where: str, batches: str,
                              why: str) -> list[Finding]:
        """The learned maximizer against PGD on one epoch's compared batches (training or held-out)."""
        if not counts or counts[1] < MIN_COMPARED_BATCHES:
            return []  # too few compared batches in this epoch to say anything either way
        if not _behind(counts):
            return self._clear(code, epoch)
        _, compared, learned_sum, pgd_sum = counts
        return self._raise(code, WARNING, epoch,
                           f"{self._learned_name()} behind PGD{where} in epoch {epoch}: its final inner loss was "
                           f"below PGD's on all {int(compared)} {batches} (mean {learned_sum / compared:.3f} vs "
                           f"{pgd_sum / compared:.3f}){why}; {self._learned_advice()}")

    def _check_robust_overfitting(self, epoch: int, accuracy: EpochAccuracy) -> list[Finding]:
        robust = accuracy.robust
        if robust is None:  # the caller checks it is finite; this says so to the type checker
            return []
        if self._best is None or robust > self._best[0]:
            self._best, self._below_since = (robust, epoch), None
            return self._clear("robust-overfitting", epoch)
        best, best_epoch = self._best
        margin = max(OVERFIT_MARGIN, 2 * _standard_error(best, accuracy.n))
        if robust >= best - margin:
            self._below_since = None
            return self._clear("robust-overfitting", epoch)
        if self._below_since is None:
            self._below_since = epoch
        below = epoch - self._below_since + 1
        if below < OVERFIT_PATIENCE:
            return []
        return self._raise("robust-overfitting", WARNING, self._below_since,
                           f"robust overfitting since epoch {self._below_since}: {accuracy.label} PGD accuracy "
                           f"{robust:.1f}% has stayed more than {margin:.1f} points below its best, {best:.1f}% at "
                           f"epoch {best_epoch}, for {below} epochs; {self._best_advice(accuracy, best_epoch)}, "
                           f"and stop sooner (--early-stop {OVERFIT_PATIENCE}) or lower the lr earlier (--milestones)")

    def _best_advice(self, accuracy: EpochAccuracy, best_epoch: int) -> str:
        if accuracy.split == "val":
            return f"best.pt holds epoch {best_epoch}: evaluate it with `advtui eval RUN --checkpoint best`"
        return ("no best checkpoint is kept on test numbers (--val-size 0): train with a validation split "
                "(the default) to keep one")

    def _check_catastrophic(self, epoch: int, accuracy: EpochAccuracy, train_acc: Any) -> list[Finding]:
        robust = accuracy.robust
        if robust is None:  # the caller checks it is finite; this says so to the type checker
            return []
        previous, self._previous = self._previous, (robust, train_acc if _finite(train_acc) else None)
        if self._collapsed_from is not None and robust > self._collapsed_from - COLLAPSE_DROP:
            self._collapsed_from = None
            return self._clear("catastrophic-overfitting", epoch)
        if previous is None or self._maximizer() is None:  # plain trains on no attack: nothing to collapse
            return []
        before, train_before = previous
        attack_held = _finite(train_acc) and train_before is not None and train_acc >= train_before - TRAIN_ATTACK_HELD
        if robust > before - COLLAPSE_DROP or not attack_held:
            return []
        self._collapsed_from = before if self._collapsed_from is None else self._collapsed_from
        best = ""
        if self._best is not None and accuracy.split == "val":
            best = f"; best.pt holds epoch {self._best[1]} ({self._best[0]:.1f}%): evaluate it with --checkpoint best"
        return self._raise("catastrophic-overfitting", WARNING, epoch,
                           f"catastrophic overfitting in epoch {epoch}: {accuracy.label} PGD accuracy fell from "
                           f"{before:.1f}% to {robust:.1f}% while the training attack's accuracy stayed at "
                           f"{train_acc:.1f}%: the model resists its training attack but not PGD{best}; train with "
                           f"more --inner-steps, a smaller --step-size{_now(self.config.get('step_size'))} or "
                           f"--init uniform")

    def _learned_name(self) -> str:
        return "L2LDA generator" if self._maximizer() == "l2lda" else "learned optimizer"

    def _maximizer(self) -> str | None:
        """The inner maximizer of the run's defense (its ``DEFENSE_SPECS`` row), if known."""
        spec = DEFENSE_SPECS.get(self.config.get("defense") or "")
        return spec.maximizer if spec is not None else None

    def _learned_advice(self) -> str:
        c = self.config
        warm_start = "warm-start from a plain run with --init-from RUN"
        if self._maximizer() == "l2lda":
            return f"try another --l2lda-lr{_now(c.get('l2lda_lr'))} or {warm_start}"
        # sign is the measured default (README): suggest it to a run that uses another input
        grad_input = c.get("rnn_grad_input")
        other_input = "" if grad_input in (None, "sign") else f", --rnn-grad-input sign{_now(grad_input)}"
        return f"try another --rnn-lr{_now(c.get('rnn_lr'))}{other_input}, or {warm_start}"


def _behind(counts: list[float]) -> bool:
    """Behind on every compared batch, and on average by a real margin."""
    behind, compared, learned_sum, pgd_sum = counts
    learned_mean, pgd_mean = learned_sum / compared, pgd_sum / compared
    return behind == compared and pgd_mean - learned_mean >= MIN_LOSS_GAP * max(abs(pgd_mean), 1e-3)


def _standard_error(accuracy: float, n: int | None) -> float:
    """The binomial standard error (points) of an accuracy (%) measured on ``n`` examples."""
    if not n:
        return 0.0
    p = min(max(accuracy / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / n)


def _epoch_of_batch(event: dict[str, Any]) -> int:
    """``step`` and ``inner`` events count epochs from 0 (the epoch in progress); findings from 1."""
    epoch = event.get("epoch")
    return epoch + 1 if isinstance(epoch, int) else 1


def replay(events: Iterable[dict[str, Any]], config: dict[str, Any] | None = None) -> HealthMonitor:
    """Run the checks over a whole stream (a ``start`` event supplies the run's config)."""
    monitor = HealthMonitor(config)
    for event in events:
        monitor.feed(event)
    return monitor
