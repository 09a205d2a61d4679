"""The block interface: a user's block, in its own file, through every solver, study and comparison.

* The generic path (vmap of ``__call__``, tiles, JAX's VJP per tile) equals every shipped
  block's hand kernel to 1e-12 in float64: value, VJP and grad V anywhere (parametrized
  over the registry ``wflow.FEATURES``).
* A block written in a file outside the package (``GATE`` below) runs from a config, and its
  particle trajectory equals an independent hand-written gradient descent to 1e-10.
* ``examples/two_layer_block.py`` with hidden width 1 is the neuron block written as a user
  would (same layout): its continuous-depth runs (both adjoints), grid run, ``wflow study
  limit`` and ``wflow compare`` equal the shipped neuron's to 1e-10.
* A bad block is one line and exit 2, with nothing written; ``--resume`` refuses a block
  whose source changed.
"""

import os
import textwrap

import _helpers
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import cli

import wflow
from wflow._depth import LayeredDepth

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

# ----------------------------------------------------------------------------- generic == hand


def _shipped(name, d):
    """The block on a state of dimension d; a sequence block on 3 tokens of dimension d (its
    flat state is 3 d: read ``feature.d``), with a tile small enough for several tiles."""
    cls = wflow.FEATURES[name]
    if issubclass(cls, wflow.AbstractSequenceBlock):
        return cls(d=3 * d, tokens=3, token_dim=d, tile=3 * 3 * (3 + d) * 4)
    return cls(d=d, tile=7 * 5) if name == "neuron" else cls(d=d)  # neuron: several tiles


@pytest.mark.parametrize("name", list(wflow.FEATURES))
@pytest.mark.parametrize("weighted", [False, True], ids=["1/M", "weights"])
def test_generic_path_equals_hand_kernel(name, weighted, key):
    feature = _shipped(name, 3)
    d, N, M = feature.d, 13, 11
    k1, k2, k3, k4 = jax.random.split(key, 4)
    Z = jax.random.normal(k1, (N, d))
    Theta = jax.random.normal(k2, (M, feature.k))
    P = jax.random.normal(k3, (N, d))
    w = jax.random.uniform(k4, (M,)) / M if weighted else None

    hand = feature.field(Z, Theta, w)
    generic = wflow.generic_field(feature, Z, Theta, w)
    np.testing.assert_allclose(hand, generic, rtol=0, atol=1e-12)

    def pullback(field):
        args = (Z, Theta) if w is None else (Z, Theta, w)
        return jax.vjp(lambda *a: field(*a), *args)[1](P)

    for a, b in zip(pullback(feature.field), pullback(lambda *a: wflow.generic_field(feature, *a)),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


class _Generic(wflow.AbstractFeatureMap):
    """A shipped block seen only through its one-sample ``__call__`` (the generic path)."""

    inner: wflow.AbstractFeatureMap = None

    @property
    def k(self):
        return self.inner.k

    def __call__(self, z, theta):
        return self.inner(z, theta)


@pytest.mark.parametrize("name", list(wflow.FEATURES))
def test_generic_grad_v_anywhere_equals_hand_kernel(name, key):
    """grad V at arbitrary query points through the hand kernel and through vmap(__call__)."""
    feature = _shipped(name, 2)
    d, N, L, M = feature.d, 9, 3, 5
    generic = _Generic(d=d, tile=7 * 5, inner=feature)
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (N, d))
    Theta = jax.random.normal(k2, (L, M, feature.k))
    Q = jax.random.normal(k3, (L, 4, feature.k))
    out = []
    for f in (feature, generic):
        problem = wflow.Problem(f, x, jnp.tanh(x[:, :1]))
        out.append(LayeredDepth().first_variation_gradient(problem, Theta, Q))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-13)  # the loss
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=0, atol=1e-12)


