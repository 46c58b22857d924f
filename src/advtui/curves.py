"""Robustness curves and an attack audit, from a run's stored results.

Curves: accuracy against eps (one attack evaluated at several eps: ``advtui eval RUN --eps
0.1,0.2,0.3,0.4``) and against attack iterations (pgd-10/20/50/100 at one eps), each point with
its n and exact 95% interval; drawn for the terminal (plotext) and as a PNG (matplotlib).

Audit: the checks of Carlini et al. 2019 ("On Evaluating Adversarial Robustness", section 5's
checklist) and of AutoAttack (Croce & Hein 2020, flags of ``autoattack/checks.py``) that need
more than one result, each a one-line finding with what to do:

- ``eps-up``: accuracy rising with eps for the same attack (beyond a paired test): the attack
  is not working at the larger radius;
- ``no-zero-at-large-eps``: a white-box attack leaves more than ``LARGE_EPS_FLOOR`` % robust at
  an eps of at least twice the training eps, where an unbounded-enough attack should reach about 0;
- ``aa-far-below-pgd``: AutoAttack more than ``AA_GAP`` points below the strongest PGD on the same
  examples, beyond a paired test: gradient masking;
- the stored per-setting flags (``steps-up``: accuracy not falling with more iterations;
  ``transfer-stronger``: a black-box attack beating the white-box ones; ``square-stronger``) are kept.

Torch-free; the plots import plotext and matplotlib when drawn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advtui.store.results import all_results_for_run, doc_mask, example_ids
from advtui.core.stats import ALPHA, paired_difference, proportion_interval
from advtui.store.registry import Registry

LARGE_EPS_FACTOR = 2.0  # "large": at least this times the training eps
LARGE_EPS_FLOOR = 5.0  # % robust accuracy left at a large eps that counts as "not about 0"
AA_GAP = 10.0  # points by which AutoAttack below PGD means the PGD numbers were masked
WHITE_BOX_FAMILIES = ("fgsm", "pgd", "cw", "pgd-bls", "apgd-ce", "apgd-t", "aa")


@dataclass
class CurvePoint:
    x: float  # eps, or attack steps
    accuracy: float
    n: int
    low: float | None
    high: float | None


@dataclass
class RobustnessCurve:
    run_id: str
    run_label: str
    kind: str  # "eps" | "steps"
    series: str  # the attack spec (eps curves) or family (steps curves)
    at: str  # what is held fixed: "steps 100" or "eps 0.3"
    points: list[CurvePoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunAudit:
    run_id: str
    run_label: str
    curves: list[RobustnessCurve]
    findings: list[dict[str, str]]  # {code, message}


def _point(x: float, doc: dict[str, Any]) -> CurvePoint:
    interval = proportion_interval(doc["robust"], doc["n"])
    return CurvePoint(x, doc["accuracy"], doc["n"], *(interval or (None, None)))


def _largest(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(docs, key=lambda d: (d["n"], d.get("date", 0)))


def _exact(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("accuracy_kind") == "attack" and d.get("family") != "natural"]


def eps_curves(run_id: str, label: str, docs: list[dict[str, Any]]) -> list[RobustnessCurve]:
    """One curve per attack evaluated at two eps or more (the larger sample at each eps)."""
    by_attack: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for d in _exact(docs):
        by_attack.setdefault(d["attack"], {}).setdefault(d["settings"]["eps"], []).append(d)
    curves = []
    for attack, by_eps in sorted(by_attack.items()):
        if len(by_eps) < 2:
            continue
        steps = _largest(next(iter(by_eps.values()))).get("steps")
        points = [_point(eps, _largest(group)) for eps, group in sorted(by_eps.items())]
        curves.append(RobustnessCurve(run_id, label, "eps", attack, f"steps {steps}", points))
    return curves


def steps_curves(run_id: str, label: str, docs: list[dict[str, Any]]) -> list[RobustnessCurve]:
    """One curve per attack family evaluated with two step counts or more at one eps."""
    groups: dict[tuple, dict[int, list[dict[str, Any]]]] = {}
    for d in _exact(docs):
        key = (d["family"], d.get("restarts", 1), d.get("source_run"), d["settings"]["eps"])
        groups.setdefault(key, {}).setdefault(int(d.get("steps") or 0), []).append(d)
    curves = []
    for (family, restarts, _, eps), by_steps in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len(by_steps) < 2:
            continue
        series = family + (f" x{restarts}" if restarts and restarts > 1 else "")
        points = [_point(float(steps), _largest(group)) for steps, group in sorted(by_steps.items())]
        curves.append(RobustnessCurve(run_id, label, "steps", series, f"eps {eps:g}", points))
    return curves


# -- the audit ------------------------------------------------------------------------------------
def _paired(a: dict[str, Any], b: dict[str, Any]):
    """a minus b on the examples both share (None when they share none or lack masks)."""
    ma, mb, ia, ib = doc_mask(a), doc_mask(b), example_ids(a), example_ids(b)
    if ma is None or mb is None:
        return None
    if ia is None or ib is None:
        if a["settings"]["examples"] != b["settings"]["examples"] or len(ma) != len(mb):
            return None
        return paired_difference(ma, mb)
    _, xa, xb = np.intersect1d(ia, ib, return_indices=True)
    return paired_difference(ma[xa], mb[xb]) if xa.size else None


def _eps_up(curves: list[RobustnessCurve], docs: list[dict[str, Any]]) -> list[dict[str, str]]:
    findings = []
    for curve in (c for c in curves if c.kind == "eps"):
        at = {d["settings"]["eps"]: d for d in _exact(docs) if d["attack"] == curve.series}
        eps = sorted(at)
        for small, large in zip(eps, eps[1:]):
            test = _paired(at[large], at[small])
            if test is not None and test.difference > 0 and test.p < ALPHA:
                findings.append({"code": "eps-up", "message": (
                    f"{curve.series}: accuracy rises from {at[small]['accuracy']:.2f}% at eps {small:g} to "
                    f"{at[large]['accuracy']:.2f}% at eps {large:g} (McNemar p = {test.p:.3g}): the attack fails at "
                    "the larger radius; add steps or restarts, or a black-box attack (square-5000)")})
    return findings


def _no_zero(record: dict[str, Any], docs: list[dict[str, Any]]) -> list[dict[str, str]]:
    train_eps = (record.get("config") or {}).get("eps")
    if not train_eps:
        return []
    large = [d for d in _exact(docs) if d["settings"]["eps"] >= LARGE_EPS_FACTOR * float(train_eps) - 1e-12
             and d["family"] in WHITE_BOX_FAMILIES]
    if not large:
        return []
    strongest = min(large, key=lambda d: (d["accuracy"], -d["settings"]["eps"]))
    if strongest["accuracy"] <= LARGE_EPS_FLOOR:
        return []
    return [{"code": "no-zero-at-large-eps", "message": (
        f"at eps {strongest['settings']['eps']:g} ({strongest['settings']['eps'] / float(train_eps):.1f}x the "
        f"training eps) {strongest['label']} still leaves {strongest['accuracy']:.2f}% robust, where accuracy "
        "should reach about 0: gradients may be masked; try more steps, restarts or aa at that eps")}]


def _aa_far_below(docs: list[dict[str, Any]]) -> list[dict[str, str]]:
    findings = []
    for aa in (d for d in _exact(docs) if d["attack"] == "aa"):
        pgds = [d for d in _exact(docs) if d["family"] == "pgd" and d["settings"]["eps"] == aa["settings"]["eps"]]
        if not pgds:
            continue
        pgd = min(pgds, key=lambda d: d["accuracy"])
        test = _paired(pgd, aa)
        if test is not None and test.difference > AA_GAP and test.p < ALPHA:
            findings.append({"code": "aa-far-below-pgd", "message": (
                f"at eps {aa['settings']['eps']:g} AutoAttack leaves {aa['accuracy']:.2f}%, {test.difference:.2f} "
                f"points below {pgd['label']} ({pgd['accuracy']:.2f}%) on {test.n} shared examples (McNemar p = "
                f"{test.p:.3g}): PGD is masked on this model; report aa, not PGD")})
    return findings


def _stored_flags(docs: list[dict[str, Any]]) -> list[dict[str, str]]:
    seen, out = set(), []
    for d in docs:
        for flag in d.get("flags") or []:
            if flag["code"] in ("steps-up", "transfer-stronger", "square-stronger") and flag["message"] not in seen:
                seen.add(flag["message"])
                out.append({"code": flag["code"], "message": f"eps {d['settings']['eps']:g}: {flag['message']}"})
    return out


def audit_run(registry: Registry, record: dict[str, Any]) -> RunAudit:
    """Curves and audit findings of a run's latest evaluated checkpoint."""
    docs = all_results_for_run(registry, record["id"])
    label = record.get("name") or record["id"]
    curves = eps_curves(record["id"], label, docs) + steps_curves(record["id"], label, docs)
    findings = _stored_flags(docs) + _eps_up(curves, docs) + _no_zero(record, docs) + _aa_far_below(docs)
    return RunAudit(record["id"], label, curves, findings)


