"""Evaluating a run's checkpoint under a list of attacks.

``evaluate_checkpoint`` attacks one checkpoint file of a run; it reads no store. The layer above
(``advtui.evaluation.evaluate_run``, what ``advtui eval``, a queued eval job and the dashboard
all call) resolves the run and the checkpoint and hands in where each result goes
(``ResultSink``). Everything that can be wrong with the input (run, checkpoint, every attack
spec and source run, data, device) raises an AdvtuiError before the first result is handed on.

How examples are counted (AutoAttack's convention)
--------------------------------------------------
The evaluation set is the first ``limit`` examples of the class-balanced test subset (the whole
test set without a limit). An example counts as robust against an attack when it is classified
correctly both at x and at the attack's x'. So every attack column is at most the natural
accuracy, and attacks only ever run on the examples that are correct at x: skipping the others
cannot change any column. ``worst-case`` is per example: robust only if no attack in the set
broke it. ``min`` is the lowest column (the paper's Min); worst-case <= min always.

With ``cascade=True`` each attack after the first runs only on examples that no earlier attack
broke: faster, and worst-case is still exact, but such an attack's own number is then the
*cumulative* robust accuracy (robust to it and every attack before it), stored with
``accuracy_kind: "cumulative"`` and left out of ``min`` and of the sanity checks.

Result documents are described in ``advtui.store.results``, which stores and reads them.

Events (``eval`` kind in the run's events.jsonl; every one has ``eval_id`` and ``phase``)
------------------------------------------------------------------------------------------
- ``start``: checkpoint, checkpoint_hash, attacks (canonical specs), labels, eps, step_size,
  n, examples, batch_size, seed, device, cascade
- ``progress`` (at most about once a second per attack, and at each attack's end): attack,
  label, index (0-based), attacks (how many), done, total (examples with a verdict / evaluated),
  robust (robust so far among done), pass_index, passes (restarts, cascade pieces), step, steps
  (attack steps done on the batch being attacked)
- ``attack`` (one per finished attack): attack, label, index, accuracy, robust, n, n_attacked,
  accuracy_kind, wall_time, steps, loss, trajectory, trajectory_model, flags
- ``end``: status ("finished", "failed" or "interrupted"), wall_time, min {accuracy, attack},
  worst_case {accuracy, robust, n}; error (when failed)
"""

from __future__ import annotations

import math
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from advtui.core.attack_specs import AttackSpec
from advtui.core.digests import ids_digest, ids_to_hex, mask_to_hex
from advtui.core.paths import DATA_ENV, data_root
from advtui.engine.attacks import Attack, RunCheckpoint, RunLookup, build_attacks, build_run_model, load_run_checkpoint
from advtui.engine.data import Split, balanced_subset, load_split
from advtui.engine.maximizers import loss_and_grad
from advtui.engine.objectives import ce_per_example
from advtui.engine.train import device_name
from advtui.core.events import EVENTS_FILE, EventWriter

DEFAULT_BATCH_SIZE = 256
PROGRESS_EVENT_INTERVAL_S = 1.0


@dataclass
class EvalProgress:
    """What a progress display needs after each batch (and, in a long batch, each attack step)
    of an evaluation. Counts are examples of the evaluation set, so the last report agrees
    with the result: ``done`` of ``total`` have a verdict (an example wrong at x has one from
    the start: it cannot be robust), ``robust`` of those ``done`` are still robust. A restart
    or a later piece of a cascade (``pass_index`` > 0) re-attacks the robust ones: every
    example then has a verdict, and ``robust`` can only go down."""

    attack: str  # label
    index: int  # 0-based position in the attack list
    attacks: int
    done: int  # examples with a verdict so far, out of total
    total: int  # examples evaluated (the limit)
    robust: int  # robust so far among the done examples
    finished: bool = False
    accuracy: float | None = None  # set when finished: robust / total, in %
    pass_index: int = 0  # restarts and cascade pieces: which pass (0-based) of how many
    passes: int = 1
    step: int = 0  # attack steps done on the batch being attacked, of steps (0: between batches)
    steps: int = 0


