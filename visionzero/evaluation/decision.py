"""The deploy rule, explicit and logged: beat the status quo first, then beat production by a margin."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DecisionRule:
    min_deviance_improvement: float = 0.005  # challenger's Poisson deviance must be >= 0.5% lower than production's
    hit_rate_tolerance: float = 0.005  # ... while losing at most this much hit@10% (absolute)


@dataclass
class Decision:
    action: str  # "production" (first deployable model), "staging" (winning challenger) or "none"
    deployable: bool
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def decide(report: dict, rule: DecisionRule) -> Decision:
    new, base, prod = report["candidate"], report["baseline"], report.get("production")
    reasons: list[str] = []
    beats_dev = new["poisson_deviance"] < base["poisson_deviance"]
    beats_hit = new["hit_rate_at_10"] > base["hit_rate_at_10"]
    reasons.append(f"deviance {new['poisson_deviance']:.4f} vs baseline {base['poisson_deviance']:.4f}: "
                   f"{'better' if beats_dev else 'not better'}")
    reasons.append(f"hit@10% {new['hit_rate_at_10']:.4f} vs baseline {base['hit_rate_at_10']:.4f}: "
                   f"{'better' if beats_hit else 'not better'}")
    if not (beats_dev and beats_hit):
        reasons.append("not deployable: it must beat the historical average on both")
        return Decision("none", False, reasons)
    if prod is None:
        reasons.append("no production model: the first deployable model becomes production")
        return Decision("production", True, reasons)
    needed = prod["poisson_deviance"] * (1 - rule.min_deviance_improvement)
    wins_dev = new["poisson_deviance"] <= needed
    keeps_hit = new["hit_rate_at_10"] >= prod["hit_rate_at_10"] - rule.hit_rate_tolerance
    reasons.append(f"deviance {new['poisson_deviance']:.4f} vs production {prod['poisson_deviance']:.4f} "
                   f"(needs <= {needed:.4f}): {'wins' if wins_dev else 'does not win'}")
    reasons.append(f"hit@10% {new['hit_rate_at_10']:.4f} vs production {prod['hit_rate_at_10']:.4f} "
                   f"(tolerance {rule.hit_rate_tolerance}): {'kept' if keeps_hit else 'lost'}")
    if wins_dev and keeps_hit:
        reasons.append("challenger wins: it becomes staging and takes 50% of traffic")
        return Decision("staging", True, reasons)
    reasons.append("challenger loses: production stays, nothing changes")
    return Decision("none", True, reasons)