def test_generic_defaults():
    feature = _Generic(d=2, inner=wflow.Neuron(d=2))
    assert feature.coordinate_names == tuple(f"theta_{i}" for i in range(5))
    assert feature.reflection is None
    assert feature.views == ((0, 1),)
    assert wflow.Neuron(d=2).coordinate_names == ("u_0", "u_1", "w_0", "w_1", "b")
    with pytest.raises(TypeError, match="abstract"):
        type("NoK", (wflow.AbstractFeatureMap,), {"__call__": lambda self, z, t: z})(d=1)


# ----------------------------------------------------------------------------- a user's block


GATE = textwrap.dedent('''
    """A gated neuron, written outside wflow: f(z; a, w, g) = a tanh(gain w . z) sigmoid(g)."""
    import jax
    import jax.numpy as jnp

    import wflow


    class Gate(wflow.AbstractFeatureMap):
        gain: float = 1.0

        @property
        def k(self):
            return 2 * self.d + 1

        def __call__(self, z, theta):
            a, w, g = theta[: self.d], theta[self.d : 2 * self.d], theta[2 * self.d]
            return a * jnp.tanh(self.gain * jnp.dot(w, z)) * jax.nn.sigmoid(g)
''')

BASE = {
    "seed": "3",
    "data": {"kind": '"sine"', "n": "24", "dim": "1"},
    "model": {"feature": '"blocks/gate.py:Gate"', "dim": "2"},
    "init": {"kind": '"gaussian"', "std": "1.0"},
    "solver": {"L": "4", "M": "6", "precision": '"float64"'},
    "train": {"time": "2.0", "dt": "0.1", "record_every": "5", "snapshots": "2"},
}


def _config(tmp_path, edits=None, base=BASE, name="cfg.toml"):
    path = tmp_path / name
    path.write_text(_helpers.toml_text(base, edits))
    return str(path)


@pytest.fixture
def gate_dir(tmp_path):
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "gate.py").write_text(GATE)
    return tmp_path


def _hand_gradient_descent(x, y, theta, gain, steps, lr, d):
    """Plain gradient descent on the finite ResNet, written from the definitions alone."""
    def f(z, th):  # one state, one particle
        a, w, g = th[:d], th[d:2 * d], th[2 * d]
        return a * jnp.tanh(gain * jnp.dot(w, z)) * jax.nn.sigmoid(g)

    def loss(theta):
        L, M, _ = theta.shape
        z = jnp.concatenate([x, jnp.zeros((x.shape[0], d - x.shape[1]))], axis=1)
        for l in range(L):
            step = sum(jax.vmap(lambda zi, m=m: f(zi, theta[l, m]))(z) for m in range(M))
            z = z + step / (L * M)
        r = z[:, : y.shape[1]] - y
        return 0.5 * jnp.mean(jnp.sum(r * r, axis=1))

    grad = jax.jit(jax.grad(loss))
    for _ in range(steps):
        theta = theta - lr * grad(theta)
    return theta


def test_user_block_trajectory_equals_hand_written_gradient_descent(gate_dir, capsys):
    cfg = _config(gate_dir, {"model.params": "{ gain = 1.5 }"})
    out = gate_dir / "run.h5"
    rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q")
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        x, y = f["data/x"][()], f["data/y"][()]
        theta = f["snapshots/theta"][()]
        assert f.attrs["block"].endswith("blocks/gate.py:Gate")
        assert f.attrs["block_source"] == GATE
        assert len(f.attrs["block_sha256"]) == 64
    L, M = 4, 6
    hand = _hand_gradient_descent(jnp.asarray(x), jnp.asarray(y), jnp.asarray(theta[0]), 1.5,
                                  steps=20, lr=L * M * 0.1, d=2)
    assert float(jnp.max(jnp.abs(theta[0] - theta[-1]))) > 1e-3  # the particles moved
    np.testing.assert_allclose(theta[-1], hand, rtol=0, atol=1e-10)


