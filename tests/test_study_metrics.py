"""Every registered study metric (``wflow.study.STUDY_METRICS``) through the same tests.

A metric added to the registry is picked up here with no edit: its declared
attributes, zero against itself, positivity, per-run rows, invariance under
the order of the samples, NaN for a diverged run, and a tiny ``wflow study
limit`` run with ``study.metrics = [name]`` (the file's ``/errors/<name>``, only
the quantities it needs kept, a table section and a panel in every figure).
"""

import numpy as np
import pytest

from wflow._config import STUDY_METRICS as CONFIG_CHOICES
from wflow.cli import main
from wflow.study import STUDY_METRICS, AbstractStudyMetric, Runs, read_study
from wflow.study._figures import limit_figures
from wflow.study._metrics import QUANTITIES

METRICS = list(STUDY_METRICS)


def runs(seed, b=3, nt=2, N=6, d_out=2, D=4, dims=None, scaled=False, L=3, M=5, k=3) -> Runs:
    """Random quantities of b runs (state dimension dims[j] <= D, zero-padded to D), with
    particles (L, M, k) of weight 1/M and themselves as twins."""
    rng = np.random.default_rng(seed)
    dims = (D,) * b if dims is None else tuple(dims)
    state = rng.normal(size=(b, nt, N, D))
    for j, d in enumerate(dims):
        state[j, :, :, d:] = 0.0
    particles = rng.normal(size=(b, nt, L, M, k))
    return Runs(rng.uniform(0.1, 1.0, size=(b, nt)), rng.normal(size=(b, nt, N, d_out)), state,
                dims, scaled, particles, np.full((b, nt, L, M), 1.0 / M), particles,
                {"sinkhorn_epsilon": 0.1})


EXTRA = ("weights", "twins")  # come with "particles"


def only_needs(metric, r: Runs) -> Runs:
    """``r`` with every quantity the metric does not need set to None."""
    drop = [q for q in QUANTITIES if q not in metric.needs]
    if "particles" in drop:
        drop += EXTRA
    return r._replace(**{q: None for q in drop})


@pytest.mark.parametrize("name", METRICS)
def test_metric_declares_name_label_needs(name):
    metric = STUDY_METRICS[name]
    assert isinstance(metric, AbstractStudyMetric)
    assert metric.name == name and name in CONFIG_CHOICES  # a config choice of study.metrics
    assert isinstance(metric.label, str) and metric.label.strip()
    assert metric.needs and set(metric.needs) <= set(QUANTITIES)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("name", METRICS)
def test_metric_is_zero_against_itself(name, scaled):
    metric = STUDY_METRICS[name]
    r = only_needs(metric, runs(0, dims=(2, 3, 4), scaled=scaled))
    e = metric.compute(r, r)
    assert e.shape == (3, 2)
    np.testing.assert_array_equal(e, 0.0)


@pytest.mark.parametrize("name", METRICS)
def test_metric_is_positive_per_run_and_reads_only_its_needs(name):
    metric = STUDY_METRICS[name]
    a = runs(1, dims=(2, 3, 4))
    # a reference of larger state dimension D_ref >= D; particles (of k(D) parameters) are
    # compared at equal D only (NaN otherwise, ``coupling`` / ``sinkhorn``)
    ref = runs(2, dims=(2, 3, 4) if "particles" in metric.needs else None)
    e = metric.compute(only_needs(metric, a), only_needs(metric, ref))
    assert e.shape == (3, 2) and np.all(np.isfinite(e)) and np.all(e > 0)
    # row j depends on run j and reference j only: a subset in another order gives its rows
    rows = [2, 0]
    sub = lambda r: r._replace(**{q: getattr(r, q)[rows] for q in QUANTITIES + EXTRA},
                               dims=tuple(r.dims[j] for j in rows))
    np.testing.assert_array_equal(metric.compute(sub(a), sub(ref)), e[rows])


