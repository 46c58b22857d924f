"""The evaluation results store: what ``advtui eval`` measured, kept in the registry's
``results`` table, with the sanity flags and the min / worst-case summaries derived from it.

Torch-free: an evaluation (``advtui.evaluation``) writes here as each attack finishes;
``advtui show``, ``compare``, ``export``, ``report`` and the dashboard read from here without
loading the engine.

Result documents (registry table ``results``)
---------------------------------------------
Key: (``run_id``, ``attack``, ``checkpoint_hash``, ``settings.eps``, ``settings.examples``);
re-evaluating replaces only that document, so results at several eps or sample sizes sit side by
side and readers choose among them (``choose_results``: the run's main eps, then the larger
sample unless the latest is asked for).

- ``kind``: "attack"
- ``run_id``, ``attack`` (canonical spec, source runs by id), ``label`` (source runs by name),
  ``family``, ``steps``, ``restarts``, ``source_run``, ``source_checkpoint_hash``
- ``checkpoint_hash`` (sha256 of the checkpoint file, 16 hex), ``checkpoint`` (its path,
  relative to the run folder), ``checkpoint_kind`` ("best", "final" or "last"),
  ``checkpoint_epoch`` (the epochs its weights were trained for), ``date`` (unix time), ``eval_id``
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
- ``manifest``: the full budget behind the number: spec, eps, steps, step_size, restarts, seed,
  examples, n, example_ids (hex bitmap over the split's ``split_size`` examples, in split order),
  examples_hash (sha256 of the ids, 16 hex), checkpoint, checkpoint_hash, checkpoint_kind
  ("final", "last", "best", "epoch-N" or the file's stem), checkpoint_epoch, device, versions
  {advtui, torch, torchattacks}. Results stored before manifests have none; readers fall back
  to ``settings``.
- ``passes``: for a cascade (``aa``), [{attack, robust, wall_time}] per piece in order: the robust
  count after it (among all n) and its time; null otherwise
- ``flags``: [{code, message}]: sanity checks, recomputed whenever a result of the same run,
  checkpoint, example set and eps is stored. Codes: ``steps-up`` (more steps of the same attack
  gave higher robust accuracy beyond noise), ``transfer-stronger`` (a transfer attack beat
  every white-box one: masked gradients?), ``zero-gradient``, ``nonfinite-gradient``,
  ``nonfinite-loss``, ``eps0-mismatch`` (at eps 0 an attack's accuracy differs from natural),
  ``square-stronger`` (AutoAttack's own check: the black-box Square broke more than 0.2% of the
  examples after the gradient attacks, or square-K beat every gradient attack: masked gradients?).

Summary documents, same key with ``attack`` = "min" or "worst-case" and ``kind: "summary"``:
accuracy, n, robust (worst-case), argmin / argmin_label (min), ``over`` (the specs included),
settings, date, eval_id. Both cover the stored results of that run and checkpoint with the
same example set and eps as the evaluation that last wrote them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tinydb import Query

from advtui.core.attack_specs import attack_sort_key
from advtui.core.digests import hex_to_mask
from advtui.store.registry import RESULTS, Registry

SUMMARIES = ("min", "worst-case")


def doc_mask(doc: dict[str, Any]) -> np.ndarray | None:
    text = doc.get("robust_mask")
    return hex_to_mask(text, doc["n"]) if text is not None else None


# -- sanity flags and summaries (pure functions of stored documents) ---------------------------------
def _flag(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def _significantly_above(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Is a's robust accuracy above b's beyond noise? On the same examples this is a paired
    (McNemar-style) test: of the examples the two attacks disagree on, clearly more must be
    robust under a than under b (2 sigma, and more than one example)."""
    ma, mb = doc_mask(a), doc_mask(b)
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

        _square_check(d, own)

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

    # An attack that needs no gradient beating every one that does: masked gradients?
    _flag_stronger(flags, exact, "square", [d for d in exact if d["family"] not in ("transfer-pgd", "square")],
                   "square-stronger", "gradient")
    _flag_stronger(flags, exact, "transfer-pgd", [d for d in exact if d["family"] != "transfer-pgd"],
                   "transfer-stronger", "white-box")
    return flags


