"""Cohort statistics of the longitudinal analysis (scipy.stats and statsmodels).

Every function returns a JSON-ready ``dict`` with at least ``test``, ``statistic``,
``p``, ``effect`` (with ``effect_name``), ``ci`` (95 %, ``[low, high]`` of the effect,
``ci_method`` says how) and ``n``. Values that cannot be computed (too few subjects,
no variation) are ``None`` with a ``note``. Bootstrap intervals are seeded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

__all__ = [
    "wilcoxon_phases",
    "friedman_phases",
    "count_model",
    "spearman_visits",
    "rm_corr",
    "proportion_stable",
    "cohort_statistics",
]

_N_RESAMPLES = 2000


def _num(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _result(test: str, **fields: object) -> dict:
    out: dict = {"test": test, "statistic": None, "p": None, "effect": None, "effect_name": "",
                 "ci": [None, None], "ci_method": "", "n": 0}
    out.update(fields)
    for key in ("statistic", "p", "effect"):
        out[key] = _num(out[key])  # type: ignore[arg-type]
    out["ci"] = [_num(v) for v in out["ci"]]  # type: ignore[union-attr]
    return out


def _paired_table(phases: pd.DataFrame, names: Sequence[str], value: str) -> pd.DataFrame:
    if value not in phases.columns or phases.empty:
        return pd.DataFrame(columns=list(names))
    wide = phases.pivot_table(index="subject", columns="phase", values=value, aggfunc="first")
    missing = [p for p in names if p not in wide.columns]
    if missing:
        return pd.DataFrame(columns=list(names))
    return wide[list(names)].dropna()


def _boot_ci(data: tuple, statistic, *, seed: int, vectorized: bool = False,
             n_resamples: int = _N_RESAMPLES) -> list[float | None]:
    if len(data[0]) < 3 or all(np.ptp(d) == 0 for d in data):
        return [None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples give NaN, reported as such
        res = stats.bootstrap(data, statistic, paired=True, vectorized=vectorized,
                              method="percentile", n_resamples=n_resamples, random_state=seed)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def wilcoxon_phases(
    phases: pd.DataFrame, *, first: str = "baseline", second: str = "rescue",
    value: str = "mean_gd_per_scan", seed: int = 0,
) -> dict:
    """Wilcoxon signed-rank test of a per-subject phase value, ``second`` vs ``first``.

    The effect is the median paired difference (``second - first``) with a seeded
    percentile-bootstrap CI; ``rank_biserial`` is the matched-pairs rank-biserial
    correlation (zero differences dropped, as in the test).
    """
    wide = _paired_table(phases, (first, second), value)
    name = f"wilcoxon {value}: {second} vs {first}"
    if len(wide) < 2:
        return _result(name, n=len(wide), note="fewer than 2 subjects with both phases")
    a, b = wide[first].to_numpy(float), wide[second].to_numpy(float)
    d = b - a
    nz = d[d != 0]
    if len(nz) == 0:
        return _result(name, n=len(d), effect=0.0, effect_name="median difference",
                       note="all paired differences are zero")
    res = stats.wilcoxon(b, a)
    ranks = stats.rankdata(np.abs(nz))
    rbc = (ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum()
    return _result(name, statistic=res.statistic, p=res.pvalue, n=len(d),
                   effect=float(np.median(d)), effect_name=f"median difference {second} - {first}",
                   ci=_boot_ci((d,), np.median, seed=seed, vectorized=True),
                   ci_method="percentile bootstrap",
                   rank_biserial=float(rbc),
                   medians={first: float(np.median(a)), second: float(np.median(b))})


def _kendall_w(*cols: np.ndarray, axis: int = -1) -> np.ndarray:
    # Kendall's W = Friedman chi2 (tie-corrected, as scipy) / (n (k - 1)), vectorised
    # over bootstrap resamples; checked against scipy.stats.friedmanchisquare in tests.
    data = np.stack(cols, axis=0)  # (k, ..., n)
    k = len(cols)
    ranks = stats.rankdata(data, axis=0)
    n_sub = data.shape[-1]
    rank_sums = ranks.sum(axis=-1)  # (k, ...)
    ties = np.zeros(data.shape[1:])
    for value_rank in np.unique(ranks):
        t = (ranks == value_rank).sum(axis=0)
        ties += t**3 - t
    tie_term = ties.sum(axis=-1)
    chi2 = 12 / (n_sub * k * (k + 1)) * (rank_sums**2).sum(axis=0) - 3 * n_sub * (k + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = chi2 / (1 - tie_term / (n_sub * (k**3 - k)))
        return np.where(np.isfinite(chi2), chi2, 0.0) / (n_sub * (k - 1))


def friedman_phases(
    phases: pd.DataFrame, *, names: Sequence[str] = ("baseline", "rescue", "return"),
    value: str = "mean_gd_per_scan", seed: int = 0,
) -> dict:
    """Friedman test across phases within subject; effect is Kendall's W with a bootstrap CI."""
    wide = _paired_table(phases, names, value)
    name = f"friedman {value}: {', '.join(names)}"
    n, k = len(wide), len(names)
    if n < 2:
        return _result(name, n=n, note="fewer than 2 subjects with all phases")

    cols = tuple(wide[p].to_numpy(float) for p in names)
    if np.all(np.ptp(np.stack(cols), axis=0) == 0):
        return _result(name, n=n, effect=0.0, effect_name="Kendall's W",
                       note="no within-subject variation")
    res = stats.friedmanchisquare(*cols)
    return _result(name, statistic=res.statistic, p=res.pvalue, n=n,
                   effect=res.statistic / (n * (k - 1)), effect_name="Kendall's W",
                   ci=_boot_ci(cols, _kendall_w, seed=seed, vectorized=True),
                   ci_method="percentile bootstrap over subjects",
                   medians={p: float(np.median(c)) for p, c in zip(names, cols, strict=True)})


