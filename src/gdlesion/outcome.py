"""Outcome after rescue therapy: a documented, configurable rule.

Default rule (:class:`OutcomeRule`), applied to each subject from the first visit of
the ``return`` phase (back on the baseline therapy) onward:

1. **Confirmed EDSS worsening.** The reference is the first non-missing EDSS in that
   window. A visit is a worsening if its EDSS is at least reference + 1.0 (reference
   < 5.5) or reference + 0.5 (reference >= 5.5); both bounds inclusive. It is
   confirmed if the first later visit with a non-missing EDSS at least
   ``confirm_months`` (3) calendar months after it still meets that bound. A
   worsening without such a visit is reported as unconfirmed and does not count.
2. **Relapse rate.** The annualised relapse rate of the ``return`` phase is strictly
   higher than that of the ``baseline`` phase (before rescue).

``worsening`` if either criterion holds; ``stable`` if at least one criterion could
be evaluated and none holds; ``undetermined`` if the subject never returned to the
baseline therapy or neither criterion can be evaluated (e.g. EDSS and relapses
missing). Each subject gets a one-line reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["OutcomeRule", "OUTCOME_COLUMNS", "classify_outcomes"]

OUTCOME_COLUMNS = (
    "subject", "outcome", "reason", "edss_reference", "edss_worsening_date", "edss_confirmed_date",
    "arr_before", "arr_after",
)


@dataclass(frozen=True)
class OutcomeRule:
    """Parameters of the stable/worsening classification (see module docstring).

    Parameters
    ----------
    edss_step : float
        EDSS increase that counts as worsening when the reference is below ``edss_high_from``.
    edss_step_high : float
        EDSS increase that counts when the reference is ``>= edss_high_from``.
    edss_high_from : float
        Reference EDSS from which ``edss_step_high`` applies (inclusive).
    confirm_months : int
        Minimal delay to the confirming visit, in calendar months (inclusive: a visit
        on 1 April confirms a worsening seen on 1 January).
    use_relapse_rate : bool
        Also call worsening a higher annualised relapse rate after return than before rescue.
    before_phase, after_phase : str
        Phase labels compared (see :mod:`gdlesion.visits`).
    """

    edss_step: float = 1.0
    edss_step_high: float = 0.5
    edss_high_from: float = 5.5
    confirm_months: int = 3
    use_relapse_rate: bool = True
    before_phase: str = "baseline"
    after_phase: str = "return"

    def to_dict(self) -> dict:
        """JSON-ready parameters."""
        return asdict(self)

    def step_for(self, reference: float) -> float:
        """EDSS increase needed from ``reference``."""
        return self.edss_step_high if reference >= self.edss_high_from else self.edss_step


def _iso(ts: pd.Timestamp) -> str:
    return ts.date().isoformat()


def _edss_check(window: pd.DataFrame, rule: OutcomeRule) -> dict:
    """Evaluate confirmed EDSS worsening on one subject's visits (date order)."""
    edss = window[window["edss"].notna()][["date", "edss"]].reset_index(drop=True)
    if edss.empty:
        return {"evaluable": False, "text": "no EDSS after return"}
    ref = float(edss.at[0, "edss"])
    bound = ref + rule.step_for(ref)
    unconfirmed = None
    delay = pd.DateOffset(months=int(rule.confirm_months))
    for k in range(1, len(edss)):
        if edss.at[k, "edss"] < bound:
            continue
        later = edss[edss["date"] >= edss.at[k, "date"] + delay]
        if later.empty:
            unconfirmed = unconfirmed or edss.at[k, "date"]
            continue
        confirm = later.iloc[0]
        if confirm["edss"] >= bound:
            return {
                "evaluable": True, "worse": True, "ref": ref,
                "date": edss.at[k, "date"], "confirmed": confirm["date"],
                "text": (f"confirmed EDSS worsening {ref:g} -> {edss.at[k, 'edss']:g} on "
                         f"{_iso(edss.at[k, 'date'])} (still {confirm['edss']:g} on "
                         f"{_iso(confirm['date'])})"),
            }
    text = f"no confirmed EDSS worsening (reference {ref:g}, max {edss['edss'].max():g})"
    if unconfirmed is not None:
        text += (f"; increase on {_iso(unconfirmed)} unconfirmed (no visit >= "
                 f"{rule.confirm_months:g} months later)")
    return {"evaluable": len(edss) > 1, "worse": False, "ref": ref, "text": text}


def classify_outcomes(
    visits: pd.DataFrame, phases: pd.DataFrame, *, rule: OutcomeRule | None = None
) -> pd.DataFrame:
    """Classify every subject as stable, worsening or undetermined after rescue.

    Parameters
    ----------
    visits : pandas.DataFrame
        Output of :func:`gdlesion.visits.derive_phases`.
    phases : pandas.DataFrame
        Output of :func:`gdlesion.visits.phase_summary`.
    rule : OutcomeRule, optional
        Defaults to ``OutcomeRule()``.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`OUTCOME_COLUMNS`, one row per subject, sorted.
    """
    rule = rule or OutcomeRule()
    rows = []
    dated = visits[visits["date"].notna() & (visits["phase"] != "")]
    for subject, sub in dated.groupby("subject", sort=True):
        sub = sub.sort_values(["date", "session"], kind="stable")
        row = {"subject": subject, "edss_reference": np.nan, "edss_worsening_date": "",
               "edss_confirmed_date": "", "arr_before": np.nan, "arr_after": np.nan}
        in_after = sub["phase"] == rule.after_phase
        if not in_after.any():
            seen = ", ".join(dict.fromkeys(sub["phase"]))
            rows.append({**row, "outcome": "undetermined",
                         "reason": f"no {rule.after_phase} phase (phases: {seen})"})
            continue
        window = sub[sub["date"] >= sub.loc[in_after, "date"].min()]
        edss = _edss_check(window, rule)
        reasons_worse, reasons_ok = [], []
        if edss.get("worse"):
            reasons_worse.append(edss["text"])
            row["edss_worsening_date"] = _iso(edss["date"])
            row["edss_confirmed_date"] = _iso(edss["confirmed"])
        else:
            reasons_ok.append(edss["text"])
        row["edss_reference"] = edss.get("ref", np.nan)
        evaluable = edss["evaluable"]
        if rule.use_relapse_rate:
            ph = phases[phases["subject"] == subject].set_index("phase")["annualised_relapse_rate"]
            before = float(ph.get(rule.before_phase, np.nan))
            after = float(ph.get(rule.after_phase, np.nan))
            row["arr_before"], row["arr_after"] = before, after
            if np.isfinite(before) and np.isfinite(after):
                evaluable = True
                cmp = ">" if after > before else "<="
                text = (f"relapse rate {after:.2f}/y on {rule.after_phase} {cmp} {before:.2f}/y "
                        f"on {rule.before_phase}")
                (reasons_worse if after > before else reasons_ok).append(text)
            else:
                reasons_ok.append(
                    "relapse rate not comparable (missing counts or zero-length phase)"
                )
        if reasons_worse:
            outcome, reason = "worsening", "; ".join(reasons_worse)
        elif evaluable:
            outcome, reason = "stable", "; ".join(reasons_ok)
        else:
            outcome, reason = "undetermined", "; ".join(reasons_ok)
        rows.append({**row, "outcome": outcome, "reason": reason})
    return pd.DataFrame(rows, columns=list(OUTCOME_COLUMNS))
