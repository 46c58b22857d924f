"""Evaluating a run's checkpoint under a list of attacks.

``evaluate_run`` is what ``advtui eval``, a queued eval job and the dashboard all call. It
checks everything that can be wrong with the input first (run, checkpoint, every attack spec
and source run, data, device): bad input raises an AdvtuiError before anything is stored.

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

Result documents (registry table ``results``)
---------------------------------------------
Key: (``run_id``, ``attack``, ``checkpoint_hash``); re-evaluating replaces only that document.

- ``kind``: "attack"
- ``run_id``, ``attack`` (canonical spec, source runs by id), ``label`` (source runs by name),
  ``family``, ``steps``, ``restarts``, ``source_run``, ``source_checkpoint_hash``
- ``checkpoint_hash`` (sha256 of the checkpoint file, 16 hex), ``checkpoint`` (its path,
  relative to the run folder when inside it), ``date`` (unix time), ``eval_id``
- ``settings``: eps, step_size, limit, examples ("mnist/test/200"), n, batch_size, seed,
  device, cascade
- ``accuracy`` (%), ``robust`` (count), ``n``, ``n_attacked`` (examples the attack ran on),
  ``accuracy_kind`` ("attack" or "cumulative"), ``clean_accuracy`` (%), ``wall_time`` (s)
- ``trajectory``: mean attack loss at x'_0..x'_K over the attacked examples (K + 1 values;
  one value, the clean CE, for natural); ``trajectory_model``: "target", or "surrogate" for
  transfer attacks (crafted there); ``loss``: "ce" or "cw"
- ``gradient``: {checked, zero, nonfinite}: input gradients of the attack loss at clean x
  (white-box gradient attacks only, else null)
- ``robust_mask``: hex of the packed per-example robust bits (what worst-case is built from)
- ``flags``: [{code, message}]: sanity checks, recomputed whenever a result of the same run,
  checkpoint, example set and eps is stored. Codes: ``steps-up`` (more steps of the same attack
  gave higher robust accuracy beyond noise), ``transfer-stronger`` (a transfer attack beat
  every white-box one: masked gradients?), ``zero-gradient``, ``nonfinite-gradient``,
  ``nonfinite-loss``, ``eps0-mismatch`` (at eps 0 an attack's accuracy differs from natural).

Summary documents, same key with ``attack`` = "min" or "worst-case" and ``kind: "summary"``:
accuracy, n, robust (worst-case), argmin / argmin_label (min), ``over`` (the specs included),
settings, date, eval_id. Both cover the stored results of that run and checkpoint with the
same example set and eps as the evaluation that last wrote them.

Events (``eval`` kind in the run's events.jsonl; every one has ``eval_id`` and ``phase``)
------------------------------------------------------------------------------------------
- ``start``: checkpoint, checkpoint_hash, attacks (canonical specs), labels, eps, step_size,
  n, examples, batch_size, seed, device, cascade
- ``progress`` (at most about once a second per attack, and at each attack's end): attack,
  label, index (0-based), attacks (how many), done, total (examples processed / to process),
  robust (robust so far among done)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tinydb import Query

from advtui.engine.attacks import (
    Attack, AttackSpec, RunCheckpoint, attack_sort_key, build_attacks, build_run_model, default_attacks,
    load_run_checkpoint, parse_attack_list,
)
from advtui.engine.maximizers import loss_and_grad
from advtui.engine.objectives import ce_per_example
from advtui.errors import ConfigError
from advtui.events import EVENTS_FILE, EventWriter
from advtui.registry import RESULTS, Registry

DEFAULT_BATCH_SIZE = 256
SUMMARIES = ("min", "worst-case")
PROGRESS_EVENT_INTERVAL_S = 1.0


@dataclass
class EvalProgress:
    """What a progress display needs after each batch of an evaluation."""

    attack: str  # label
    index: int  # 0-based position in the attack list
    attacks: int
    done: int  # examples processed for this attack (restarts count again)
    total: int
    robust: int  # robust so far among the processed examples
    finished: bool = False
    accuracy: float | None = None  # set when finished


@dataclass
class EvalReport:
    eval_id: str
    run_id: str
    run_name: str | None
    checkpoint: str
    checkpoint_hash: str
    settings: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)  # attack docs, in evaluation order
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)  # "min", "worst-case"
    wall_time: float = 0.0

    def to_dict(self, masks: bool = False) -> dict[str, Any]:
        strip = (lambda d: d) if masks else (lambda d: {k: v for k, v in d.items() if k != "robust_mask"})
        return {"eval_id": self.eval_id, "run_id": self.run_id, "run_name": self.run_name,
                "checkpoint": self.checkpoint, "checkpoint_hash": self.checkpoint_hash,
                "settings": self.settings, "wall_time": self.wall_time,
                "results": [strip(d) for d in self.results],
                "summaries": {k: strip(v) for k, v in self.summaries.items()}}


# -- per-example masks, stored compactly -------------------------------------------------------------
def mask_to_hex(mask: torch.Tensor | np.ndarray) -> str:
    bits = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return np.packbits(bits.astype(bool)).tobytes().hex()


def hex_to_mask(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n].astype(bool)


def _doc_mask(doc: dict[str, Any]) -> np.ndarray | None:
    text = doc.get("robust_mask")
    return hex_to_mask(text, doc["n"]) if text is not None else None


# -- sanity flags and summaries (pure functions of stored documents) ---------------------------------
def _flag(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def _significantly_above(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Is a's robust accuracy above b's beyond noise? On the same examples this is a paired
    (McNemar-style) test: of the examples the two attacks disagree on, clearly more must be
    robust under a than under b (2 sigma, and more than one example)."""
    ma, mb = _doc_mask(a), _doc_mask(b)
    if ma is not None and mb is not None and len(ma) == len(mb):
        up, down = int((ma & ~mb).sum()), int((mb & ~ma).sum())
        return up - down > max(1.0, 2.0 * math.sqrt(up + down))
    return a["accuracy"] - b["accuracy"] > 1.0


