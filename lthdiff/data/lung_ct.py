"""SyntheticLungCT: procedural axial chest CT slices, acquired through a simulated CT scanner.

Each slice starts as a phantom in Hounsfield units (HU): air (-1000) around an elliptical body
(soft tissue +40 under a fat layer -100), two lung fields (-850) of random size, shape and
position, a mediastinum/heart between them, a vertebra (+700) below, vessels (+40) and airways
(-950) as small random blobs inside the lungs, and 0-3 nodules (+30) whose count is the label.
It is then "scanned" with scikit-image: ``radon`` (parallel-beam line integrals of the linear
attenuation), Poisson photon noise on the transmitted intensity (Beer-Lambert, ``photons`` per
ray), ``iradon`` (filtered back-projection, ramp filter), and shown in a lung window
(centre -600 HU, width 1500 HU) mapped to [-1, 1].

Deterministic: image ``i`` of a split comes from its own ``numpy`` generator seeded with
``(seed, split, i)``, so the first k images do not depend on ``n``.  The set is generated once and
cached as a ``.pt`` file under ``root/synthetic-lung-ct/`` (or ``~/.cache/lthdiff`` when ``root``
is not writable), written atomically.

FID on this set: no CT feature extractor ships with lthdiff.  ``feature_extractor="auto"`` uses
Inception-v3 when its weights are reachable and otherwise the digits classifier ``lthdiff-digits``
(grayscale, but never trained on CT): offline scores rank networks of one run, nothing more.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["NAME", "generate", "phantom", "scan", "load", "HU_WINDOW"]

NAME = "synthetic-lung-ct"
HU_WINDOW = (-600.0, 1500.0)  # lung window: centre, width (HU)
_VERSION = 1  # bump when the generator changes, so stale caches are not reused
_SPLITS = {"train": 0, "test": 1}
_DEFAULT_N = {"train": 1024, "test": 256}
_MU_WATER = 0.019  # linear attenuation of water at ~70 keV, 1/mm
_FOV_MM = 360.0  # field of view of the slice


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float,
             angle: float = 0.0, wobble: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of a (rotated, optionally boundary-perturbed) ellipse on the grid yy, xx in [-1, 1]."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = (dx * c + dy * s) / rx, (-dx * s + dy * c) / ry
    r = np.sqrt(u * u + v * v)
    if wobble is not None:  # low-frequency radial perturbation: r_boundary(theta) = 1 + sum a_k cos(k theta + p_k)
        theta = np.arctan2(v, u)
        k = np.arange(2, 2 + len(wobble) // 2)
        amp, phase = wobble[: len(k)], wobble[len(k):]
        r = r / (1 + (amp[:, None, None] * np.cos(k[:, None, None] * theta + phase[:, None, None])).sum(0))
    return r <= 1


def phantom(size: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One axial chest phantom (size, size) in HU and its nodule count (0-3)."""
    ax = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    img = np.full((size, size), -1000.0)
    bw, bh = rng.uniform(0.78, 0.9), rng.uniform(0.55, 0.68)  # body half-axes (wide, flatter front-back)
    cy = rng.uniform(-0.04, 0.04)
    img[_ellipse(yy, xx, cy, 0, bh, bw)] = -100.0  # subcutaneous fat
    img[_ellipse(yy, xx, cy, 0, bh - 0.06, bw - 0.07)] = 40.0  # muscle / soft tissue
    nodules = int(rng.integers(0, 4))
    lungs = np.zeros_like(img, dtype=bool)
    for side in (-1, 1):
        lw, lh = rng.uniform(0.22, 0.32), rng.uniform(0.36, 0.5)
        lx = side * rng.uniform(0.33, 0.45)
        ly = cy + rng.uniform(-0.08, 0.04)
        wob = np.concatenate([rng.uniform(-0.08, 0.08, 3), rng.uniform(0, 2 * np.pi, 3)])
        lungs |= _ellipse(yy, xx, ly, lx, lh, lw, angle=side * rng.uniform(0.0, 0.25), wobble=wob)
    lungs &= _ellipse(yy, xx, cy, 0, bh - 0.1, bw - 0.11)  # lungs stay inside the chest wall
    img[lungs] = rng.uniform(-870.0, -830.0)  # lung parenchyma density varies with inspiration
    inside = np.argwhere(lungs)

    def blobs(count: int, radius: tuple[float, float], hu: float) -> None:
        for _ in range(count):
            if len(inside) == 0:
                return
            py, px = inside[rng.integers(len(inside))]
            r = rng.uniform(*radius)
            img[((yy - ax[py]) ** 2 + (xx - ax[px]) ** 2 <= r * r) & lungs] = hu

    blobs(int(rng.integers(6, 14)), (0.012, 0.03), 40.0)  # vessels in cross-section
    blobs(int(rng.integers(2, 5)), (0.015, 0.03), -950.0)  # airways
    blobs(nodules, (0.035, 0.06), 30.0)  # nodules: the label
    img[_ellipse(yy, xx, cy + bh - 0.2, 0, 0.1, 0.09)] = 700.0  # vertebral body
    img[_ellipse(yy, xx, cy + bh - 0.2, 0, 0.06, 0.05)] = 250.0  # its marrow
    img[_ellipse(yy, xx, cy - 0.05, rng.uniform(-0.05, 0.05), 0.07, 0.06)] = 45.0  # aorta / mediastinum
    return img, nodules


