"""Where a Σ_X comes from: seeded synthetic families and the SOURCE spec grammar.

``resolve_source`` accepts what the CLI and the app accept:

- a file path ending in ``.npy``, ``.npz``, ``.pt``, ``.pth`` or ``.safetensors``;
- ``bundle:<bundle-name>/<block>/<input>``, a layer of a collected bundle;
- ``synthetic:<family>?n=256&seed=0&basis=random&<param>=<value>``.

Synthetic families are defined in their *native* basis, where the power-law, exponential and
spiked families are diagonal (channels are independent) and the Wishart and AR(1) families are
full matrices. ``basis="random"`` conjugates the native matrix by a Haar-random rotation, which
keeps the eigenvalues and mixes every channel with every other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from .covariance import Covariance
from .covariance_io import DEFAULT_MAX_N, SUPPORTED_EXTENSIONS, load_covariance
from .errors import WfvizError

SYNTHETIC_FAMILIES = {
    "powerlaw": "Power-law spectrum λ_i ∝ (i+1)^(-alpha): a few strong directions and a long tail.",
    "exponential": "Exponential decay λ_i ∝ exp(-rate·i/n): condition number about e^rate.",
    "wishart": "Sample second moment of `samples` white Gaussian vectors (Marchenko–Pastur).",
    "spiked": "Flat bulk plus n_spikes outlier channels spike_scale× stronger (LLM-like outliers).",
    "ar1": "AR(1)/Toeplitz Σ_ij = rho^|i-j|: neighbouring channels correlated, unit diagonal.",
}
"""Family name → one-line description for the UI."""

BASES = ("native", "random")
_BASIS_SEED_OFFSET = 2**32  # keeps the basis rotation independent of a Haar rotation seeded `seed`


@dataclass(frozen=True)
class _Param:
    kind: type
    default: Callable[[int], float]
    valid: Callable[[float, int], bool]
    rule: str


_PARAMS: dict[str, dict[str, _Param]] = {
    "powerlaw": {"alpha": _Param(float, lambda n: 1.0, lambda v, n: v >= 0, "a number >= 0")},
    "exponential": {"rate": _Param(float, lambda n: 10.0, lambda v, n: v >= 0, "a number >= 0")},
    "wishart": {
        "samples": _Param(int, lambda n: 2 * n, lambda v, n: v >= 1, "an integer >= 1"),
    },
    "spiked": {
        "n_spikes": _Param(int, lambda n: min(4, n), lambda v, n: 0 <= v <= n,
                           "an integer between 0 and n"),
        "spike_scale": _Param(float, lambda n: 1000.0, lambda v, n: v > 0, "a number > 0"),
    },
    "ar1": {"rho": _Param(float, lambda n: 0.9, lambda v, n: -1 < v < 1,
                          "a number strictly between -1 and 1")},
}


def _unit_mean(spectrum: np.ndarray) -> np.ndarray:
    return spectrum / spectrum.mean()


def _powerlaw(n, rng, alpha):
    return np.diag(_unit_mean(np.arange(1, n + 1, dtype=np.float64) ** -alpha))


def _exponential(n, rng, rate):
    return np.diag(_unit_mean(np.exp(-rate * np.arange(n) / n)))


def _wishart(n, rng, samples):
    g = rng.standard_normal((n, samples))
    return g @ g.T / samples


def _spiked(n, rng, n_spikes, spike_scale):
    diag = np.ones(n)
    diag[rng.choice(n, size=n_spikes, replace=False)] = spike_scale
    return np.diag(_unit_mean(diag))


def _ar1(n, rng, rho):
    return scipy.linalg.toeplitz(rho ** np.arange(n, dtype=np.float64))


_BUILDERS = {
    "powerlaw": _powerlaw,
    "exponential": _exponential,
    "wishart": _wishart,
    "spiked": _spiked,
    "ar1": _ar1,
}


def _check_choice(value, choices, what: str) -> None:
    if value not in choices:
        raise WfvizError(f"Unknown {what} {value!r}; choose one of {', '.join(choices)}.")


def _checked_int(value, name: str, low: int, high: int) -> int:
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not (numeric and float(value).is_integer() and low <= value <= high):
        raise WfvizError(f"{name} must be an integer between {low} and {high}, got {value!r}.")
    return int(value)


def _family_params(family: str, n: int, params: dict) -> dict:
    spec = _PARAMS[family]
    unknown = sorted(set(params) - set(spec))
    if unknown:
        valid = ", ".join(spec) or "none"
        raise WfvizError(f"Unknown parameter {unknown[0]!r} for family {family!r}; its parameters "
                         f"are: {valid}.")
    out = {}
    for name, p in spec.items():
        value = params.get(name, p.default(n))
        ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        ok = ok and np.isfinite(value) and (p.kind is float or float(value).is_integer())
        if not ok or not p.valid(value, n):
            raise WfvizError(f"{family} parameter {name} must be {p.rule}, got {value!r}.")
        out[name] = p.kind(value)
    return out


def _spec_string(family: str, n: int, seed: int, basis: str, params: dict) -> str:
    fields = [f"n={n}", f"seed={seed}", f"basis={basis}"]
    fields += [f"{k}={v!r}" for k, v in params.items()]
    return f"synthetic:{family}?" + "&".join(fields)


def _random_basis(matrix: np.ndarray, seed: int) -> np.ndarray:
    from .rotations import get_rotation  # the rotations module is only needed for this basis

    rotated = get_rotation("haar", matrix.shape[0], seed=seed + _BASIS_SEED_OFFSET).apply_sigma(
        matrix
    )
    return 0.5 * (rotated + rotated.T)


def synthetic(family: str, n: int, *, seed: int = 0, basis: str = "native",
              **params) -> Covariance:
    """Build a seeded synthetic Σ_X of size ``n × n``.

    Parameters
    ----------
    family : str
        One of :data:`SYNTHETIC_FAMILIES`.
    n : int
        Size, between 1 and ``DEFAULT_MAX_N``.
    seed : int
        Seed of every random choice (Wishart samples, spike positions, random basis).
    basis : {"native", "random"}
        ``"native"``: the family's own channels (diagonal for powerlaw, exponential, spiked;
        the sample second moment itself for wishart; the Toeplitz matrix for ar1).
        ``"random"``: the native matrix conjugated by a Haar-random rotation.
    **params
        Family parameters: ``alpha`` (powerlaw, default 1), ``rate`` (exponential, default 10),
        ``samples`` (wishart, default 2n), ``n_spikes`` and ``spike_scale`` (spiked, defaults
        min(4, n) and 1000, a variance ratio), ``rho`` (ar1, default 0.9).

    Returns
    -------
    Covariance
        Full matrix and eigenvalues; ``source_id`` is the canonical ``synthetic:`` spec with
        every default filled in. The powerlaw, exponential and spiked spectra are scaled to a
        mean eigenvalue of 1; ar1 has a unit diagonal; wishart has mean eigenvalue ≈ 1.

    Examples
    --------
    >>> cov = synthetic("powerlaw", 4, alpha=2.0)
    >>> cov.source_id
    'synthetic:powerlaw?n=4&seed=0&basis=native&alpha=2.0'
    >>> round(float(cov.eigenvalues.mean()), 12)
    1.0
    """
    _check_choice(family, list(SYNTHETIC_FAMILIES), "synthetic family")
    _check_choice(basis, BASES, "basis")
    n = _checked_int(n, "n", 1, DEFAULT_MAX_N)
    seed = _checked_int(seed, "seed", 0, 2**31 - 1)
    values = _family_params(family, n, params)
    native = _BUILDERS[family](n, np.random.default_rng(seed), **values)
    off_diagonal = family in ("wishart", "ar1")
    spectrum = (torch.linalg.eigvalsh(torch.from_numpy(native)).numpy() if off_diagonal
                else np.diag(native))
    matrix = native if basis == "native" else _random_basis(native, seed)
    described = ", ".join(f"{k}={v:g}" for k, v in values.items())
    return Covariance(
        eigenvalues=np.maximum(np.sort(spectrum)[::-1], 0.0),
        matrix=matrix,
        label=f"synthetic {family} ({described}), n={n}, {basis} basis, seed {seed}",
        source_id=_spec_string(family, n, seed, basis, values),
    )


def _number(text: str, name: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise WfvizError(f"{name}={text!r} in the synthetic spec is not a number.") from None


def family_params(family: str, n: int, **params) -> dict:
    """The parameters of a synthetic family for size ``n``, defaults filled in and checked.

    The app's widgets start from these defaults, so the UI and the library never disagree.

    Examples
    --------
    >>> family_params("wishart", 100)
    {'samples': 200}
    """
    _check_choice(family, list(SYNTHETIC_FAMILIES), "synthetic family")
    return _family_params(family, int(n), params)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed SOURCE string (see :func:`parse_source`).

    Attributes
    ----------
    kind : {"file", "bundle", "synthetic"}
    path : str
        The file (kind ``file``) or the bundle name (kind ``bundle``).
    block : int or None
    layer_input : str or None
        ``qkv``, ``o``, ``gate_up`` or ``down`` (kind ``bundle``).
    family : str or None
    n, seed : int or None
    basis : str or None
    params : dict
        The family's parameters with their defaults filled in (kind ``synthetic``).
    """

    kind: str
    path: str = ""
    block: int | None = None
    layer_input: str | None = None
    family: str | None = None
    n: int | None = None
    seed: int | None = None
    basis: str | None = None
    params: dict = field(default_factory=dict)

    def canonical(self) -> str:
        """The SOURCE string with every default spelled out.

        Examples
        --------
        >>> parse_source("synthetic:ar1?n=8").canonical()
        'synthetic:ar1?n=8&seed=0&basis=native&rho=0.9'
        """
        if self.kind == "synthetic":
            return _spec_string(self.family, self.n, self.seed, self.basis, self.params)
        if self.kind == "bundle":
            return f"bundle:{self.path}/{self.block}/{self.layer_input}"
        return self.path