@dataclass(frozen=True)
class ResultSink:
    """Where an evaluation's results go, given by the layer above the engine: ``store(doc)`` keeps
    one attack's result as soon as it is measured and returns (its flags, the summaries of its
    run and checkpoint); ``stored(run_id, checkpoint_hash)`` reads back every attack result of
    that checkpoint (their flags can change with later results)."""

    store: Callable[[dict[str, Any]], tuple[list[dict[str, str]], dict[str, dict[str, Any]]]]
    stored: Callable[[str, str], list[dict[str, Any]]]


@dataclass
class EvalReport:
    eval_id: str
    run_id: str
    run_name: str | None
    checkpoint: str
    checkpoint_hash: str
    settings: dict[str, Any]
    checkpoint_kind: str | None = None  # best, final or last
    checkpoint_epoch: int | None = None  # epochs the checkpoint's weights were trained for
    results: list[dict[str, Any]] = field(default_factory=list)  # attack docs, in evaluation order
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)  # "min", "worst-case"
    wall_time: float = 0.0

    def to_dict(self, masks: bool = False) -> dict[str, Any]:
        strip = (lambda d: d) if masks else (lambda d: {k: v for k, v in d.items() if k != "robust_mask"})
        return {"eval_id": self.eval_id, "run_id": self.run_id, "run_name": self.run_name,
                "checkpoint": self.checkpoint, "checkpoint_hash": self.checkpoint_hash,
                "checkpoint_kind": self.checkpoint_kind, "checkpoint_epoch": self.checkpoint_epoch,
                "settings": self.settings, "wall_time": self.wall_time,
                "results": [strip(d) for d in self.results],
                "summaries": {k: strip(v) for k, v in self.summaries.items()}}


# -- running an evaluation --------------------------------------------------------------------------------
def _test_split(config, limit: int | None, data_root_opt: str | None) -> tuple[Split, torch.Tensor, int]:
    """The evaluation examples, their indices in the test split (ascending, the order of every
    robust mask), and the split's size: load_split's class-balanced subset, with its ids kept."""
    # An explicit --data-root wins, then $ADVTUI_DATA, then where the run itself read its data.
    explicit = data_root_opt or (None if os.environ.get(DATA_ENV) else config.data_root)
    whole = load_split(config.dataset, data_root(explicit), False, None, seed=0)
    subset = balanced_subset(whole.labels, limit, seed=0)
    ids = torch.arange(len(whole)) if subset is None else subset
    if subset is None:
        return whole, ids, len(whole)
    return Split(whole.images[subset], whole.labels[subset], augment=whole.augment), ids, len(whole)


def _versions() -> dict[str, str | None]:
    """The versions a result was measured with (advtui, torch, torchattacks)."""
    from importlib.metadata import PackageNotFoundError, version

    from advtui import __version__

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"advtui": __version__, "torch": torch.__version__, "torchattacks": installed("torchattacks")}


def _checkpoint_kind(path: Path) -> str:
    """final, last, best, epoch-N: the checkpoint file's stem names its role in the run."""
    return Path(path).stem


def _manifest(target: RunCheckpoint, checkpoint_label: str, settings: dict[str, Any], ids: torch.Tensor,
              split_size: int) -> dict[str, Any]:
    """What every result of this evaluation rests on (the attack's own fields are added per result)."""
    ids_np = ids.cpu().numpy()
    epoch = target.state.get("epoch") if isinstance(target.state, dict) else None
    return {"eps": settings["eps"], "step_size": settings["step_size"], "seed": settings["seed"],
            "examples": settings["examples"], "n": settings["n"], "split_size": int(split_size),
            "example_ids": ids_to_hex(ids_np, split_size), "examples_hash": ids_digest(ids_np),
            "checkpoint": checkpoint_label, "checkpoint_hash": target.digest,
            "checkpoint_kind": _checkpoint_kind(target.path),
            "checkpoint_epoch": int(epoch) if isinstance(epoch, int) else None,
            "device": settings["device"], "versions": _versions()}