@pytest.mark.parametrize("name", METRICS)
def test_metric_is_invariant_under_the_order_of_the_samples(name):
    metric = STUDY_METRICS[name]
    a, ref = runs(3, scaled=True), runs(4, scaled=True)
    perm = np.random.default_rng(5).permutation(a.state.shape[2])
    shuffle = lambda r: r._replace(prediction=r.prediction[:, :, perm], state=r.state[:, :, perm])
    np.testing.assert_allclose(metric.compute(shuffle(a), shuffle(ref)), metric.compute(a, ref),
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", METRICS)
def test_metric_is_nan_for_a_diverged_run(name):
    metric = STUDY_METRICS[name]
    a, ref = runs(6), runs(7)
    a = a._replace(**{q: getattr(a, q).copy() for q in QUANTITIES})
    for q in QUANTITIES:
        getattr(a, q)[1, -1] = np.nan  # run 1 diverged before the last study time
    a = a._replace(twins=a.particles)
    e = metric.compute(a, ref)
    assert np.isnan(e[1, -1]) and np.all(np.isfinite(np.delete(e.ravel(), 1 * 2 + 1)))


# ----------------------------------------------------------------------------- a tiny study

TINY = """
seed = 0
[data]
kind = "teacher"
n = 8
dim = 2
[solver]
L = 2
M = 4
[train]
dt = 0.5
[study]
L = [2, 4]
M = [3, 4]
seeds = 2
times = [0.0]
reference = "particles"
reference_M = 8
reference_depth = "layers"
bootstrap = 5
metrics = ["{name}"]
"""


@pytest.mark.parametrize("name", METRICS)
def test_a_study_with_one_metric_writes_it_everywhere(tmp_path, capsys, name):
    """``study.metrics = [name]``: /errors/<name>, only its quantities kept, its table section,
    its panel in every figure."""
    metric = STUDY_METRICS[name]
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.replace("{name}", name))
    out = tmp_path / "tiny.h5"
    rc = main(["study", "limit", str(cfg), "-o", str(out), "-q"])
    text, err = capsys.readouterr()
    assert rc == 0, err
    data = read_study(str(out))
    datasets = [k for k in data if "@" not in k]  # not the attributes
    assert [k for k in datasets if k.startswith("errors/")] == [f"errors/{name}"]
    e = data[f"errors/{name}"]
    assert e.shape == (2, 2, 2, 1) and np.all(np.isfinite(e)) and np.all(e >= 0)
    # the reference keeps exactly the quantities the metric reads (and the loss)
    kept = {k.split("/")[1] for k in datasets if k.startswith("reference/")} - {"done", "floor"}
    assert kept == {"loss", *metric.needs} | ({"weights"} if "particles" in metric.needs else set())
    # the reference's own error in this metric, and the free fit beside the fixed one
    assert data[f"reference/floor/{name}"].shape == (1,)
    assert data[f"fit/{name}/free"].shape == (1, 4) and data[f"fit/{name}/free_ci"].shape == (1, 4, 2)
    # the table: the metric's section, headed by its label, with one row per L
    section = text.split(f"\n[{name}] {metric.label}\n")[1]
    assert section.splitlines()[1].startswith("  L=2 ") and "slope vs L" in section
    assert "free fit err ~" in section and "reference floor" in section
    # the figures: one panel per figure, titled by the metric, its axis labelled by the label
    figures = limit_figures(data)
    assert set(figures) == {"limit_L.png", "limit_M.png", "limit_map.png"}
    for fig in figures.values():
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title().split(":")[0] for ax in panels] == [name]
    assert figures["limit_L.png"].axes[0].get_ylabel() == metric.label
    assert (tmp_path / "tiny_plots" / "limit_map.png").exists()


# ----------------------------------------------------------------------------- one metric


def test_relative_output_is_scale_invariant():
    """RMS |g - g_ref| / RMS |g_ref|: multiplying both outputs by c != 0 leaves it unchanged;
    g = (1 + eps) g_ref gives |eps|; it is the output error over the reference's RMS size."""
    metric = STUDY_METRICS["relative_output"]
    a, ref = runs(8), runs(9)
    e = metric.compute(a, ref)
    for c in (-3.0, 1e-3, 7.5):
        scale = lambda r, c=c: r._replace(prediction=c * r.prediction)
        np.testing.assert_allclose(metric.compute(scale(a), scale(ref)), e, rtol=1e-13)
    near = ref._replace(prediction=1.3 * ref.prediction)
    np.testing.assert_allclose(metric.compute(near, ref), 0.3, rtol=1e-13)
    size = np.sqrt(np.mean(np.sum(ref.prediction ** 2, axis=-1), axis=-1))
    np.testing.assert_allclose(e, STUDY_METRICS["output"].compute(a, ref) / size, rtol=1e-13)
    # a reference whose output vanishes: infinite relative error (NaN when both vanish)
    zero = ref._replace(prediction=np.zeros_like(ref.prediction))
    assert np.all(np.isinf(metric.compute(a, zero)))
    assert np.all(np.isnan(metric.compute(zero, zero)))