def compute_flags(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """Sanity flags for the attack results of one run, checkpoint, example set and eps."""
    flags: dict[str, list[dict[str, str]]] = {d["attack"]: [] for d in docs}
    for d in docs:
        own = flags[d["attack"]]
        grad = d.get("gradient") or {}
        if grad.get("nonfinite"):
            own.append(_flag("nonfinite-gradient",
                             f"non-finite input gradient on {grad['nonfinite']}/{grad['checked']} examples"))
        if grad.get("zero"):
            own.append(_flag("zero-gradient", f"zero input gradient ({d.get('loss', 'ce')} loss) on "
                                              f"{grad['zero']}/{grad['checked']} examples: gradient attacks cannot move them"))
        if any(v is None or not math.isfinite(v) for v in d.get("trajectory") or []):
            own.append(_flag("nonfinite-loss", "the attack loss became NaN or infinite"))
        if d["settings"]["eps"] == 0 and d["family"] != "natural" and d["robust"] != d.get("clean_robust"):
            own.append(_flag("eps0-mismatch", f"at eps 0 accuracy {d['accuracy']:.2f}% differs from natural "
                                              f"{d.get('clean_accuracy', float('nan')):.2f}%"))

    exact = [d for d in docs if d.get("accuracy_kind") == "attack" and d["family"] != "natural"]
    families: dict[tuple, list[dict[str, Any]]] = {}
    for d in exact:
        families.setdefault((d["family"], d.get("source_run"), d.get("restarts", 1)), []).append(d)
    for members in families.values():
        members.sort(key=lambda d: d["steps"])
        for i, more in enumerate(members):
            fewer = next((f for f in members[:i] if f["steps"] < more["steps"] and _significantly_above(more, f)), None)
            if fewer is not None:
                flags[more["attack"]].append(_flag(
                    "steps-up", f"robust accuracy rises with more steps: {more['label']} {more['accuracy']:.2f}% > "
                                f"{fewer['label']} {fewer['accuracy']:.2f}% (attack not converged or randomized defense?)"))

    white_box = [d for d in exact if d["family"] != "transfer-pgd"]
    if white_box:
        strongest = min(white_box, key=lambda d: d["accuracy"])
        for d in exact:
            if d["family"] == "transfer-pgd" and _significantly_above(strongest, d):
                flags[d["attack"]].append(_flag(
                    "transfer-stronger", f"{d['label']} ({d['accuracy']:.2f}%) beats every white-box attack "
                                         f"(best {strongest['label']} {strongest['accuracy']:.2f}%): masked gradients?"))
    return flags


def summarize(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``min`` over the exact columns and per-example ``worst-case`` over all of them."""
    if not docs:
        return {}
    n = docs[0]["n"]
    out: dict[str, dict[str, Any]] = {}
    exact = [d for d in docs if d.get("accuracy_kind") == "attack"]
    if exact:
        lowest = min(exact, key=lambda d: (d["accuracy"], attack_sort_key(d["attack"])))
        out["min"] = {"accuracy": lowest["accuracy"], "n": n, "argmin": lowest["attack"],
                      "argmin_label": lowest["label"], "over": [d["attack"] for d in exact]}
    robust = np.ones(n, dtype=bool)
    for d in docs:
        mask = _doc_mask(d)
        if mask is not None:
            robust &= mask
    count = int(robust.sum())
    out["worst-case"] = {"accuracy": 100.0 * count / max(n, 1), "robust": count, "n": n,
                         "over": [d["attack"] for d in docs]}
    return out


def _same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    sa, sb = a["settings"], b["settings"]
    return sa["examples"] == sb["examples"] and a["n"] == b["n"] and abs(sa["eps"] - sb["eps"]) < 1e-12


def _key(doc: dict[str, Any]):
    q = Query()
    return (q.run_id == doc["run_id"]) & (q.attack == doc["attack"]) & (q.checkpoint_hash == doc["checkpoint_hash"])


def store_result(registry: Registry, doc: dict[str, Any]) -> tuple[list[dict[str, str]], dict[str, dict[str, Any]]]:
    """Replace the result with this key, then refresh the flags of its siblings (same run,
    checkpoint, example set and eps) and the run's min / worst-case summaries, all in one
    transaction. Returns (this result's flags, the summaries)."""
    with registry.transaction() as db:
        table = db.table(RESULTS, cache_size=0)
        table.remove(_key(doc))
        table.insert(doc)
        q = Query()
        siblings = [dict(d) for d in table.search((q.run_id == doc["run_id"]) & (q.checkpoint_hash == doc["checkpoint_hash"]))
                    if d.get("kind") == "attack" and _same_setting(d, doc)]
        siblings.sort(key=lambda d: attack_sort_key(d["attack"]))
        flags = compute_flags(siblings)
        for d in siblings:
            if d.get("flags") != flags[d["attack"]]:
                table.update({"flags": flags[d["attack"]]}, _key(d))
        summaries = summarize(siblings)
        for name, fields in summaries.items():
            summary = {"run_id": doc["run_id"], "attack": name, "checkpoint_hash": doc["checkpoint_hash"],
                       "kind": "summary", "label": name, "checkpoint": doc["checkpoint"], "date": doc["date"],
                       "eval_id": doc["eval_id"], "settings": doc["settings"], "flags": [], **fields}
            table.remove(_key(summary))
            table.insert(summary)
            summaries[name] = summary
    return flags[doc["attack"]], summaries


# -- reading results back -------------------------------------------------------------------------------
def _ordered(docs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    docs = list(docs)
    attacks = sorted((d for d in docs if d.get("kind") != "summary"), key=lambda d: attack_sort_key(d["attack"]))
    summaries = [d for name in SUMMARIES for d in docs if d.get("kind") == "summary" and d["attack"] == name]
    return {d["attack"]: d for d in attacks + summaries}


def latest_checkpoint_hash(docs: Iterable[dict[str, Any]]) -> str | None:
    docs = list(docs)
    return max(docs, key=lambda d: d.get("date", 0))["checkpoint_hash"] if docs else None


def results_for_run(registry: Registry, run_id: str, checkpoint_hash: str | None = None) -> dict[str, dict[str, Any]]:
    """{attack spec: result doc} for one run and checkpoint, in table order, then "min" and
    "worst-case". Without ``checkpoint_hash``: the checkpoint evaluated most recently."""
    docs = registry.search(RESULTS, run_id=run_id)
    if checkpoint_hash is None:
        checkpoint_hash = latest_checkpoint_hash(docs)
    return _ordered(d for d in docs if d["checkpoint_hash"] == checkpoint_hash)


def latest_results(registry: Registry, run_ids: Iterable[str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """results_for_run for many runs with one read of the registry: {run_id: {spec: doc}}."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for d in registry.all(RESULTS):
        by_run.setdefault(d["run_id"], []).append(d)
    wanted = list(by_run) if run_ids is None else list(run_ids)
    out = {}
    for run_id in wanted:
        docs = by_run.get(run_id, [])
        latest = latest_checkpoint_hash(docs)
        out[run_id] = _ordered(d for d in docs if d["checkpoint_hash"] == latest)
    return out


def evaluated_checkpoints(registry: Registry, run_id: str) -> list[dict[str, Any]]:
    """The checkpoints of a run that have results: [{checkpoint_hash, checkpoint, date, attacks}],
    most recent first."""
    seen: dict[str, dict[str, Any]] = {}
    for d in registry.search(RESULTS, run_id=run_id):
        entry = seen.setdefault(d["checkpoint_hash"], {"checkpoint_hash": d["checkpoint_hash"],
                                                       "checkpoint": d.get("checkpoint"), "date": 0, "attacks": 0})
        entry["date"] = max(entry["date"], d.get("date", 0))
        entry["attacks"] += d.get("kind") == "attack"
    return sorted(seen.values(), key=lambda e: -e["date"])


# -- running an evaluation --------------------------------------------------------------------------------
def _check_options(limit, batch_size, eps, step_size, seed) -> None:
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 test example, got {limit}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if eps is not None and not (0.0 <= eps <= 1.0):
        raise ConfigError(f"--eps must be in [0, 1] for inputs in [0, 1], got {eps}")
    if step_size is not None and not (0.0 < step_size <= 1.0):
        raise ConfigError(f"--step-size must be in (0, 1], got {step_size}")
    if seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {seed}")


def attack_specs_for(attacks: str | Iterable[str | AttackSpec] | None, record: dict[str, Any]) -> list[AttackSpec]:
    """Parse an attack list (None: the run's default list)."""
    if attacks is None:
        return default_attacks(record)
    if isinstance(attacks, str):
        return parse_attack_list(attacks)
    items = list(attacks)
    if items and all(isinstance(a, AttackSpec) for a in items):
        return items
    return parse_attack_list([str(a) for a in items])


def _test_split(config, limit: int | None, data_root_opt: str | None):
    from advtui.engine.data import load_split
    from advtui.paths import DATA_ENV, data_root

    # An explicit --data-root wins, then $ADVTUI_DATA, then where the run itself read its data.
    explicit = data_root_opt or (None if os.environ.get(DATA_ENV) else config.data_root)
    return load_split(config.dataset, data_root(explicit), False, limit, seed=0)


def _relative_to_run(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(Path(path).resolve())


class _Evaluation:
    """One evaluation in progress: the model, the examples, and what has been measured."""

    def __init__(self, registry, record, target: RunCheckpoint, model, split, attacks: list[Attack], *,
                 eps, step_size, batch_size, seed, cascade, settings, checkpoint_label, events, on_progress):
        self.registry, self.record, self.target, self.model, self.split = registry, record, target, model, split
        self.attacks, self.eps, self.step_size, self.batch_size = attacks, eps, step_size, batch_size
        self.seed, self.cascade, self.settings, self.checkpoint_label = seed, cascade, settings, checkpoint_label
        self.events, self.on_progress = events, on_progress
        self.eval_id = secrets.token_hex(4)
        self.n = len(split)
        self.device = split.images.device
        self.gradient_checks: dict[str, dict[str, int]] = {}

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split.images[idx].float().div_(255.0), self.split.labels[idx]

    def chunks(self, idx: torch.Tensor) -> Iterable[torch.Tensor]:
        return idx.split(self.batch_size)

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
        """Robust mask over all n examples, mean trajectory, examples attacked, wall time."""
        label = attack.label
        if attack.maximizer is None:  # natural: the clean pass already measured it
            self.progress(index, label, self.n, self.n, self.clean_robust, force=True)
            return self.clean_correct.clone(), [self.clean_ce], self.n, self.clean_time
        torch.manual_seed(self.seed)  # an attack's randomness does not depend on what ran before it
        idx = torch.nonzero(attack_set).flatten()
        robust = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        trajectory_sum, done = None, 0
        total = int(idx.numel())
        start = time.perf_counter()
        todo = idx
        for restart in range(attack.spec.restarts):
            if restart > 0:  # a restart only needs the examples that survived so far
                todo = todo[robust[todo]]
                total += int(todo.numel())
            for chunk in self.chunks(todo):
                x, y = self.batch(chunk)
                result = attack.perturb(self.model, x, y, self.eps, record=restart == 0)
                with torch.no_grad():
                    robust[chunk] = self.model(result.x_adv).argmax(1) == y
                if restart == 0 and result.trajectory is not None:
                    weighted = result.trajectory.detach().double() * len(chunk)
                    trajectory_sum = weighted if trajectory_sum is None else trajectory_sum + weighted
                done += len(chunk)
                self.progress(index, label, done, total, int(robust[idx].sum()))
        self.sync()
        wall = time.perf_counter() - start
        trajectory = (trajectory_sum / max(int(idx.numel()), 1)).tolist() if trajectory_sum is not None else []
        self.progress(index, label, done, total, int(robust.sum()), force=True)
        return robust, trajectory, int(idx.numel()), wall

    def progress(self, index, label, done, total, robust, force=False) -> None:
        now = time.monotonic()
        if force or now - getattr(self, "_last_progress_event", 0.0) >= PROGRESS_EVENT_INTERVAL_S:
            self._last_progress_event = now
            self.emit("progress", attack=self.attacks[index].text, label=label, index=index,
                      attacks=len(self.attacks), done=done, total=total, robust=robust)
        if self.on_progress:
            self.on_progress(EvalProgress(label, index, len(self.attacks), done, total, robust))

    def result_doc(self, attack: Attack, robust, trajectory, n_attacked, wall, exact: bool) -> dict[str, Any]:
        spec = attack.spec
        count = int(robust.sum())
        return {
            "kind": "attack", "run_id": self.record["id"], "attack": spec.text, "checkpoint_hash": self.target.digest,
            "label": attack.label, "family": spec.family, "steps": spec.steps, "restarts": spec.restarts,
            "source_run": attack.source.record["id"] if attack.source else None,
            "source_checkpoint_hash": attack.source.digest if attack.source else None,
            "checkpoint": self.checkpoint_label, "date": time.time(), "eval_id": self.eval_id,
            "settings": self.settings, "accuracy": 100.0 * count / max(self.n, 1), "robust": count, "n": self.n,
            "n_attacked": n_attacked, "accuracy_kind": "attack" if exact else "cumulative",
            "clean_accuracy": 100.0 * self.clean_robust / max(self.n, 1), "clean_robust": self.clean_robust,
            "wall_time": wall, "loss": spec.loss,
            "trajectory": [v if math.isfinite(v) else None for v in trajectory],
            "trajectory_model": "surrogate" if attack.surrogate is not None else "target",
            "gradient": self.gradient_health(attack), "robust_mask": mask_to_hex(robust), "flags": [],
        }

    def run(self) -> EvalReport:
        report = EvalReport(self.eval_id, self.record["id"], self.record.get("name"), self.checkpoint_label,
                            self.target.digest, self.settings)
        started = time.perf_counter()
        self.emit("start", checkpoint=self.checkpoint_label, checkpoint_hash=self.target.digest,
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
                robust, trajectory, n_attacked, wall = self.run_attack(index, attack, attack_set)
                alive &= robust
                doc = self.result_doc(attack, robust, trajectory, n_attacked, wall, exact)
                doc["flags"], report.summaries = store_result(self.registry, doc)
                report.results.append(doc)
                self.emit("attack", attack=doc["attack"], label=doc["label"], index=index,
                          accuracy=doc["accuracy"], robust=doc["robust"], n=doc["n"], n_attacked=n_attacked,
                          accuracy_kind=doc["accuracy_kind"], wall_time=wall, steps=doc["steps"], loss=doc["loss"],
                          trajectory=doc["trajectory"], trajectory_model=doc["trajectory_model"], flags=doc["flags"])
                if self.on_progress:
                    self.on_progress(EvalProgress(attack.label, index, len(self.attacks), n_attacked, n_attacked,
                                                  doc["robust"], finished=True, accuracy=doc["accuracy"]))
            # Flags of earlier results may have changed with later ones (e.g. pgd-100 after pgd-10).
            final_flags = {d["attack"]: d.get("flags", []) for d in results_for_run(
                self.registry, self.record["id"], self.target.digest).values()}
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


def evaluate_run(
    registry: Registry,
    run_ref: str,
    attacks: str | Iterable[str | AttackSpec] | None = None,
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    eps: float | None = None,
    step_size: float | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    device: str = "auto",
    cascade: bool = False,
    data_root: str | None = None,
    on_progress: Callable[[EvalProgress], None] | None = None,
) -> EvalReport:
    """Evaluate RUN's checkpoint (final, else last, or ``checkpoint``) under ``attacks``
    (a spec list; None: the paper's Table 3 list) on the first ``limit`` test examples.

    eps defaults to the run's training eps, the PGD/CW step size to eps/4. Every result is
    stored as soon as its attack finishes; all input is checked before the first one runs.
    """
    from advtui.engine.train import device_name, resolve_device
    from advtui.runner import run_folder

    record = registry.resolve_run(run_ref)
    specs = attack_specs_for(attacks, record)
    _check_options(limit, batch_size, eps, step_size, seed)
    torch_device = resolve_device(device)
    target = load_run_checkpoint(registry, record, checkpoint, torch_device)
    eval_eps = float(eps) if eps is not None else float(target.config.eps)
    step = float(step_size) if step_size is not None else eval_eps / 4
    split = _test_split(target.config, limit, data_root).to(torch_device)
    model = build_run_model(target, torch_device)
    built = build_attacks(specs, registry, record, eps=eval_eps, step_size=step, device=torch_device,
                          target_config=target.config)

    folder = run_folder(registry, record)
    settings = {
        "eps": eval_eps, "step_size": step, "limit": limit, "examples": f"{target.config.dataset}/test/{limit or 'all'}",
        "n": len(split), "batch_size": batch_size, "seed": seed, "device": device_name(torch_device),
        "cascade": cascade,
    }
    with EventWriter(folder / EVENTS_FILE) as events:
        evaluation = _Evaluation(
            registry, record, target, model, split, built, eps=eval_eps, step_size=step, batch_size=batch_size,
            seed=seed, cascade=cascade, settings=settings, checkpoint_label=_relative_to_run(target.path, folder),
            events=events, on_progress=on_progress)
        return evaluation.run()