def _parse_synthetic(body: str) -> SourceSpec:
    family, _, query = body.partition("?")
    _check_choice(family, list(SYNTHETIC_FAMILIES), "synthetic family")
    fields = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WfvizError(f"Malformed synthetic spec field {item!r}; write key=value.")
        if key in fields:
            raise WfvizError(f"The synthetic spec repeats {key!r}; give each parameter once.")
        fields[key] = value
    basis = fields.pop("basis", "native")
    _check_choice(basis, BASES, "basis")
    n = _checked_int(_number(fields.pop("n", "256"), "n"), "n", 1, DEFAULT_MAX_N)
    seed = _checked_int(_number(fields.pop("seed", "0"), "seed"), "seed", 0, 2**31 - 1)
    params = _family_params(family, n, {k: _number(v, k) for k, v in fields.items()})
    return SourceSpec("synthetic", family=family, n=n, seed=seed, basis=basis, params=params)


def _parse_bundle(body: str) -> SourceSpec:
    parts = body.rsplit("/", 2)
    if len(parts) != 3 or not all(parts):
        raise WfvizError(f"'bundle:{body}' is malformed; write bundle:<name>/<block>/<input>.")
    name, block, layer_input = parts
    try:
        block_index = int(block)
    except ValueError:
        raise WfvizError(f"Bundle block {block!r} is not an integer index.") from None
    return SourceSpec("bundle", path=name, block=block_index, layer_input=layer_input)