def _flag_stronger(flags: dict[str, list[dict[str, str]]], exact: list[dict[str, Any]], family: str,
                   rivals: list[dict[str, Any]], code: str, rivals_are: str) -> None:
    """Flag each result of ``family`` significantly below the strongest of ``rivals``."""
    if not rivals:
        return
    strongest = min(rivals, key=lambda d: d["accuracy"])
    for d in exact:
        if d["family"] == family and _significantly_above(strongest, d):
            flags[d["attack"]].append(_flag(
                code, f"{d['label']} ({d['accuracy']:.2f}%) beats every {rivals_are} attack "
                      f"(best {strongest['label']} {strongest['accuracy']:.2f}%): masked gradients?"))


SQUARE_ALPHA = 0.002  # AutoAttack's checks.check_square_sr: 0.2% of the examples


def _square_check(doc: dict[str, Any], own: list[dict[str, str]]) -> None:
    """AutoAttack's own warning (autoattack/checks.py, check_square_sr): in the cascade, Square
    lowering robust accuracy by more than 0.2% after the gradient attacks hints that those were
    masked, so the evaluation is unreliable."""
    passes = doc.get("passes") or []
    if len(passes) < 3 or passes[-1]["attack"] != "square":
        return
    before, after = passes[-2]["robust"], passes[-1]["robust"]
    if (before - after) / max(doc["n"], 1) > SQUARE_ALPHA:
        own.append(_flag("square-stronger", f"Square broke {before - after} more of {doc['n']} examples after the "
                                            "gradient attacks: their gradients may be masked (AutoAttack's check)"))


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
        mask = doc_mask(d)
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
    """One result per run, attack, checkpoint, eps and example set: evaluating at another eps or
    on more examples adds a result beside the earlier one instead of replacing it."""
    q = Query()
    settings = doc["settings"]
    return ((q.run_id == doc["run_id"]) & (q.attack == doc["attack"]) & (q.checkpoint_hash == doc["checkpoint_hash"])
            & (q.settings.eps == settings["eps"]) & (q.settings.examples == settings["examples"]))


def store_result(registry: Registry, doc: dict[str, Any]) -> tuple[list[dict[str, str]], dict[str, dict[str, Any]]]:
    """Replace the result with this key, then refresh the flags of its siblings (same run,
    checkpoint, example set and eps) and the run's min / worst-case summaries, all in one
    transaction. Returns (this result's flags, the summaries)."""
    with registry.transaction(RESULTS, run_id=doc["run_id"]) as db:  # the run's own file
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
                       "kind": "summary", "label": name, "checkpoint": doc["checkpoint"],
                       "checkpoint_kind": doc.get("checkpoint_kind"), "checkpoint_epoch": doc.get("checkpoint_epoch"),
                       "date": doc["date"],
                       "eval_id": doc["eval_id"], "settings": doc["settings"], "flags": [], **fields}
            table.remove(_key(summary))
            table.insert(summary)
            summaries[name] = summary
    return flags[doc["attack"]], summaries


# -- manifests: what a stored number rests on ------------------------------------------------------------
def example_ids(doc: dict[str, Any]) -> np.ndarray | None:
    """The split indices a result was measured on, in the order of its robust mask (ascending),
    or None for a result stored without a manifest."""
    manifest = doc.get("manifest") or {}
    text, size = manifest.get("example_ids"), manifest.get("split_size")
    if text is None or size is None:
        return None
    return np.flatnonzero(hex_to_mask(text, int(size)))


def example_set(doc: dict[str, Any]) -> str:
    """What identifies a result's examples: the ids' hash, else the examples text and n."""
    manifest = doc.get("manifest") or {}
    return manifest.get("examples_hash") or f"{doc['settings']['examples']}:{doc['n']}"


def checkpoint_kind(doc: dict[str, Any]) -> str:
    """Which checkpoint of its run a result came from: the stored kind, else the file's stem."""
    kind = doc.get("checkpoint_kind") or (doc.get("manifest") or {}).get("checkpoint_kind")
    if kind:
        return str(kind)
    return Path(str(doc.get("checkpoint") or "?")).stem or "?"


def checkpoint_epoch(doc: dict[str, Any]) -> int | None:
    epoch = doc.get("checkpoint_epoch")
    return epoch if epoch is not None else (doc.get("manifest") or {}).get("checkpoint_epoch")


# -- reading results back -------------------------------------------------------------------------------
PREFERENCES = ("largest", "latest")