# -- drawing ----------------------------------------------------------------------------------------
def _axis_label(kind: str) -> str:
    return "eps" if kind == "eps" else "attack iterations"


def curves_plot_text(audits: list[RunAudit], kind: str, width: int = 90, height: int = 18) -> str | None:
    """Every run's curves of one kind as a plotext chart (ANSI text); None when there are none."""
    curves = [c for a in audits for c in a.curves if c.kind == kind]
    if not curves:
        return None
    import plotext as plt

    plt.clear_figure()
    plt.plot_size(width, height)
    for c in curves:
        plt.plot([p.x for p in c.points], [p.accuracy for p in c.points], marker="dot",
                 label=f"{c.run_label} {c.series} ({c.at})")
    if kind == "steps":
        plt.xscale("log")
    plt.ylim(0, 100)
    plt.title(f"robust accuracy % against {_axis_label(kind)}")
    plt.xlabel(_axis_label(kind))
    text = plt.build()
    plt.clear_figure()
    return text


def save_curves_png(audits: list[RunAudit], path: Path) -> Path | None:
    """Both kinds side by side, each point with its 95% interval as an error bar; None if no curve."""
    kinds = [k for k in ("eps", "steps") if any(c.kind == k for a in audits for c in a.curves)]
    if not kinds:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * len(kinds) + 0.5, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        for c in (c for a in audits for c in a.curves if c.kind == kind):
            xs = [p.x for p in c.points]
            ys = [p.accuracy for p in c.points]
            err = [[p.accuracy - (p.low if p.low is not None else p.accuracy) for p in c.points],
                   [(p.high if p.high is not None else p.accuracy) - p.accuracy for p in c.points]]
            ax.errorbar(xs, ys, yerr=err, marker="o", markersize=3.5, capsize=3, label=f"{c.run_label} {c.series} ({c.at})")
        if kind == "steps":
            ax.set_xscale("log")
            ticks = sorted({p.x for a in audits for c in a.curves if c.kind == kind for p in c.points})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_ylim(0, 100)
        ax.set_xlabel(_axis_label(kind))
        ax.set_ylabel("robust accuracy (%)")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7)
    fig.suptitle("robustness curves (error bars: exact 95% intervals)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