def test_user_block_resume_refuses_changed_source(gate_dir, capsys):
    cfg = _config(gate_dir, {"train.time": "50.0", "train.record_every": "1",
                             "output.checkpoint_every": "0.0"})
    out = gate_dir / "run.h5"
    rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q")
    assert rc == 0, err
    with h5py.File(out, "r+") as f:  # pretend the run was interrupted
        f.attrs["status"] = "interrupted"
        del f.attrs["attrs_sha256"]
    (gate_dir / "blocks" / "gate.py").write_text(GATE.replace("sigmoid(g)", "sigmoid(2 * g)"))
    rc, _, err = cli(capsys, "run", cfg, "-o", out, "-q", "--resume")
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert "model.feature" in line and "source changed" in line, err


# ----------------------------------------------------------------------------- examples/ block


TWO_LAYER = {
    "seed": "1",
    "data": {"kind": '"teacher"', "n": "16", "dim": "2"},
    "model": {"feature": '"two_layer_block.py:TwoLayer"', "params": "{ hidden = 1 }"},
    "init": {"kind": '"gaussian"', "std": "1.0"},
    "solver": {"L": "4", "M": "6", "precision": '"float64"'},
    "train": {"time": "1.0", "dt": "0.1", "record_every": "5", "snapshots": "2"},
}


def _pair(tmp_path, capsys, verb, edits, out_name="o.h5", compare=None):
    """Run ``verb`` on the example block (hidden width 1) and on the shipped neuron."""
    files = []
    for name, feature in (("user", '"two_layer_block.py:TwoLayer"'), ("neuron", '"neuron"')):
        folder = tmp_path / name
        folder.mkdir()
        if name == "user":
            (folder / "two_layer_block.py").write_text(
                open(os.path.join(EXAMPLES, "two_layer_block.py")).read())
        e = {**edits, "model.feature": feature}
        if name == "neuron":
            e["model.params"] = None
        text = _helpers.toml_text(TWO_LAYER, e) + (compare or "")
        cfg = folder / "cfg.toml"
        cfg.write_text(text)
        out = folder / out_name
        quiet = {"run": ["-q"], "compare": ["-q", "--no-plots"],
                 "study limit": ["-q", "--no-plot"]}[verb]
        rc, _, err = cli(capsys, *verb.split(), cfg, "-o", out, *quiet)
        assert rc == 0, err
        files.append(_helpers.datasets(out))
    return files


def _assert_same(a, b, atol=1e-10):
    assert set(a) == set(b)
    for name in a:
        if a[name].dtype.kind == "f":
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=name)


@pytest.mark.parametrize("adjoint", ["checkpoint", pytest.param("backsolve", marks=pytest.mark.slow)])
def test_example_block_continuous_depth_equals_neuron(tmp_path, capsys, adjoint):
    user, neuron = _pair(tmp_path, capsys, "run", {"solver.depth": '"continuous"',
                                                  "solver.adjoint": f'"{adjoint}"'})
    _assert_same(user, neuron)


def test_example_block_on_the_grid_equals_neuron(tmp_path, capsys):
    """d = 1, hidden = 1: k = 3, the grid solver's largest parameter space."""
    edits = {"data.dim": "1", "model.dim": "1", "solver.kind": '"grid"', "solver.L": "2",
             "solver.M": None, "train.time": "0.2", "train.record_every": "1"}
    grid = "\n[solver.grid]\ncells = [6, 6, 6]\nbounds = [-3.0, 3.0]\n"
    user, neuron = _pair(tmp_path, capsys, "run", edits, compare=grid)
    _assert_same(user, neuron)
    assert "snapshots/rho" in user


def test_example_block_compare_equals_neuron(tmp_path, capsys):
    section = '\n[compare]\noptimizers = ["sgd"]\nrecords = 5\n'
    user, neuron = _pair(tmp_path, capsys, "compare", {}, compare=section)
    _assert_same(user, neuron)


def test_example_block_study_limit_equals_neuron(tmp_path, capsys):
    """The whole study, with a continuous-depth particle reference (its members in a loop),
    the same for the example block as for the neuron. Four seeds: the floor then compares the
    repetitions' own references, no extra runs (the two-halves floor, a third compiled
    continuous-depth program per study, is tested in test_faults.py and test_study_rates.py)."""
    section = ('\n[study]\nL = [2, 4]\nM = [2, 4]\nseeds = 4\ntimes = [0.0, 0.5]\n'
               'reference = "particles"\nreference_M = 16\nreference_L = 8\n')
    user, neuron = _pair(tmp_path, capsys, "study limit", {}, compare=section)
    _assert_same(user, neuron)