def _main_eps(docs: list[dict[str, Any]]) -> float | None:
    """The eps most attacks were evaluated at (ties: the one evaluated last)."""
    by_eps: dict[float, tuple[set[str], float]] = {}
    for d in docs:
        attacks, date = by_eps.get(d["settings"]["eps"], (set(), 0.0))
        attacks.add(d["attack"])
        by_eps[d["settings"]["eps"]] = (attacks, max(date, d.get("date", 0)))
    if not by_eps:
        return None
    return max(by_eps, key=lambda e: (len(by_eps[e][0]), by_eps[e][1]))


def choose_results(docs: Iterable[dict[str, Any]], eps: float | None = None, prefer: str = "largest",
                   run_eps: float | None = None) -> dict[str, dict[str, Any]]:
    """One result per attack (and summary) of one checkpoint, in table order: at ``eps`` (default:
    the run's training eps ``run_eps`` when it has results there, else the eps most attacks were
    evaluated at), the larger sample first (``prefer="latest"``: the most recent), then the most
    recent."""
    docs = list(docs)
    wanted = eps
    if wanted is None and run_eps is not None and any(abs(d["settings"]["eps"] - run_eps) < 1e-12 for d in docs):
        wanted = run_eps
    if wanted is None:
        wanted = _main_eps([d for d in docs if d.get("kind") != "summary"])
    at_eps = [d for d in docs if wanted is None or abs(d["settings"]["eps"] - wanted) < 1e-12]
    rank = (lambda d: (d["n"], d.get("date", 0))) if prefer == "largest" else (lambda d: (d.get("date", 0), d["n"]))
    chosen: dict[str, dict[str, Any]] = {}
    for d in at_eps:
        if d["attack"] not in chosen or rank(d) > rank(chosen[d["attack"]]):
            chosen[d["attack"]] = d
    return _ordered(chosen.values())


def _ordered(docs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    docs = list(docs)
    attacks = sorted((d for d in docs if d.get("kind") != "summary"), key=lambda d: attack_sort_key(d["attack"]))
    summaries = [d for name in SUMMARIES for d in docs if d.get("kind") == "summary" and d["attack"] == name]
    return {d["attack"]: d for d in attacks + summaries}


def latest_checkpoint_hash(docs: Iterable[dict[str, Any]]) -> str | None:
    docs = list(docs)
    return max(docs, key=lambda d: d.get("date", 0))["checkpoint_hash"] if docs else None


def results_for_run(registry: Registry, run_id: str, checkpoint_hash: str | None = None, *,
                    eps: float | None = None, prefer: str = "largest") -> dict[str, dict[str, Any]]:
    """{attack spec: result doc} for one run and checkpoint, in table order, then "min" and
    "worst-case" (see ``choose_results``). Without ``checkpoint_hash``: the checkpoint evaluated
    most recently."""
    docs = registry.search(RESULTS, run_id=run_id)
    if checkpoint_hash is None:
        checkpoint_hash = latest_checkpoint_hash(docs)
    return choose_results((d for d in docs if d["checkpoint_hash"] == checkpoint_hash), eps, prefer)


def all_results_for_run(registry: Registry, run_id: str, checkpoint_hash: str | None = None) -> list[dict[str, Any]]:
    """Every attack result of a run's checkpoint (default: the latest evaluated), at every eps
    and sample size: what robustness curves and the audit read."""
    docs = registry.search(RESULTS, run_id=run_id)
    if checkpoint_hash is None:
        checkpoint_hash = latest_checkpoint_hash(docs)
    return [d for d in docs if d["checkpoint_hash"] == checkpoint_hash and d.get("kind") == "attack"]


def latest_results(registry: Registry, run_ids: Iterable[str] | None = None, *, eps: float | None = None,
                   prefer: str = "largest", run_eps: dict[str, float] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """results_for_run for many runs with one read of the registry: {run_id: {spec: doc}};
    ``run_eps``: each run's training eps, shown by default where it was evaluated."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for d in registry.all(RESULTS):
        by_run.setdefault(d["run_id"], []).append(d)
    wanted = list(by_run) if run_ids is None else list(run_ids)
    out = {}
    for run_id in wanted:
        docs = by_run.get(run_id, [])
        latest = latest_checkpoint_hash(docs)
        out[run_id] = choose_results((d for d in docs if d["checkpoint_hash"] == latest), eps, prefer,
                                     (run_eps or {}).get(run_id))
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