def count_model(
    visits: pd.DataFrame, *, family: str = "poisson", reference: str = "baseline",
    min_scans: int = 3,
) -> dict:
    """GEE count model of Gd+ lesions per scan by exposure phase, subject as cluster.

    ``lesion_count ~ C(exposure_phase)`` with an exchangeable working correlation and
    robust (sandwich) standard errors; ``family`` is ``"poisson"`` or ``"negbin"``
    (negative binomial, alpha 1). Phases with fewer than ``min_scans`` ok scans are
    left out. Effects are rate ratios versus ``reference`` with Wald 95 % CIs.
    """
    name = f"GEE {family} lesion_count ~ phase (cluster: subject)"
    data = visits[(visits["status"] == "ok") & visits["lesion_count"].notna()]
    data = data[["subject", "exposure_phase", "lesion_count"]].rename(
        columns={"exposure_phase": "phase"})
    sizes = data["phase"].value_counts()
    data = data[data["phase"].isin(sizes[sizes >= min_scans].index)]
    if reference not in set(data["phase"]) or data["phase"].nunique() < 2 \
            or data["subject"].nunique() < 2:
        return _result(name, n=len(data), note=f"needs {reference!r} and another phase")
    fam = sm.families.Poisson() if family == "poisson" else sm.families.NegativeBinomial(alpha=1.0)
    formula = f"lesion_count ~ C(phase, Treatment(reference={reference!r}))"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.gee(formula, groups="subject", data=data, family=fam,
                      cov_struct=sm.cov_struct.Exchangeable()).fit()
    ci = fit.conf_int()
    ratios = {}
    for term in fit.params.index:
        if term.startswith("C(phase"):
            phase = term.split("[T.")[1].rstrip("]")
            ratios[phase] = {"rate_ratio": _num(np.exp(fit.params[term])),
                             "ci": [_num(np.exp(ci.loc[term, 0])), _num(np.exp(ci.loc[term, 1]))],
                             "p": _num(fit.pvalues[term]), "z": _num(fit.tvalues[term])}
    first = sorted(ratios)[0]
    means = data.groupby("phase")["lesion_count"].mean()
    return _result(name, statistic=ratios[first]["z"], p=ratios[first]["p"],
                   effect=ratios[first]["rate_ratio"],
                   effect_name=f"rate ratio {first} / {reference}", ci=ratios[first]["ci"],
                   ci_method="Wald, robust SE", n=len(data), n_subjects=data["subject"].nunique(),
                   rate_ratios=ratios, mean_per_scan={k: float(v) for k, v in means.items()})