def parse_source(spec: str) -> SourceSpec:
    """Parse a SOURCE string without loading anything: the one parser of the grammar.

    Parameters
    ----------
    spec : str
        ``path/to/sigma.npy`` (``.npy``, ``.npz``, ``.pt``, ``.pth``, ``.safetensors``),
        ``bundle:<name>/<block>/<input>`` or
        ``synthetic:<family>?n=..&seed=..&basis=..&<param>=..`` (n defaults to 256).

    Returns
    -------
    SourceSpec

    Examples
    --------
    >>> s = parse_source("bundle:smollm2-135m-wikitext2/15/down")
    >>> s.kind, s.block, s.layer_input
    ('bundle', 15, 'down')
    >>> parse_source("synthetic:wishart?n=64").params
    {'samples': 128}
    """
    if not isinstance(spec, str) or not spec.strip():
        raise WfvizError("The source must be a non-empty string: a file path, bundle:... or "
                         "synthetic:....")
    spec = spec.strip()
    if spec.startswith("synthetic:"):
        return _parse_synthetic(spec[len("synthetic:"):])
    if spec.startswith("bundle:"):
        return _parse_bundle(spec[len("bundle:"):])
    if Path(spec).suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise WfvizError(f"{spec!r} is not a source; give a file ending in "
                         f"{', '.join(SUPPORTED_EXTENSIONS)}, bundle:<name>/<block>/<input> or "
                         "synthetic:<family>?n=....")
    return SourceSpec("file", path=spec)


def _load_bundle_layer(spec: SourceSpec) -> Covariance:
    try:
        from .bundles import load_bundle
    except ImportError as exc:
        raise WfvizError("Bundle support (wfviz.bundles) is not available in this "
                         "installation; use a file or synthetic source.") from exc
    try:
        return load_bundle(spec.path).layer(spec.block, spec.layer_input)
    except WfvizError:
        raise
    except (OSError, KeyError, IndexError, ValueError) as exc:
        raise WfvizError(f"Could not load bundle layer {spec.canonical()!r} ({exc}); list the "
                         "available bundles with 'wfviz bundles'.") from exc


def resolve_source(spec: str) -> Covariance:
    """Turn a SOURCE string (file path, ``bundle:…`` or ``synthetic:…``) into a Covariance.

    Parameters
    ----------
    spec : str
        ``path/to/sigma.npy``, ``bundle:<name>/<block>/<input>`` or
        ``synthetic:<family>?n=..&seed=..&basis=..&<param>=..`` (n defaults to 256).

    Returns
    -------
    Covariance

    Examples
    --------
    >>> resolve_source("synthetic:exponential?n=8&rate=3").source_id
    'synthetic:exponential?n=8&seed=0&basis=native&rate=3.0'
    """
    parsed = parse_source(spec)
    if parsed.kind == "synthetic":
        return synthetic(parsed.family, parsed.n, seed=parsed.seed, basis=parsed.basis,
                         **parsed.params)
    if parsed.kind == "bundle":
        return _load_bundle_layer(parsed)
    return load_covariance(parsed.path)
