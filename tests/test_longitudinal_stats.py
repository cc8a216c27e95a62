"""Cohort statistics checked against direct scipy / statsmodels (and pingouin) calls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from gdlesion.stats import (
    cohort_statistics,
    count_model,
    friedman_phases,
    proportion_stable,
    rm_corr,
    spearman_visits,
    wilcoxon_phases,
)


@pytest.fixture
def phases(rng):
    rows = []
    for s in range(10):
        base = rng.uniform(2, 6)
        for phase, value in (("baseline", base), ("rescue", base * rng.uniform(0.05, 0.4)),
                             ("return", base * rng.uniform(0.2, 1.2))):
            rows.append({"subject": f"{s:02d}", "phase": phase, "mean_gd_per_scan": value})
    return pd.DataFrame(rows)


@pytest.fixture
def visits(rng):
    rows = []
    for s in range(8):
        level = rng.uniform(1, 4)
        for v in range(9):
            phase = "baseline" if v < 3 else ("rescue" if v < 6 else "return")
            mu = {"baseline": 4.0, "rescue": 0.5, "return": 1.5}[phase] * level / 2
            count = rng.poisson(mu)
            rows.append({"subject": f"{s:02d}", "exposure_phase": phase, "status": "ok",
                         "lesion_count": float(count), "edss": level + 0.1 * count,
                         "relapses": float(rng.poisson(0.1 * count))})
    return pd.DataFrame(rows)


def test_wilcoxon_matches_scipy(phases):
    res = wilcoxon_phases(phases, first="baseline", second="rescue", seed=1)
    wide = phases.pivot(index="subject", columns="phase", values="mean_gd_per_scan")
    direct = stats.wilcoxon(wide["rescue"], wide["baseline"])
    assert res["statistic"] == pytest.approx(direct.statistic)
    assert res["p"] == pytest.approx(direct.pvalue)
    d = wide["rescue"] - wide["baseline"]
    assert res["effect"] == pytest.approx(np.median(d)) and res["n"] == 10
    assert res["rank_biserial"] == pytest.approx(-1.0)  # every subject decreased
    lo, hi = res["ci"]
    assert lo < res["effect"] < hi < 0
    assert wilcoxon_phases(phases, first="baseline", second="rescue", seed=1) == res  # seeded


def test_friedman_matches_scipy(phases):
    res = friedman_phases(phases)
    wide = phases.pivot(index="subject", columns="phase", values="mean_gd_per_scan")
    direct = stats.friedmanchisquare(wide["baseline"], wide["rescue"], wide["return"])
    assert res["statistic"] == pytest.approx(direct.statistic)
    assert res["p"] == pytest.approx(direct.pvalue)
    assert res["effect"] == pytest.approx(direct.statistic / (10 * 2))
    assert 0 <= res["ci"][0] <= res["effect"] <= res["ci"][1] <= 1


def test_wilcoxon_missing_phase_is_reported(phases):
    res = wilcoxon_phases(phases[phases["phase"] != "return"], second="return")
    assert res["p"] is None and "fewer than 2" in res["note"]


def test_count_model_matches_statsmodels(visits):
    res = count_model(visits)
    data = visits.rename(columns={"exposure_phase": "phase"})
    fit = smf.gee("lesion_count ~ C(phase, Treatment(reference='baseline'))", groups="subject",
                  data=data, family=sm.families.Poisson(),
                  cov_struct=sm.cov_struct.Exchangeable()).fit()
    term = "C(phase, Treatment(reference='baseline'))[T.rescue]"
    rr = res["rate_ratios"]["rescue"]
    assert rr["rate_ratio"] == pytest.approx(np.exp(fit.params[term]))
    assert rr["p"] == pytest.approx(fit.pvalues[term])
    assert rr["rate_ratio"] < 0.5 and rr["ci"][1] < 1
    nb = count_model(visits, family="negbin")
    assert nb["rate_ratios"]["rescue"]["rate_ratio"] < 1


def test_spearman_matches_scipy(visits):
    res = spearman_visits(visits, "lesion_count", "edss")
    direct = stats.spearmanr(visits["lesion_count"], visits["edss"])
    assert res["effect"] == pytest.approx(direct.statistic)
    assert res["p"] == pytest.approx(direct.pvalue)


def test_rm_corr_matches_pingouin_and_ols(visits):
    res = rm_corr(visits, "lesion_count", "edss")
    assert res["effect"] == pytest.approx(1.0, abs=1e-6)  # edss = level + 0.1 * count exactly
    noisy = visits.assign(edss=visits["edss"] + np.sin(np.arange(len(visits))))
    res = rm_corr(noisy, "lesion_count", "edss")
    fit = smf.ols("edss ~ C(subject) + lesion_count", data=noisy).fit()
    assert res["p"] == pytest.approx(fit.pvalues["lesion_count"])
    assert res["dof"] == len(noisy) - 8 - 1
    pg = pytest.importorskip("pingouin")
    direct = pg.rm_corr(data=noisy, x="lesion_count", y="edss", subject="subject")
    assert res["effect"] == pytest.approx(direct["r"].item(), abs=1e-9)
    assert res["p"] == pytest.approx(direct["pval"].item(), rel=1e-6)
    assert res["ci"] == pytest.approx(list(direct["CI95"].item()), abs=0.006)


def test_proportion_stable_wilson():
    out = pd.DataFrame({"outcome": ["stable"] * 7 + ["worsening"] * 3 + ["undetermined"]})
    res = proportion_stable(out)
    assert res["effect"] == pytest.approx(0.7) and res["n"] == 10 and res["undetermined"] == 1
    assert res["ci"] == pytest.approx(list(proportion_confint(7, 10, method="wilson")))


def test_cohort_statistics_json_ready(visits, phases):
    outcomes = pd.DataFrame({"outcome": ["stable", "worsening"]})
    res = cohort_statistics(visits.assign(new_lesions=np.nan), phases, outcomes)
    import json

    json.dumps(res, allow_nan=False)
    assert res["gd_baseline_vs_rescue"]["p"] < 0.01
    assert {"statistic", "p", "effect", "ci", "n"} <= set(res["gd_edss_within"])


def test_vectorised_kendall_w_matches_scipy_with_ties(rng):
    from gdlesion.stats import _kendall_w

    cols = [rng.integers(0, 3, size=12).astype(float) for _ in range(3)]
    direct = stats.friedmanchisquare(*cols).statistic / (12 * 2)
    assert float(_kendall_w(*cols)) == pytest.approx(direct)
    batch = _kendall_w(*[np.stack([c, c[::-1]]) for c in cols])
    assert batch.shape == (2,) and batch[0] == pytest.approx(direct)