def scan(hu: np.ndarray, rng: np.random.Generator, *, photons: float = 3e4, angles: int | None = None) -> np.ndarray:
    """Simulated CT acquisition of a HU image: radon -> Poisson noise -> filtered back-projection; HU out.

    ``photons``: incident photons per ray (fewer = noisier); ``angles``: projections over 180 degrees
    (default ``size * pi / 2``, rounded, the usual sampling condition).
    """
    from skimage.transform import iradon, radon

    size = hu.shape[0]
    pixel_mm = _FOV_MM / size
    mu = np.clip(_MU_WATER * (1 + hu / 1000.0), 0, None) * pixel_mm  # attenuation per pixel
    theta = np.linspace(0.0, 180.0, angles or int(round(size * np.pi / 2)), endpoint=False)
    sino = radon(mu, theta=theta, circle=False)
    counts = rng.poisson(photons * np.exp(-sino))
    sino_noisy = -np.log(np.maximum(counts, 1) / photons)
    rec = iradon(sino_noisy, theta=theta, filter_name="ramp", circle=False, output_size=size)
    return (rec / pixel_mm / _MU_WATER - 1) * 1000.0


def _window(hu: np.ndarray) -> np.ndarray:
    centre, width = HU_WINDOW
    return np.clip((hu - centre) / (width / 2), -1, 1)


def generate(n: int, image_size: int = 32, *, seed: int = 0, split: str = "train",
             photons: float = 3e4) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` slices as float images (n, 1, image_size, image_size) in [-1, 1] (lung window) and their
    nodule counts (n,), deterministically from ``seed`` and ``split``."""
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(_SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an int >= 16 for {NAME}, got {image_size!r}")
    images = np.empty((n, 1, image_size, image_size), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, _SPLITS[split], i])
        hu, labels[i] = phantom(image_size, rng)
        images[i, 0] = _window(scan(hu, rng, photons=photons))
    return torch.from_numpy(images), torch.from_numpy(labels)


def _cache_file(root: Path, split: str, image_size: int, n: int, seed: int) -> Path:
    return root / NAME / f"{split}_{image_size}px_n{n}_seed{seed}_v{_VERSION}.pt"


def _writable(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


def load(image_size: int = 32, split: str = "train", root: str | os.PathLike = "data", *, n: int | None = None,
         seed: int = 0):
    """The cached SyntheticLungCT split as ``(images (n, 1, S, S) in [-1, 1], labels = nodule count)``;
    :func:`lthdiff.data.load_dataset` wraps them as a dataset.

    ``n`` defaults to 1024 (train) / 256 (test).  Generated on first use (about 10 ms per 32 px slice)
    and cached under ``root/synthetic-lung-ct/``, or ``~/.cache/lthdiff`` when ``root`` is read-only.
    """
    from lthdiff.store.io import atomic_path

    n = _DEFAULT_N.get(split, 0) if n is None else n
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(_SPLITS)}")
    root = Path(root)
    if not _writable(root):
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lthdiff"
    path = _cache_file(root, split, image_size, n, seed)
    if path.exists():
        blob = torch.load(path, weights_only=True)
        x, y = blob["images"], blob["labels"]
    else:
        t0 = time.perf_counter()
        x, y = generate(n, image_size, seed=seed, split=split)
        with atomic_path(path) as tmp:
            torch.save({"images": x, "labels": y, "seconds": time.perf_counter() - t0}, tmp)
    return x, y