def test_example_config_runs(capsys, tmp_path):
    """The shipped example config (hidden = 3) as docs/blocks.md runs it."""
    out = tmp_path / "two_layer.h5"
    rc, _, err = cli(capsys, "run", os.path.join(EXAMPLES, "two_layer.toml"), "-o", out, "-q",
                     "--set", "train.time=2.0")
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        assert f["snapshots/theta"].shape[-1] == 3 * (2 * 2 + 1)
        loss = f["history/loss"][()]
    assert loss[-1] < loss[0]


# ----------------------------------------------------------------------------- bad blocks


BAD = {
    "import error": ("import numpy\nraise RuntimeError('broken on purpose')\n", "RuntimeError"),
    "missing class": ("import wflow\n", "has no class 'Gate'"),
    "not a block": ("class Gate:\n    pass\n", "not a subclass of wflow.AbstractFeatureMap"),
    "missing k": ("import wflow\nclass Gate(wflow.AbstractFeatureMap):\n"
                  "    def __call__(self, z, theta):\n        return z\n", "does not define k"),
    "non-integer k": ("import wflow\nclass Gate(wflow.AbstractFeatureMap):\n"
                      "    k = 2.5\n    def __call__(self, z, theta):\n        return z\n",
                      "k = 2.5 must be an integer"),
    "wrong shape": ("import wflow\nclass Gate(wflow.AbstractFeatureMap):\n"
                    "    k = 3\n    def __call__(self, z, theta):\n        return theta\n",
                    "returns shape (3,)"),
    "not traceable": ("import wflow\nclass Gate(wflow.AbstractFeatureMap):\n"
                      "    k = 2\n    def __call__(self, z, theta):\n"
                      "        return z if float(theta[0]) > 0 else -z\n",
                      "cannot be traced by JAX"),
    "non-finite": ("import jax.numpy as jnp\nimport wflow\nclass Gate(wflow.AbstractFeatureMap):\n"
                   "    k = 2\n    def __call__(self, z, theta):\n"
                   "        return z * jnp.log(theta[0])\n", "non-finite values at the initial"),
    "unknown parameter": (GATE, "model.params.width"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_block_is_one_line_and_exit_2(tmp_path, capsys, case):
    source, expected = BAD[case]
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "gate.py").write_text(source)
    edits = {"model.params": "{ width = 3 }"} if case == "unknown parameter" else None
    cfg = _config(tmp_path, edits)
    out = tmp_path / "out" / "run.h5"
    rc, stdout, err = cli(capsys, "run", cfg, "-o", out, "-q")
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0] and ("model.feature" in lines[0] or "model.params" in lines[0])
    assert not out.exists() and not (tmp_path / "out").exists()


def test_symmetric_start_needs_a_reflection(gate_dir, capsys):
    cfg = _config(gate_dir, {"init.symmetric": "true"})
    rc, _, err = cli(capsys, "run", cfg, "-o", gate_dir / "o.h5", "-q")
    assert rc == 2 and "init.symmetric" in err and "Gate" in err and "reflection" in err, err


def test_module_spec_and_missing_file(tmp_path, capsys, monkeypatch):
    """``package.module:Class`` from sys.path; a missing file is named."""
    (tmp_path / "myblocks.py").write_text(GATE)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _config(tmp_path, {"model.feature": '"myblocks:Gate"'})
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "m.h5", "-q")
    assert rc == 0, err
    cfg = _config(tmp_path, {"model.feature": '"nowhere.py:Gate"'})
    rc, _, err = cli(capsys, "run", cfg, "-o", tmp_path / "n.h5", "-q")
    assert rc == 2 and "does not exist" in err and not (tmp_path / "n.h5").exists()
