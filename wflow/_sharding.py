"""Many devices: the data's samples or the measure's particles split over a ``jax.sharding.Mesh``.

``ShardedDepth(inner, mesh, mode)`` wraps a depth discretization (layered or
continuous) and runs its gradient kernels -- ``loss_and_grad`` (hence
``evaluate``: loss, velocities, stationarity) and
``first_variation_gradient`` -- under ``jax.shard_map`` over a one-axis mesh
of n devices, with the collectives written out (``psum``). Flows, the time
loop and the CLI are unchanged: they call the wrapper as they call any
``DepthDiscretization``; ``integrate`` lays the problem and the measure out
with ``place``.

Two ways to split one gradient evaluation (docs/theory.md, "Conventions": N samples, L slices of M
weighted particles, state dimension d, k parameters per particle):

* ``"data"``: device r holds N/n samples x, y and their states z_l and
  adjoints p_l, and all of Theta (replicated). Each device runs the
  unchanged single-device kernel on its samples; the loss and dE/dTheta are
  sums over samples, so one ``psum`` of (L, M, k) per gradient completes
  them. The local problem divides by the global N (``_ShardProblem``), so
  the adjoint has the same scale as on one device.
* ``"particles"``: device r holds M/n particles (and weights) of every slice;
  the states are replicated. The field F_l(z) = sum_m omega_m f(z; theta_m)
  is a sum over particles: ``_PsumFeature`` wraps the feature map so that the
  field is the ``psum`` of the local sums (one all-reduce of (N, d) per slice
  evaluation) and its reverse rule ``psum``s d_z F^T p (one more per slice on
  the backward pass), while dE/dtheta_m stays on the device that holds
  theta_m. Grid cells are weighted particles: a grid measure's weighted view
  (``Flow.weighted`` -> (Theta (L, C, k), weights (L, C))) is split along C the
  same way.

Why ``shard_map`` and not sharding annotations under ``jit``: the per-device
program is exactly the single-device kernel (the hand-written CPU adjoint, the
(M, N) layouts, the blocking of ``Neuron.tile``, diffrax's loops), and the
communication is exactly the collectives written here; XLA's partitioner is
never asked to propagate shardings through custom VJPs, scans and diffrax's
while loops (where it may choose to gather the particles).

``"auto"`` (``choose_mode``) compares the all-reduce volume of one gradient
evaluation, counting each collective as ``LATENCY_ELEMENTS`` extra elements:

    data:       L M k                      in 1 collective
    particles:  2 L N d e                  in 2 L e collectives

with e = 1 field evaluation per slice for the layered ResNet and e = 2 s for
continuous depth (an s-stage solver evaluates two neighbouring slices per
stage, at least one step per slice). It also equals the per-device memory
trade: "data" replicates the L M k parameters (and their gradient and
velocity), "particles" replicates the L N d stored states. If the chosen
axis is not divisible by n and the other one is, the other mode is used.

Divisibility: no padding. M (particles) or N (data) must be a multiple of the
device count, else ``ShardingError`` (the CLI: exit 2 with one line). Padding
would change the numbers a user asked for (zero-weight particles would be
exact for the field but would appear in snapshots and velocities).

The 1-device and n-device runs start from the same arrays: data and initial
particles are generated once, unsharded, from the seed, and ``place`` cuts
them (``jax.make_array_from_callback``, which also works across processes).
Results agree with the single-device run to rounding (sums in another order):
1e-12 relative over 100 float64 steps is tested, for both modes and both
depths, and for the continuous depth the step-size controller's error norm
is made global (``_GlobalNorm``) so that every device, and one device, take
the same adaptive steps.

Multi-host (``initialize_distributed``): one process per host (or per GPU);
the mesh spans every process's devices; each process runs the same program;
only process 0 writes the run file (the CLI checks ``is_main_process``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._depth import ContinuousDepth, DepthDiscretization
from ._features import AbstractFeatureMap
from ._problem import Problem
from ._supervise import distributed_environment

__all__ = [
    "LATENCY_ELEMENTS",
    "SHARD_MODES",
    "ShardedDepth",
    "ProcessLost",
    "ShardingError",
    "any_process",
    "barrier_timeout",
    "choose_mode",
    "describe",
    "distributed_environment",
    "heartbeat_timeout",
    "initialize_distributed",
    "is_main_process",
    "lost_message",
    "make_mesh",
    "multi_process",
    "shard_depth",
    "sync_processes",
    "to_host",
]

SHARD_MODES = ("auto", "data", "particles")
AXIS = "shard"
# One collective costs about as much as moving this many elements (~10 us at ~25 GB/s
# in float32): the latency term of the "auto" rule.
LATENCY_ELEMENTS = 65536


class ShardingError(ValueError):
    """A device count or split that cannot work (one line: key, value, what is allowed)."""


# ----------------------------------------------------------------------------- devices


def initialize_distributed() -> bool:
    """``jax.distributed.initialize()`` when a multi-process environment is present.

    Recognized: a SLURM job step with more than one task (``srun``: ``SLURM_PROCID``
    set and ``SLURM_STEP_NUM_TASKS`` > 1; a plain command inside a multi-task
    allocation is one process), Open MPI (``OMPI_COMM_WORLD_SIZE`` > 1), or an
    explicit coordinator (``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``). JAX then finds the coordinator, the process count
    and this process's id itself (explicit variables are passed through).
    ``WFLOW_NO_DISTRIBUTED=1`` turns the detection off. Must run before anything
    touches a JAX backend. Returns True when initialized.
    """
    found = distributed_environment()
    if found is None:
        return False
    beat = heartbeat_timeout()
    if found == "JAX_COORDINATOR_ADDRESS":
        env = os.environ
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]),
                                   heartbeat_timeout_seconds=beat)
    else:
        jax.distributed.initialize(heartbeat_timeout_seconds=beat)
    return True


# Seconds without a heartbeat after which JAX's coordination service declares a process
# lost and ends the others (JAX's own default is 100 s). A process that dies while the
# others wait for it at a record (a key-value read) or a barrier is noticed only this way;
# one that dies during a collective is noticed at once, through the closed connection.
# Heartbeats come from a native thread of each process, so a long compile or a busy
# Python thread does not delay them. WFLOW_HEARTBEAT_TIMEOUT overrides it.
HEARTBEAT_TIMEOUT = 20


def heartbeat_timeout() -> int:
    """``WFLOW_HEARTBEAT_TIMEOUT`` (whole seconds, at least 2), else ``HEARTBEAT_TIMEOUT``.

    Raises ``ShardingError`` with one line naming the variable, its value and what is allowed.
    """
    text = os.environ.get("WFLOW_HEARTBEAT_TIMEOUT", "").strip()
    if not text:
        return HEARTBEAT_TIMEOUT
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 2:
        raise ShardingError(f"WFLOW_HEARTBEAT_TIMEOUT = {text!r}: allowed is a whole number of "
                            "seconds, at least 2")
    return value


def is_main_process() -> bool:
    """True on process 0 (the one that writes files and shows progress)."""
    return jax.process_index() == 0


class ProcessLost(RuntimeError):
    """A process of a multi-process run did not answer in time (one line naming it)."""


# Seconds a process waits at a barrier (or for the other processes' answer at a record)
# before it gives up on the others; WFLOW_BARRIER_TIMEOUT overrides it.
BARRIER_TIMEOUT = 600.0
_rounds: dict[str, int] = {}


def barrier_timeout() -> float:
    try:
        value = float(os.environ.get("WFLOW_BARRIER_TIMEOUT", BARRIER_TIMEOUT))
    except ValueError:
        return BARRIER_TIMEOUT
    return value if value > 0 else BARRIER_TIMEOUT


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def _round(name: str) -> str:
    """``name`` made unique per call (every process calls the same sequence of names)."""
    n = _rounds.get(name, 0)
    _rounds[name] = n + 1
    return f"wflow/{name}/{n}"


def lost_processes() -> list[int]:
    """The process that is gone, as far as this process can tell without waiting: with two
    processes the other one; else none named. (The coordination service's own liveness
    query waits for its heartbeat timeout, so it is not asked.)"""
    me, count = jax.process_index(), jax.process_count()
    others = [r for r in range(count) if r != me]
    return others if len(others) == 1 else []


def lost_message(what: str, ranks: list[int] | None = None) -> str:
    """One line: which process of the run is gone (``ranks``, else asked of the service)."""
    me, count = jax.process_index(), jax.process_count()
    ranks = lost_processes() if ranks is None else ranks
    who = f"process {', '.join(map(str, ranks))}" if ranks else "another process"
    return f"{who} of the {count}-process run was lost ({what}); process {me} stops"


def sync_processes(name: str, timeout: float | None = None) -> None:
    """A barrier across the processes of a multi-process run (nothing with one process).

    Raises ``ProcessLost`` naming the processes that did not arrive within ``timeout``
    seconds (default ``barrier_timeout()``; the variable ``WFLOW_BARRIER_TIMEOUT``).
    """
    if jax.process_count() == 1:
        return
    timeout = barrier_timeout() if timeout is None else timeout
    try:
        _client().wait_at_barrier(_round(name), int(timeout * 1000))
    except Exception as e:  # noqa: BLE001 - the coordination service's error (a timeout)
        import re

        text = str(e)
        tail = text.split("timed out task", 1)[1] if "timed out task" in text else ""
        ranks = sorted({int(a or b) for a, b in re.findall(r"task:(\d+)|^\s*(\d+)\s*$", tail,
                                                            re.M)} - {jax.process_index()})
        raise ProcessLost(lost_message(f"it did not reach the barrier {name!r} within "
                                       f"{timeout:g} s; WFLOW_BARRIER_TIMEOUT sets the wait",
                                       ranks or None)) from None


def any_process(name: str, flags: tuple[bool, ...],
                timeout: float | None = None) -> tuple[bool, ...]:
    """Each flag OR-ed over every process (``flags`` itself with one process).

    One round trip through the coordination service, no device collective: the
    processes agree, at every record, on whether to stop (a signal may reach only
    one of them) and whether process 0 commits a checkpoint (which needs every
    process to gather the state). Raises ``ProcessLost`` when a process does not
    answer within ``timeout`` seconds.
    """
    count = jax.process_count()
    if count == 1:
        return tuple(bool(f) for f in flags)
    timeout = barrier_timeout() if timeout is None else timeout
    client, me = _client(), jax.process_index()
    key = _round(name)
    client.key_value_set(f"{key}/{me}", "".join("1" if f else "0" for f in flags))
    out = [bool(f) for f in flags]
    for rank in range(count):
        if rank == me:
            continue
        try:
            value = client.blocking_key_value_get(f"{key}/{rank}", int(timeout * 1000))
        except Exception:  # noqa: BLE001 - deadline exceeded: that process is gone or stuck
            raise ProcessLost(lost_message(f"no answer at a record within {timeout:g} s; "
                                           "WFLOW_BARRIER_TIMEOUT sets the wait",
                                           [rank])) from None
        out = [a or c == "1" for a, c in zip(out, value, strict=False)]
    # Every process has written this round, so all have read the previous one: drop ours.
    previous = key.rsplit("/", 1)
    if int(previous[1]) > 0:
        with contextlib.suppress(Exception):
            client.key_value_delete(f"{previous[0]}/{int(previous[1]) - 1}/{me}")
    return tuple(out)


def multi_process() -> bool:
    """True in a run of several processes (after ``initialize_distributed``)."""
    return jax.process_count() > 1


def describe(depth: DepthDiscretization) -> dict:
    """{"devices": n, "shard": "data" | "particles" | "none"}: how ``depth`` runs (run-file attributes)."""
    if isinstance(depth, ShardedDepth):
        return {"devices": depth.n, "shard": depth.mode}
    return {"devices": 1, "shard": "none"}


def make_mesh(devices: int | None = None) -> Mesh:
    """A one-axis mesh (axis ``AXIS``) over the first ``devices`` devices of the default backend.

    ``None`` means every visible device (across all processes).
    """
    avail = jax.devices()
    n = len(avail) if devices is None else devices
    if not 1 <= n <= len(avail):
        raise ShardingError(f"solver.devices = {n}: {len(avail)} {jax.default_backend()} "
                            f"device(s) are visible; allowed is 1..{len(avail)}")
    if jax.process_count() > 1 and n != len(avail):
        raise ShardingError(f"solver.devices = {n}: a multi-process run uses every device of "
                            f"every process ({len(avail)}); leave solver.devices unset")
    return Mesh(np.array(avail[:n]), (AXIS,))


# Field evaluations per step of each ODE solver (first-same-as-last stages counted once).
_STAGES = {"tsit5": 6, "dopri5": 6, "dopri8": 12, "heun": 2, "bosh3": 3}


def field_evaluations(depth: DepthDiscretization) -> int:
    """Slice-field evaluations per slice of one forward pass (e in the module docstring)."""
    if isinstance(depth, ContinuousDepth):
        return 2 * _STAGES.get(depth.solver, 6)
    return 1


def choose_mode(shard: str, n: int, N: int, M: int, L: int, d: int, k: int,
                evaluations: int = 1) -> str:
    """The split for n devices: ``shard`` itself, or the ``"auto"`` choice (module docstring).

    Raises ``ShardingError`` when the split axis is not divisible by n.
    """
    if shard not in SHARD_MODES:
        raise ShardingError(f"solver.shard = {shard!r}: allowed are {', '.join(SHARD_MODES)}")
    if n == 1:
        return "data" if shard == "auto" else shard
    size = {"data": N, "particles": M}
    if shard == "auto":
        data = L * M * k + LATENCY_ELEMENTS
        particles = 2 * L * evaluations * (N * d + LATENCY_ELEMENTS)
        shard = "particles" if particles < data else "data"
        other = "data" if shard == "particles" else "particles"
        if size[shard] % n and not size[other] % n:
            shard = other
    if size[shard] % n:
        key, what = (("data.n", "samples") if shard == "data" else ("solver.M", "particles"))
        lo, hi = size[shard] // n * n, -(-size[shard] // n) * n
        near = f"{lo} or {hi}" if lo > 0 else f"{hi}"
        raise ShardingError(
            f"{key} = {size[shard]}: not divisible by the {n} devices (solver.devices); with "
            f'solver.shard = "{shard}" each device holds an equal share of the {what}: use a '
            f"multiple of {n} (e.g. {near}), another solver.devices or solver.shard")
    return shard


# ----------------------------------------------------------------------------- kernels


class _ShardProblem(Problem):
    """One device's samples of a data-split problem: losses divide by the global N.

    E_r = (1/2N) sum_{i on r} |g(z_i) - y_i|^2, so E = sum_r E_r and the
    adjoint p = N dE/dz has the same scale as on one device.
    """

    total: int = eqx.field(static=True, kw_only=True)

    @property
    def n(self) -> int:
        return self.total

    def loss(self, z1):
        r = self.readout(z1) - self.y
        return 0.5 * jnp.sum(r * r) / self.total


class _PsumFeature(AbstractFeatureMap):
    """The field of a particle-split slice: the ``psum`` of every device's partial sum.

    F(Z) = sum_r sum_{m on r} omega_m f(Z; theta_m) with omega = 1/M (M = n M_r,
    the inner feature's local 1/M_r times 1/n) when ``weights`` is None. Reverse
    rule: d_z F^T P is ``psum``ed, dE/dtheta and dE/domega stay local.
    """

    inner: AbstractFeatureMap = eqx.field()
    n: int = eqx.field(static=True)

    @property
    def k(self) -> int:
        return self.inner.k

    def __call__(self, z, theta):
        return self.inner(z, theta)

    def field(self, Z, Theta, weights=None):
        return _psum_field(self, Z, Theta, weights)

    def probe(self, Z, Q):
        # Query points and states are replicated: each device has the whole sum over i.
        return self.inner.probe(Z, Q)


def _local_field(feature: _PsumFeature, Z, Theta, weights):
    F = feature.inner.field(Z, Theta, weights)
    return F / feature.n if weights is None else F


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _psum_field(feature: _PsumFeature, Z, Theta, weights):
    return lax.psum(_local_field(feature, Z, Theta, weights), AXIS)


def _psum_field_fwd(feature, Z, Theta, weights):
    return _psum_field(feature, Z, Theta, weights), (Z, Theta, weights)


def _psum_field_bwd(feature, residuals, P):
    Z, Theta, weights = residuals
    if weights is None:
        _, vjp = jax.vjp(lambda z, t: _local_field(feature, z, t, None), Z, Theta)
        (gZ, gT), gw = vjp(P), None
    else:
        _, vjp = jax.vjp(lambda z, t, w: _local_field(feature, z, t, w), Z, Theta, weights)
        gZ, gT, gw = vjp(P)
    return lax.psum(gZ, AXIS), gT, gw


_psum_field.defvjp(_psum_field_fwd, _psum_field_bwd)


def _sum_squares(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return sum((jnp.sum(jnp.square(a)) for a in leaves), jnp.zeros((), jnp.float32))


def _size(tree) -> int:
    return sum(a.size for a in jax.tree_util.tree_leaves(tree))


class _GlobalNorm(ContinuousDepth):
    """``ContinuousDepth`` whose controller norm is the RMS over all devices' parts of the state.

    Forward solve: z is split (data) or replicated (particles). Backsolve's
    backward solve (z, a_z, a_args, a_terms), a_args the adjoint of (Theta,
    weights, probes): with data split a_args and a_terms are partial sums over
    samples (all-reduced before squaring), with particles split the adjoints
    of Theta and weights are split and the rest replicated. Only the step
    sizes depend on it (diffrax stops gradients through the controller).
    """

    mode: str = eqx.field(static=True, default="data")
    n: int = eqx.field(static=True, default=1)

    def norm(self, y):
        y = lax.stop_gradient(y)
        if isinstance(y, tuple) and len(y) == 4:
            z, a_z, (a_theta, a_w, a_probe), a_terms = y
            if self.mode == "data":
                split, partial, whole = (z, a_z), (a_theta, a_w, a_probe, a_terms), ()
            else:
                split, partial, whole = (a_theta, a_w), (), (z, a_z, a_probe, a_terms)
        else:
            split, partial, whole = (y, (), ()) if self.mode == "data" else ((), (), y)
        partial = lax.psum(partial, AXIS) if _size(partial) else partial
        sq = lax.psum(_sum_squares(split), AXIS) + _sum_squares(partial) + _sum_squares(whole)
        count = self.n * _size(split) + _size(partial) + _size(whole)
        dtype = jax.tree_util.tree_leaves(y)[0].dtype
        return jnp.sqrt(sq.astype(dtype) / count)


def _manual(sharding) -> bool:
    mesh = getattr(sharding, "mesh", None)
    types = getattr(mesh, "axis_types", ())
    return bool(types) and all(t == jax.sharding.AxisType.Manual for t in types)


@contextlib.contextmanager
def _equinox_shard_map_fix():
    """Let diffrax's checkpointed backprop run inside ``shard_map`` (equinox 0.13.8, jax 0.10).

    ``equinox.filter_closure_convert`` (used by the checkpointed while loop of
    ``RecursiveCheckpointAdjoint``) records its inputs' ``ShapeDtypeStruct``s,
    shardings included, and on the backward pass refuses inputs whose structs
    differ. Inside ``shard_map`` a traced value carries the manual mesh's
    sharding while a concrete constant carries none, so the same loop state
    compares unequal ("Closure-converted function called with different
    dynamic arguments"). While our per-device program is traced, the recorded
    structs leave out manual-mesh shardings (they say nothing inside the
    manual region). No effect when equinox lacks the private helper.
    """
    from equinox import _ad

    original = getattr(_ad, "_strip_weak_dtype", None)
    if original is None:
        yield
        return

    def strip(tree):
        return jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(
                x.shape, x.dtype, sharding=None if _manual(x.sharding) else x.sharding), tree)

    _ad._strip_weak_dtype = strip
    try:
        yield
    finally:
        _ad._strip_weak_dtype = original


# ----------------------------------------------------------------------------- the wrapper


class ShardedDepth(DepthDiscretization):
    """A depth discretization whose gradients run split over a device mesh (module docstring).

    Args:
        inner: the discretization (``LayeredDepth`` or ``ContinuousDepth``).
        mesh: one-axis mesh (``make_mesh``); its size n is the device count.
        mode: ``"data"`` or ``"particles"`` (``choose_mode`` resolves ``"auto"``).
    """

    inner: DepthDiscretization
    mesh: Mesh = eqx.field(static=True)
    mode: str = eqx.field(static=True)

    def __check_init__(self):
        if self.mode not in ("data", "particles"):
            raise ShardingError(f"solver.shard = {self.mode!r}: a ShardedDepth needs 'data' or "
                                "'particles' (resolve 'auto' with choose_mode)")
        if AXIS not in self.mesh.axis_names:
            raise ShardingError(f"the mesh must have an axis named {AXIS!r}")

    @property
    def n(self) -> int:
        return self.mesh.shape[AXIS]

    @property
    def members_in_a_loop(self) -> bool:
        return self.inner.members_in_a_loop

    # --- the same discretization
    def weights(self, L, dtype=jnp.float32):
        return self.inner.weights(L, dtype)

    def times(self, L):
        return self.inner.times(L)

    def final_state(self, problem, Theta, x, weights=None, probes=None):
        # Predictions and plain losses (not on the training path): global semantics,
        # partitioned by XLA.
        return self.inner.final_state(problem, Theta, x, weights, probes)

    # --- layout
    def _sharding(self, spec) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def _put(self, a, spec):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, self._sharding(spec), lambda idx: a[idx])

    def place(self, problem: Problem, measure):
        """Data split along N or replicated; particles (L, M, k) split along M or replicated.

        A ``Measure`` other than a particle array (a grid density) is replicated;
        its weighted view is split inside each gradient evaluation.
        """
        split_data = self.mode == "data"
        xy = P(AXIS) if split_data else P()
        problem = eqx.tree_at(lambda p: (p.x, p.y), problem,
                              (self._put(problem.x, xy), self._put(problem.y, xy)))
        if isinstance(measure, jax.Array | np.ndarray) and measure.ndim == 3 and not split_data:
            return problem, self._put(measure, P(None, AXIS))
        return problem, jax.tree_util.tree_map(lambda a: self._put(a, P()), measure)

    # --- the split kernels
    def _local_depth(self) -> DepthDiscretization:
        if isinstance(self.inner, ContinuousDepth):
            fields = {f: getattr(self.inner, f) for f in ("adjoint", "solver", "rtol", "atol",
                                                          "max_steps")}
            return _GlobalNorm(**fields, mode=self.mode, n=self.n)
        return self.inner

    def _local_problem(self, problem: Problem, x, y) -> Problem:
        """One device's problem: every setting of ``problem`` (residual scale, embedding,
        ...) with this device's data (and no held-out set: only the loss and its gradient
        are computed here)."""
        settings = {f.name: getattr(problem, f.name) for f in dataclasses.fields(Problem)}
        settings.update(x=x, y=y, x_test=None, y_test=None)
        if self.mode == "data":
            return _ShardProblem(**settings, total=problem.n)
        settings["feature"] = _PsumFeature(d=problem.feature.d, inner=problem.feature, n=self.n)
        return Problem(**settings)

    def _shard_map(self, fn, problem, Theta, weights, extra, extra_spec, out_specs):
        """Run fn(local problem, Theta, weights, *extra) on every device."""
        data = self.mode == "data"
        xy = P(AXIS) if data else P()
        th = P() if data else P(None, AXIS)
        w_spec = None if weights is None else (P() if data else P(None, AXIS))
        local_depth = self._local_depth()

        def local(x, y, Theta, weights, *extra):
            with _equinox_shard_map_fix():
                return fn(local_depth, self._local_problem(problem, x, y), Theta, weights, *extra)

        in_specs = (xy, xy, th, w_spec) + tuple(extra_spec)
        return jax.shard_map(local, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs,
                             check_vma=False)(problem.x, problem.y, Theta, weights, *extra)

    def loss_and_grad(self, problem, Theta, weights=None):
        """E and dE/dTheta (L, M, k), split over the mesh (module docstring)."""
        data = self.mode == "data"

        def fn(depth, local_problem, Theta, weights):
            loss, g = depth.loss_and_grad(local_problem, Theta, weights)
            if data:  # partial sums over this device's samples
                return lax.psum(loss, AXIS), lax.psum(g, AXIS)
            return loss, g

        out = (P(), P() if data else P(None, AXIS))
        return self._shard_map(fn, problem, Theta, weights, (), (), out)

    def first_variation_gradient(self, problem, Theta, query, weights=None):
        """(loss, grad_theta V_l at the query points (L, Q, k)), split over the mesh."""
        L = Theta.shape[0]
        if query.ndim == 2:
            query = jnp.broadcast_to(query, (L,) + query.shape)
        data = self.mode == "data"

        def fn(depth, local_problem, Theta, weights, query):
            loss, G = depth.first_variation_gradient(local_problem, Theta, query, weights)
            if data:
                return lax.psum(loss, AXIS), lax.psum(G, AXIS)
            return loss, G

        return self._shard_map(fn, problem, Theta, weights, (query,), (P(),), (P(), P()))


def shard_depth(depth: DepthDiscretization, *, devices: int | None, shard: str, N: int, M: int,
                L: int, d: int, k: int) -> DepthDiscretization:
    """``depth`` split over ``devices`` devices (``None``: all visible), or itself on one device.

    Raises ``ShardingError`` (one line naming the key) for a bad device count or
    an indivisible split.
    """
    mesh = make_mesh(devices)
    n = mesh.shape[AXIS]
    mode = choose_mode(shard, n, N, M, L, d, k, field_evaluations(depth))
    if n == 1:
        return depth
    return ShardedDepth(depth, mesh, mode)


def to_host(measure) -> np.ndarray:
    """A (possibly multi-process) array as one NumPy array on this host."""
    if isinstance(measure, jax.Array) and not (measure.is_fully_addressable
                                                or measure.is_fully_replicated):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(measure, tiled=True))
    return np.asarray(measure)
