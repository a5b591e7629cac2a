"""The Fréchet distance between two Gaussians, shared by FVD and FID.

d² = |mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^{1/2})

The matrix square root follows pytorch-fid's numerical handling: if ``sqrtm(S1 S2)`` is not finite
(near-singular product, e.g. fewer samples than feature dimensions), retry with ``eps`` added to both
diagonals; a complex result whose imaginary part is numerical noise is replaced by its real part.
"""

from __future__ import annotations

import warnings

import numpy as np


def gaussian_stats(features: np.ndarray, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``features`` (n, d), float64.

    ``ddof=1`` is ``np.cov`` (pytorch-fid, FID); ``ddof=0`` is the population covariance StyleGAN-V's
    FVD accumulates (``E[x xᵀ] - mu muᵀ``).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {x.shape}")
    n = x.shape[0]
    if n < 1 + ddof:
        raise ValueError(f"need at least {1 + ddof} feature vectors for a covariance (ddof={ddof}), got {n}")
    mu = x.mean(axis=0)
    xc = x - mu
    sigma = xc.T @ xc / (n - ddof)
    return mu, sigma


def _sqrtm(a: np.ndarray) -> np.ndarray:
    import scipy.linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular matrices; finiteness is checked below
        return scipy.linalg.sqrtm(a)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, imag_atol: float = 1e-3) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"covariances must be ({mu1.size}, {mu1.size}), got {sigma1.shape} and {sigma2.shape}")

    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag)) if covmean.size else 0.0
        if imag > imag_atol:
            # A large imaginary part on the diagonal means the product was badly conditioned: regularise.
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        covmean = np.real(covmean)
    if not np.isfinite(covmean).all():
        raise ValueError("matrix square root of the covariance product is not finite")

    d = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    # Round-off can leave a tiny negative value for identical distributions.
    return max(d, 0.0) if d > -1e-6 * max(1.0, abs(np.trace(sigma1))) else d


def frechet_distance_from_features(features1: np.ndarray, features2: np.ndarray, ddof: int = 1,
                                   eps: float = 1e-6) -> float:
    """Fit a Gaussian to each feature set (n, d) and return their Fréchet distance."""
    mu1, s1 = gaussian_stats(features1, ddof=ddof)
    mu2, s2 = gaussian_stats(features2, ddof=ddof)
    return frechet_distance(mu1, s1, mu2, s2, eps=eps)