def spearman_visits(visits: pd.DataFrame, x: str, y: str, *, seed: int = 0) -> dict:
    """Spearman correlation of two visit columns, pooling all visits (ignores clustering)."""
    data = visits[[x, y]].dropna().astype(float)
    name = f"spearman {x} ~ {y} (all visits)"
    if len(data) < 3 or data[x].nunique() < 2 or data[y].nunique() < 2:
        return _result(name, n=len(data), note="too few visits or no variation")
    res = stats.spearmanr(data[x], data[y])

    def rho(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        # Spearman rho of each resample = Pearson correlation of its ranks (vectorised)
        ra = stats.rankdata(a, axis=axis)
        rb = stats.rankdata(b, axis=axis)
        ra = ra - ra.mean(axis=axis, keepdims=True)
        rb = rb - rb.mean(axis=axis, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (ra * rb).sum(axis) / np.sqrt((ra**2).sum(axis) * (rb**2).sum(axis))

    return _result(name, statistic=res.statistic, p=res.pvalue, effect=res.statistic,
                   effect_name="Spearman rho",
                   ci=_boot_ci((data[x].to_numpy(), data[y].to_numpy()), rho, seed=seed,
                               vectorized=True),
                   ci_method="percentile bootstrap over visits", n=len(data))


def rm_corr(visits: pd.DataFrame, x: str, y: str, *, subject: str = "subject") -> dict:
    """Repeated-measures correlation (Bakdash & Marusich 2017) via statsmodels OLS.

    Fits ``y ~ C(subject) + x``; r = sign(slope) * sqrt(SS_x / (SS_x + SS_residual))
    from the type-II ANOVA table, p of the common slope, CI by Fisher z with
    ``dof - 1`` (as the R package rmcorr and pingouin). Subjects with fewer than two
    complete visits are dropped.
    """
    data = visits[[subject, x, y]].dropna()
    data = data[data.groupby(subject)[x].transform("size") >= 2]
    data = pd.DataFrame({"s": data[subject].astype(str), "x": data[x].astype(float),
                         "y": data[y].astype(float)})
    name = f"rm_corr {x} ~ {y} (within subject)"
    k = data["s"].nunique()
    if len(data) - k - 1 < 3 or data["x"].var() == 0 or data["y"].var() == 0:
        return _result(name, n=len(data), note="too few repeated visits or no variation")
    fit = smf.ols("y ~ C(s) + x", data=data).fit()
    table = sm.stats.anova_lm(fit, typ=2)
    ss_x, ss_res = table.loc["x", "sum_sq"], table.loc["Residual", "sum_sq"]
    r = float(np.sign(fit.params["x"]) * np.sqrt(ss_x / (ss_x + ss_res)))
    dof = int(fit.df_resid)
    z, se = np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15)), 1 / np.sqrt(dof - 1)
    crit = stats.norm.ppf(0.975)
    return _result(name, statistic=r, p=fit.pvalues["x"], effect=r, effect_name="rm r",
                   ci=[np.tanh(z - crit * se), np.tanh(z + crit * se)], ci_method="Fisher z",
                   n=len(data), n_subjects=k, dof=dof)


def proportion_stable(outcomes: pd.DataFrame, *, method: str = "wilson") -> dict:
    """Proportion of stable subjects among those with a determined outcome, with its CI."""
    determined = outcomes[outcomes["outcome"].isin(["stable", "worsening"])]
    n = len(determined)
    count = int((determined["outcome"] == "stable").sum())
    name = "proportion stable after rescue"
    if n == 0:
        return _result(name, note="no subject with a determined outcome")
    lo, hi = proportion_confint(count, n, alpha=0.05, method=method)
    return _result(name, effect=count / n, effect_name="proportion stable", ci=[lo, hi],
                   ci_method=method, n=n, count=count,
                   undetermined=int(len(outcomes) - n))


def cohort_statistics(
    visits: pd.DataFrame, phases: pd.DataFrame, outcomes: pd.DataFrame, *, seed: int = 0,
    family: str = "poisson",
) -> dict:
    """Run every cohort test; returns ``{name: result}`` (see module docstring)."""
    out = {
        "gd_baseline_vs_rescue": wilcoxon_phases(phases, first="baseline", second="rescue",
                                                 seed=seed),
        "gd_baseline_vs_return": wilcoxon_phases(phases, first="baseline", second="return",
                                                 seed=seed),
        "arr_baseline_vs_return": wilcoxon_phases(phases, first="baseline", second="return",
                                                  value="annualised_relapse_rate", seed=seed),
        "gd_friedman": friedman_phases(phases, seed=seed),
        "gd_count_model": count_model(visits, family=family),
        "gd_edss_visits": spearman_visits(visits, "lesion_count", "edss", seed=seed),
        "gd_relapses_visits": spearman_visits(visits, "lesion_count", "relapses", seed=seed),
        "gd_edss_within": rm_corr(visits, "lesion_count", "edss"),
        "gd_relapses_within": rm_corr(visits, "lesion_count", "relapses"),
        "proportion_stable": proportion_stable(outcomes),
    }
    if "new_lesions" in visits and visits["new_lesions"].notna().sum() >= 3:
        out["new_edss_visits"] = spearman_visits(visits, "new_lesions", "edss", seed=seed)
    return out