def _trained_epochs(state: dict[str, Any]) -> int | None:
    """The epochs a checkpoint's weights were trained for (a checkpoint saved mid-epoch: the
    epochs finished before it)."""
    epoch = state.get("epoch")
    return int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _relative_to_run(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(Path(path).resolve())


class _Evaluation:
    """One evaluation in progress: the model, the examples, and what has been measured."""

    def __init__(self, results: ResultSink, record, target: RunCheckpoint, model, split, attacks: list[Attack], *,
                 eps, step_size, batch_size, seed, cascade, settings, checkpoint_label, events, on_progress):
        self.results, self.record, self.target, self.model, self.split = results, record, target, model, split
        self.attacks, self.eps, self.step_size, self.batch_size = attacks, eps, step_size, batch_size
        self.seed, self.cascade, self.settings, self.checkpoint_label = seed, cascade, settings, checkpoint_label
        self.events, self.on_progress = events, on_progress
        self.eval_id = secrets.token_hex(4)
        self.n = len(split)
        self.device = split.images.device
        self.gradient_checks: dict[str, dict[str, int]] = {}
        self.checkpoint_kind = target.kind
        self.checkpoint_epoch = _trained_epochs(target.state)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split.images[idx].float().div_(255.0), self.split.labels[idx]

    def chunks(self, idx: torch.Tensor) -> Iterable[torch.Tensor]:
        return [chunk for chunk in idx.split(self.batch_size) if chunk.numel()]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def emit(self, phase: str, **fields: Any) -> None:
        self.events.emit("eval", eval_id=self.eval_id, phase=phase, **fields)

    # -- measurements --------------------------------------------------------------------------------
    @torch.no_grad()
    def clean_pass(self) -> None:
        """Natural predictions (every attack column needs them) and the clean CE."""
        self.clean_correct = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        ce_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        start = time.perf_counter()
        for idx in self.chunks(torch.arange(self.n, device=self.device)):
            x, y = self.batch(idx)
            logits = self.model(x)
            self.clean_correct[idx] = logits.argmax(1) == y
            ce_sum += ce_per_example(logits, y).double().sum()
        self.sync()
        self.clean_time = time.perf_counter() - start
        self.clean_ce = float(ce_sum) / max(self.n, 1)
        self.clean_robust = int(self.clean_correct.sum())

    def gradient_health(self, attack: Attack) -> dict[str, int] | None:
        """Zero or non-finite input gradients of the attack loss at clean x, once per loss."""
        if not attack.spec.white_box_gradient:
            return None
        loss = attack.spec.loss
        if loss not in self.gradient_checks:
            zero = nonfinite = 0
            idx = torch.nonzero(self.clean_correct).flatten()
            for chunk in self.chunks(idx):
                x, y = self.batch(chunk)
                _, grad = loss_and_grad(self.model, attack.loss_fn, x, y)
                flat = grad.flatten(1)
                nonfinite += int((~torch.isfinite(flat).all(1)).sum())
                zero += int((flat.abs().amax(1) == 0).sum())
            self.gradient_checks[loss] = {"checked": int(idx.numel()), "zero": zero, "nonfinite": nonfinite}
        return self.gradient_checks[loss]

    def run_attack(self, index: int, attack: Attack, attack_set: torch.Tensor):
        """Robust mask over all n examples, mean trajectory, examples attacked, wall time, and
        for a cascade each piece's robust count after it and its time."""
        label = attack.label
        if attack.maximizer is None:  # natural: the clean pass already measured it
            self.progress(EvalProgress(label, index, len(self.attacks), self.n, self.n, self.clean_robust), force=True)
            return self.clean_correct.clone(), [self.clean_ce], self.n, self.clean_time, None
        torch.manual_seed(self.seed)  # an attack's randomness does not depend on what ran before it
        idx = torch.nonzero(attack_set).flatten()
        robust = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        trajectory_sum = None
        # Examples outside the attack set (wrong at x, or broken earlier in a cascade) have
        # their verdict, not robust, before the first batch.
        done = self.n - int(idx.numel())
        start = time.perf_counter()
        todo = idx
        # Restarts and a cascade's pieces alike: each pass needs only the examples that
        # survived every earlier one (AutoAttack's run_standard_evaluation does the same).
        # A cascade's x' comes from several attacks, so it records no loss trajectory.
        record_first = not attack.stages
        passes = []
        for stage in range(attack.passes):
            stage_start = time.perf_counter()
            if stage > 0:
                todo = todo[robust[todo]]
            for chunk in self.chunks(todo):
                x, y = self.batch(chunk)
                now = EvalProgress(label, index, len(self.attacks), done, self.n, int(robust[idx].sum()),
                                   pass_index=stage, passes=attack.passes, steps=attack.spec.steps)
                result = attack.perturb(self.model, x, y, self.eps, record=record_first and stage == 0, stage=stage,
                                        on_step=lambda step, now=now: self.progress(replace(now, step=step)))
                with torch.no_grad():
                    robust[chunk] = self.model(result.x_adv).argmax(1) == y
                if stage == 0 and result.trajectory is not None:
                    weighted = result.trajectory.detach().double() * len(chunk)
                    trajectory_sum = weighted if trajectory_sum is None else trajectory_sum + weighted
                if stage == 0:
                    done += len(chunk)
                self.progress(replace(now, done=done, robust=int(robust[idx].sum())))
            if attack.stages:
                self.sync()
                passes.append({"attack": attack.stages[stage].name, "robust": int(robust[idx].sum()),
                               "wall_time": time.perf_counter() - stage_start})
        self.sync()
        wall = time.perf_counter() - start
        trajectory = (trajectory_sum / max(int(idx.numel()), 1)).tolist() if trajectory_sum is not None else []
        self.progress(EvalProgress(label, index, len(self.attacks), self.n, self.n, int(robust.sum()),
                                   pass_index=attack.passes - 1, passes=attack.passes), force=True)
        return robust, trajectory, int(idx.numel()), wall, passes or None

    def progress(self, p: EvalProgress, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - getattr(self, "_last_progress_event", 0.0) >= PROGRESS_EVENT_INTERVAL_S:
            self._last_progress_event = now
            self.emit("progress", attack=self.attacks[p.index].text, label=p.attack, index=p.index,
                      attacks=p.attacks, done=p.done, total=p.total, robust=p.robust, pass_index=p.pass_index,
                      passes=p.passes, step=p.step, steps=p.steps)
        if self.on_progress:
            self.on_progress(p)

    def result_doc(self, attack: Attack, robust, trajectory, n_attacked, wall, exact: bool,
                   passes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        spec = attack.spec
        count = int(robust.sum())
        return {
            "kind": "attack", "run_id": self.record["id"], "attack": spec.text, "checkpoint_hash": self.target.digest,
            "label": attack.label, "family": spec.family, "steps": spec.steps, "restarts": spec.restarts,
            "source_run": attack.source.record["id"] if attack.source else None,
            "source_checkpoint_hash": attack.source.digest if attack.source else None,
            "checkpoint": self.checkpoint_label, "checkpoint_kind": self.checkpoint_kind,
            "checkpoint_epoch": self.checkpoint_epoch, "date": time.time(), "eval_id": self.eval_id,
            "settings": self.settings, "accuracy": 100.0 * count / max(self.n, 1), "robust": count, "n": self.n,
            "n_attacked": n_attacked, "accuracy_kind": "attack" if exact else "cumulative",
            "clean_accuracy": 100.0 * self.clean_robust / max(self.n, 1), "clean_robust": self.clean_robust,
            "wall_time": wall, "loss": spec.loss,
            "trajectory": [v if math.isfinite(v) else None for v in trajectory],
            "trajectory_model": "surrogate" if attack.surrogate is not None else "target",
            "gradient": self.gradient_health(attack), "robust_mask": mask_to_hex(robust), "flags": [],
            "passes": passes, "manifest": {**self.manifest, "spec": spec.text, "steps": spec.steps,
                                           "restarts": spec.restarts},
        }

    def run(self) -> EvalReport:
        report = EvalReport(self.eval_id, self.record["id"], self.record.get("name"), self.checkpoint_label,
                            self.target.digest, self.settings, self.checkpoint_kind, self.checkpoint_epoch)
        started = time.perf_counter()
        self.emit("start", checkpoint=self.checkpoint_label, checkpoint_hash=self.target.digest,
                  checkpoint_kind=self.checkpoint_kind, checkpoint_epoch=self.checkpoint_epoch,
                  attacks=[a.text for a in self.attacks], labels=[a.label for a in self.attacks],
                  **{k: self.settings[k] for k in ("eps", "step_size", "n", "examples", "batch_size", "seed",
                                                   "device", "cascade")})
        try:
            self.model.eval()
            self.clean_pass()
            alive = self.clean_correct.clone()  # unbroken by every attack so far (cascade)
            for index, attack in enumerate(self.attacks):
                attack_set = alive if self.cascade else self.clean_correct
                exact = attack.maximizer is None or torch.equal(attack_set, self.clean_correct)
                robust, trajectory, n_attacked, wall, passes = self.run_attack(index, attack, attack_set)
                alive &= robust
                doc = self.result_doc(attack, robust, trajectory, n_attacked, wall, exact, passes)
                doc["flags"], report.summaries = self.results.store(doc)
                report.results.append(doc)
                self.emit("attack", attack=doc["attack"], label=doc["label"], index=index,
                          accuracy=doc["accuracy"], robust=doc["robust"], n=doc["n"], n_attacked=n_attacked,
                          accuracy_kind=doc["accuracy_kind"], wall_time=wall, steps=doc["steps"], loss=doc["loss"],
                          trajectory=doc["trajectory"], trajectory_model=doc["trajectory_model"], flags=doc["flags"])
                if self.on_progress:
                    self.on_progress(EvalProgress(attack.label, index, len(self.attacks), self.n, self.n,
                                                  doc["robust"], finished=True, accuracy=doc["accuracy"]))
            # Flags of earlier results may have changed with later ones (e.g. pgd-100 after pgd-10).
            final_flags = {d["attack"]: d.get("flags", []) for d in self.results.stored(
                self.record["id"], self.target.digest)
                if d["settings"]["eps"] == self.settings["eps"] and d["settings"]["examples"] == self.settings["examples"]}
            for doc in report.results:
                doc["flags"] = final_flags.get(doc["attack"], doc["flags"])
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.emit("end", status=status, wall_time=time.perf_counter() - started,
                      error=f"{type(exc).__name__}: {exc}"[:500])
            raise
        report.wall_time = time.perf_counter() - started
        low, worst = report.summaries.get("min"), report.summaries.get("worst-case")
        self.emit("end", status="finished", wall_time=report.wall_time,
                  min={"accuracy": low["accuracy"], "attack": low["argmin"]} if low else None,
                  worst_case={"accuracy": worst["accuracy"], "robust": worst["robust"], "n": worst["n"]} if worst else None)
        return report


def evaluate_checkpoint(
    record: dict[str, Any],
    checkpoint: Path,
    checkpoint_kind: str | None,
    specs: Iterable[AttackSpec],
    runs: RunLookup,
    results: ResultSink,
    folder: Path,
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    eps: float | None = None,
    step_size: float | None = None,
    seed: int = 0,
    device: torch.device,
    cascade: bool = False,
    data_root: str | None = None,
    on_progress: Callable[[EvalProgress], None] | None = None,
) -> EvalReport:
    """Evaluate the run ``record``'s checkpoint file (of kind best, final or last) under the attack
    ``specs`` on the first ``limit`` test examples, writing eval events to the run's ``folder``.

    eps defaults to the run's training eps, the PGD/CW step size to eps/4. Every result goes to
    ``results`` as soon as its attack finishes; every attack is built (other runs found through
    ``runs``) before the first one runs.
    """
    target = load_run_checkpoint(record, checkpoint, device)
    target.kind = checkpoint_kind
    eval_eps = float(eps) if eps is not None else float(target.config.eps)
    step = float(step_size) if step_size is not None else eval_eps / 4
    split, ids, split_size = _test_split(target.config, limit, data_root)
    split = split.to(device)
    model = build_run_model(target, device)
    built = build_attacks(specs, runs, record, eps=eval_eps, step_size=step, device=device,
                          target_config=target.config, seed=seed)

    settings = {
        "eps": eval_eps, "step_size": step, "limit": limit, "examples": f"{target.config.dataset}/test/{limit or 'all'}",
        "n": len(split), "batch_size": batch_size, "seed": seed, "device": device_name(device),
        "cascade": cascade,
    }
    with EventWriter(folder / EVENTS_FILE) as events:
        evaluation = _Evaluation(
            results, record, target, model, split, built, eps=eval_eps, step_size=step, batch_size=batch_size,
            seed=seed, cascade=cascade, settings=settings, checkpoint_label=_relative_to_run(target.path, folder),
            events=events, on_progress=on_progress)
        evaluation.manifest = _manifest(target, evaluation.checkpoint_label, settings, ids, split_size)
        return evaluation.run()
