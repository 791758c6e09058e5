"""Synthetic knee phantom: AP knee radiographs with Kellgren-Lawrence-like labels.

The real KL dataset cannot ship with the project, so demos, tests and CI use this phantom:
a synthetic antero-posterior (AP) knee radiograph whose grade-dependent signs follow the
KL definitions (Kellgren & Lawrence, 1957):

* KL0 - no signs; wide joint space.
* KL1 - doubtful joint-space narrowing (JSN), possible tiny osteophytic lipping.
* KL2 - definite osteophytes, possible JSN.
* KL3 - moderate multiple osteophytes, definite JSN, some sclerosis, possible deformity.
* KL4 - large osteophytes, marked JSN (almost bone-on-bone), severe sclerosis and
  deformity of the bone ends.

Each sign's magnitude is drawn from a grade-dependent distribution that overlaps the
neighbouring grades, and nuisance factors (exposure, gamma, low contrast, noise, blur,
pose, left/right side) vary independently of the grade, so the task is learnable but not
trivial. Images are rendered as a left knee (medial compartment on the image left, fibula
on the right); a right knee is its mirror image.

:func:`write_phantom` writes the public layout ``OUT/{train,val,test}/{0..4}/NAME.png``,
split by patient 70/10/20. File names are a 7-digit patient id plus the side, e.g.
``1234567L.png``. The ids are drawn from 1000000-1999999 so they can never be mistaken
for real OAI ids (9000000-9999999).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from koa_core import paper
from koa_core.errors import KoaError

__all__ = ["SPLITS", "render_knee", "save_grid", "write_phantom"]

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)

# Per-grade (mean, sd) of the sign magnitudes. Adjacent grades overlap on purpose: real KL
# grading is ordinal with fuzzy borders, and a separable phantom would teach nothing.
_JSN_FRACTION = ((1.00, 0.09), (0.87, 0.10), (0.71, 0.11), (0.50, 0.12), (0.24, 0.10))
_OSTEOPHYTE = ((0.003, 0.002), (0.010, 0.005), (0.020, 0.007), (0.030, 0.009), (0.040, 0.011))
_N_OSTEOPHYTES = ((0, 1), (0, 2), (1, 3), (2, 4), (2, 4))  # inclusive range of spur sites
_SCLEROSIS = ((0.00, 0.02), (0.01, 0.02), (0.03, 0.03), (0.09, 0.04), (0.15, 0.05))
_DEFORMITY = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.05), (0.10, 0.15), (0.60, 0.25))
# Readers disagree by one grade on a fair share of real knees; mimic that by drawing the
# signs of some images from an adjacent grade, which keeps the phantom from being separable.
_READER_NOISE = 0.12


def _clipped_normal(rng: np.random.Generator, mean_sd: tuple[float, float],
                    lo: float, hi: float) -> float:
    return float(np.clip(rng.normal(*mean_sd), lo, hi))


def _ellipse_sdf(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float,
                 p_low: float = 2.0) -> np.ndarray:
    """Approximate signed distance in pixels, positive inside; ``p_low`` > 2 flattens the
    lower half into a superellipse (a worn, flattened condyle)."""
    dx = np.abs(x - np.float32(cx)) * np.float32(1.0 / rx)
    dy = (y - np.float32(cy)) * np.float32(1.0 / ry)
    r = np.sqrt(dx * dx + dy * dy)
    if p_low > 2.01:
        p = np.float32(p_low)
        low = dy > 0
        r[low] = (dx[low] ** p + dy[low] ** p) ** np.float32(1.0 / p_low)
    return (1.0 - r) * np.float32(min(rx, ry))


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    # Polynomial smooth minimum: rounds the corner where two SDFs intersect, as bone
    # outlines have no sharp corners.
    h = np.maximum(k - np.abs(a - b), 0.0) * (1.0 / k)
    return np.minimum(a, b) - (0.25 * k) * h * h


def _smooth_noise_1d(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    v = cv2.GaussianBlur(rng.standard_normal((1, n)).astype(np.float32), (0, 0), sigma)[0]
    return v / (v.std() + 1e-6)


def _sample_signs(grade: int, rng: np.random.Generator, s: float) -> dict:
    sign_grade = grade
    if rng.random() < _READER_NOISE:
        sign_grade = int(np.clip(grade + (1 if rng.random() < 0.5 else -1), 0, 4))
    jsw0 = 0.048 * s * float(rng.normal(1.0, 0.10))  # anatomical variation of the gap
    f_med = _clipped_normal(rng, _JSN_FRACTION[sign_grade], 0.04, 1.25)
    # Narrowing is usually medial-predominant in OA: the lateral side loses less.
    f_lat = 1.0 - (1.0 - f_med) * float(rng.uniform(0.15, 0.75))
    n_lo, n_hi = _N_OSTEOPHYTES[sign_grade]
    n_osteo = int(rng.integers(n_lo, n_hi + 1))
    osteo = _clipped_normal(rng, _OSTEOPHYTE[sign_grade], 0.0, 0.08) * s
    return {
        "sign_grade": sign_grade,
        "jsw_medial": jsw0 * f_med,
        "jsw_lateral": jsw0 * f_lat,
        "osteophyte": osteo if n_osteo else 0.0,
        "n_osteophytes": n_osteo,
        "sclerosis": _clipped_normal(rng, _SCLEROSIS[sign_grade], 0.0, 0.35),
        "deformity": _clipped_normal(rng, _DEFORMITY[sign_grade], 0.0, 1.0),
    }


@dataclass
class _Frame:
    """One knee's canonical coordinates (joint line at y=0, medial at x<0) on the output grid,
    and the sampled signs; what every drawing stage of :func:`render_knee` shares."""

    s: float  # image side in pixels
    px: float  # one pixel of the 224-pixel reference knee
    size: int
    sg: dict  # the sampled signs of the grade (_sample_signs)
    x: np.ndarray
    y: np.ndarray
    ax: np.ndarray  # |x|
    cols: np.ndarray  # the output column of each canonical x (for 1-D noise profiles)
    lat_w: np.ndarray  # smooth medial -> lateral blend
    angle: float
    scale: float


def render_knee(grade: int, rng: np.random.Generator, size: int = 224, *,
                side: str | None = None, params_out: dict | None = None) -> np.ndarray:
    """One 8-bit grayscale (size x size, uint8) AP knee radiograph of KL grade 0..4.

    ``side`` is "L" or "R" (None: drawn at random; "R" is the mirror image of "L").
    If ``params_out`` is a dict it is filled with the sampled sign magnitudes (joint-space
    widths and osteophyte size in output pixels) and nuisance parameters. The stages below
    draw from ``rng`` in a fixed order, so a seed gives the same knee.
    """
    if grade not in (0, 1, 2, 3, 4):
        raise ValueError(f"grade must be 0..4, got {grade!r}")
    if side is None:
        side = "L" if rng.random() < 0.5 else "R"
    if side not in ("L", "R"):
        raise ValueError(f"side must be 'L' or 'R', got {side!r}")
    f = _pose(rng, size, _sample_signs(grade, rng, float(size)))
    d_fem, d_tib, bones = _femur_and_tibia(f, rng)
    _osteophytes(f, rng, bones, d_fem, d_tib)
    dens = _density(f, rng, d_fem, d_tib)
    img, film = _film(f, rng, dens)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if side == "R":
        # Flip last so that R is the exact mirror of the L knee drawn from the same state.
        out = np.ascontiguousarray(out[:, ::-1])
    if params_out is not None:
        params_out.update(f.sg)
        for key in ("jsw_medial", "jsw_lateral", "osteophyte"):
            params_out[key] = float(params_out[key] * f.scale)
        params_out.update(grade=grade, side=side, angle_deg=float(np.rad2deg(f.angle)),
                          scale=f.scale, **film)
    return out


def _pose(rng: np.random.Generator, size: int, sg: dict) -> _Frame:
    """Pose: sampling the inverse transform on the grid avoids warp borders and resampling."""
    s = float(size)
    angle = float(np.deg2rad(rng.uniform(-6.0, 6.0)))
    scale = float(rng.uniform(0.92, 1.08))
    sx0, sy0 = (float(v) * s for v in rng.uniform(-0.04, 0.04, 2))
    lift = float(rng.normal(0.0, 0.03)) * s  # joint line height varies between crops
    ca, sa = float(np.cos(angle)) / scale, float(np.sin(angle)) / scale
    grid = np.arange(size, dtype=np.float32) - s / 2
    xc, yc = grid[None, :] - sx0, grid[:, None] - sy0
    x = ca * xc + sa * yc  # canonical coordinates: joint line at y=0, medial at x<0
    y = -sa * xc + ca * yc + lift
    cols = np.clip(np.rint(x + s / 2), 0, size - 1).astype(np.intp)
    lat_w = 1.0 / (1.0 + np.exp(x * (-1.0 / (0.02 * s))))
    return _Frame(s, s / 224.0, size, sg, x, y, np.abs(x), cols, lat_w, angle, scale)


def _femur_and_tibia(f: _Frame, rng: np.random.Generator):
    """Signed distances (inside > 0) of the femur (two condyles plus a flaring metaphysis)
    and the tibia (plateau with spines and rounded margins on a narrowing shaft), and the
    condyles' size for the osteophytes."""
    s, px, x, y, ax = f.s, f.px, f.x, f.y, f.ax
    g_med, g_lat = f.sg["jsw_medial"], f.sg["jsw_lateral"]
    deform = f.sg["deformity"]
    irregular = deform * 0.014 * s
    rx = 0.145 * s * float(rng.normal(1.0, 0.04))
    ry = 0.105 * s * float(rng.normal(1.0, 0.05))
    off = 0.13 * s
    p_low = 2.0 + 2.5 * deform
    d_fem = np.maximum(_ellipse_sdf(x, y, -off, -g_med / 2 - ry, rx, ry, p_low),
                       _ellipse_sdf(x, y, off, -g_lat / 2 - ry, rx, ry, p_low))
    if irregular > 0:
        d_fem += irregular * _smooth_noise_1d(rng, f.size, 4 * px)[f.cols] * (y > -0.12 * s)
    hw_f = 0.2 * s + 0.075 * s * np.clip((y + 0.45 * s) * (1 / (0.33 * s)), 0, 1) ** 2
    shaft = _smooth_min(hw_f - ax, -0.13 * s - y, 0.03 * s)
    d_fem = -_smooth_min(-d_fem, -shaft, 0.04 * s)

    gap = g_med + (g_lat - g_med) * f.lat_w
    top = gap * 0.5 + (10.0 / s) * np.maximum(ax - 0.23 * s, 0) ** 2
    top -= 0.028 * s * (np.exp(-((x + 0.028 * s) * (1 / (0.014 * s))) ** 2)
                        + np.exp(-((x - 0.03 * s) * (1 / (0.014 * s))) ** 2))
    if irregular > 0:
        top += irregular * _smooth_noise_1d(rng, f.size, 4 * px)[f.cols]
    hw_t = 0.175 * s + 0.115 * s * np.exp(-(np.maximum(y - 0.03 * s, 0) * (1 / (0.15 * s))) ** 2)
    d_tib = _smooth_min(y - top, hw_t - ax, 0.025 * s)
    return d_fem, d_tib, (rx, ry, off)


def _osteophytes(f: _Frame, rng: np.random.Generator, bones, d_fem: np.ndarray,
                 d_tib: np.ndarray) -> None:
    """Marginal osteophytes: bright beaks at the joint margins, pointing outwards (drawn
    into ``d_fem`` and ``d_tib`` in place)."""
    s, px, x, y = f.s, f.px, f.x, f.y
    rx, ry, off = bones
    g_med, g_lat = f.sg["jsw_medial"], f.sg["jsw_lateral"]
    sites = [(-1, -1), (1, -1), (-1, 1), (1, 1)]  # (medial/lateral, femur/tibia)
    for k in rng.permutation(4)[: f.sg["n_osteophytes"]]:
        side_x, bone = sites[k]
        g_here = g_med if side_x < 0 else g_lat
        length = f.sg["osteophyte"] * float(rng.uniform(0.7, 1.3)) * (1.15 if side_x < 0
                                                                       else 0.9)
        if length < 0.5 * px:
            continue
        if bone < 0:
            bx, by = side_x * (off + rx * 0.95), -g_here / 2 - 0.3 * ry
        else:
            bx, by = side_x * 0.285 * s, g_here / 2 + 0.03 * s
        tilt = 0.45 * bone  # femoral spurs point down-out, tibial ones up-out
        ux, uy = side_x * float(np.cos(tilt)), -float(np.sin(tilt))
        cxo, cyo = bx + ux * length * 0.4, by + uy * length * 0.4
        along = (x - cxo) * ux + (y - cyo) * uy
        across = (y - cyo) * ux - (x - cxo) * uy
        # Wide at the base, tapering to a tip: a beak rather than an ellipse.
        half_w = np.maximum(length * 0.45 * (1.0 - along * (1 / length)), 0.8 * px)
        d_sp = np.minimum(length - np.abs(along), half_w - np.abs(across))
        target = d_fem if bone < 0 else d_tib
        np.maximum(target, d_sp, out=target)


def _texture(f: _Frame, rng: np.random.Generator) -> np.ndarray:
    """Trabecular texture: band-passed noise plus vertical streaks (trabeculae follow load
    lines); drawn at half resolution since it is blurred anyway."""
    size, px = f.size, f.px
    half = (size + 1) // 2
    noise = rng.standard_normal((2, half, half), dtype=np.float32)
    tex = noise[0] - cv2.GaussianBlur(noise[0], (0, 0), 1.5 * px)
    tex = 0.7 * tex / (tex.std() + 1e-6)
    streak = cv2.GaussianBlur(noise[1], (0, 0), sigmaX=0.4 * px, sigmaY=1.8 * px)
    tex += 0.6 * streak / (streak.std() + 1e-6)
    return cv2.resize(tex, (size, size), interpolation=cv2.INTER_LINEAR)


def _density(f: _Frame, rng: np.random.Generator, d_fem: np.ndarray,
             d_tib: np.ndarray) -> np.ndarray:
    """X-ray attenuation: soft tissue, femur, tibia, fibula, patella, physeal scars and
    subchondral sclerosis."""
    s, px, x, y, ax = f.s, f.px, f.x, f.y, f.ax
    # Fibula: head tucked under the lateral plateau, overlapping the tibia, and its neck.
    fx, fy = 0.27 * s, 0.15 * s
    d_fib = np.maximum(_ellipse_sdf(x, y, fx, fy, 0.062 * s, 0.072 * s),
                       np.minimum(0.032 * s - np.abs(x - fx - 0.005 * s + 0.03 * (y - fy)),
                                  y - fy))
    tex = _texture(f, rng)
    # The cortex is thin at the joint and thickens towards the shafts.
    inv_cortex = -1.0 / (2.2 * px + (0.03 * s) * np.minimum(np.abs(y) * (1 / (0.5 * s)), 1))

    def bone_density(d: np.ndarray, rho: float, rim: float) -> np.ndarray:
        m = np.clip(d + 0.5, 0.0, 1.0)
        cortex = np.exp(np.maximum(d, 0.0) * inv_cortex)
        return m * (rho + 0.09 * tex + rim * cortex)

    # Soft tissue: the leg is thickest in the middle, so it transmits least there.
    soft = (0.24 + 0.12 * np.exp(-(x * (1 / (0.42 * s))) ** 2) + (0.05 / s) * y
            + 0.02 * _smooth_noise_1d(rng, f.size, 20 * px)[None, :])
    # Femur and tibia only meet at bone-on-bone contact, where a union is right anyway.
    dens = soft + bone_density(np.maximum(d_fem, d_tib), 0.46, 0.24)
    dens += bone_density(d_fib, 0.30, 0.18)
    # Patella seen through the femur, and faint physeal scars.
    patella = _ellipse_sdf(x, y, 0.02 * s, -0.15 * s, 0.12 * s, 0.14 * s)
    dens += 0.07 * np.clip(patella * (1 / (6 * px)), 0, 1)
    scar = np.exp(-((y + 0.27 * s - 0.05 * x) * (1 / (1.2 * px))) ** 2) * (d_fem > 3 * px)
    scar += np.exp(-((y - 0.17 * s) * (1 / (1.2 * px))) ** 2) * (d_tib > 3 * px)
    dens += 0.05 * scar
    # Subchondral sclerosis: a dense band under both joint surfaces, mostly medial.
    if f.sg["sclerosis"] > 0.005:
        near = np.exp(-(y * (1 / (0.09 * s))) ** 2) * (ax < 0.28 * s) * (1.15 - 0.6 * f.lat_w)
        band = (np.exp(np.maximum(d_fem, 0) * (-1 / (0.035 * s))) * (d_fem > 0)
                + np.exp(np.maximum(d_tib, 0) * (-1 / (0.035 * s))) * (d_tib > 0))
        dens += f.sg["sclerosis"] * near * band
    return dens


def _film(f: _Frame, rng: np.random.Generator, dens: np.ndarray) -> tuple[np.ndarray, dict]:
    """Film response and exposure, then detector blur and noise; and what was drawn."""
    img = (1.0 - np.exp(-1.2 * dens) - 0.2) * (1 / 0.65)
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    low_contrast = bool(rng.random() < 0.3)
    width = float(rng.uniform(0.28, 0.5) if low_contrast else rng.uniform(0.75, 0.95))
    lo = float(rng.uniform(0.02, 0.98 - width))
    img = lo + width * np.exp(gamma * np.log(np.clip(img, 1e-4, 1.0)))  # faster than **
    blur = float(rng.uniform(0.0, 1.1)) * f.px
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    noise_sd = float(rng.uniform(0.004, 0.025))
    img += noise_sd * rng.standard_normal(img.shape, dtype=np.float32)
    return img, {"gamma": gamma, "low_contrast": low_contrast, "contrast": width,
                 "blur": blur, "noise": noise_sd}


def _grade_counts(per_class: int, proportions: str) -> list[int]:
    if proportions == "balanced":
        return [per_class] * 5
    if proportions != "paper":
        raise KoaError(f"unknown phantom proportions {proportions!r} (use 'balanced' or 'paper')")
    total = 5 * per_class
    raw = np.array(paper.PROPORTIONS) * total  # the paper's class shares (§2.1)
    counts = np.floor(raw).astype(int)
    # Largest remainder keeps the total exact.
    for k in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[k] += 1
    # At least 3 per grade so each of the three splits can hold one of every grade.
    for k in range(5):
        while counts[k] < 3:
            counts[k] += 1
            big = int(np.argmax(counts))
            if counts[big] > 3 and counts.sum() > total:
                counts[big] -= 1
    return [int(c) for c in counts]


def _split_counts(n: int) -> list[int]:
    """Knees of one grade per split: 70/10/20, at least one each when n >= 3."""
    val, test = round(SPLIT_FRACTIONS[1] * n), round(SPLIT_FRACTIONS[2] * n)
    if n >= 3:
        val, test = max(val, 1), max(test, 1)
    return [n - val - test, val, test]


def _pair_knees(grades: list[int], rng: np.random.Generator) -> list[list[int]]:
    """Group knees into patients: mostly pairs with the same or an adjacent grade."""
    left = np.bincount(np.asarray(grades, dtype=int), minlength=5)
    patients = []
    affinity = np.array([6.0, 3.0, 0.6, 0.15, 0.05])  # by grade distance
    while left.sum():
        g = int(rng.choice(5, p=left / left.sum()))
        left[g] -= 1
        knees = [g]
        if left.sum() and rng.random() < 0.85:
            w = left * affinity[np.abs(np.arange(5) - g)]
            h = int(rng.choice(5, p=w / w.sum()))
            left[h] -= 1
            knees.append(h)
        patients.append(knees)
    return patients


def write_phantom(out: str | Path, per_class: int, seed: int, size: int = 224,
                  proportions: str = "balanced") -> dict:
    """Write PNGs in the public layout OUT/{train,val,test}/{0..4}/NAME.png; return a summary
    dict {"counts": {split: {grade: n}}, "patients": int, "images": int}.

    "balanced": ``per_class`` images per grade; "paper": the paper's KL proportions scaled
    to ``5 * per_class`` images (at least 3 per grade). Splits are by patient (both knees of
    a patient in one split), 70/10/20 within every grade. Same seed, same bytes.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KoaError(f"phantom output {out} exists and is not empty; choose a new folder")
    if per_class < 1:
        raise KoaError(f"phantom per_class must be >= 1, got {per_class}")
    counts = _grade_counts(per_class, proportions)
    rng = np.random.default_rng(seed)

    # Split knees per grade first, then form patients inside each split: this makes the
    # patient split and the per-split grade coverage hold by construction.
    per_split = [_split_counts(n) for n in counts]
    split_patients = {}
    for si, split in enumerate(SPLITS):
        grades = [g for g in range(5) for _ in range(per_split[g][si])]
        split_patients[split] = _pair_knees(grades, rng)
    n_patients = sum(len(p) for p in split_patients.values())
    ids = 1_000_000 + rng.choice(1_000_000, size=n_patients, replace=False)

    summary = {split: {g: 0 for g in range(5)} for split in SPLITS}
    i = 0
    for split in SPLITS:
        for g in range(5):
            (out / split / str(g)).mkdir(parents=True, exist_ok=True)
        for knees in split_patients[split]:
            pid = int(ids[i])
            i += 1
            sides = ["L", "R"] if rng.random() < 0.5 else ["R", "L"]
            for g, side in zip(knees, sides):
                # A per-file generator: a knee's pixels depend only on (seed, id, side).
                img_rng = np.random.default_rng([seed, pid, side == "R"])
                img = render_knee(g, img_rng, size, side=side)
                path = out / split / str(g) / f"{pid}{side}.png"
                if not cv2.imwrite(str(path), img):
                    raise KoaError(f"could not write {path}")
                summary[split][g] += 1
    return {"counts": summary, "patients": n_patients, "images": sum(counts)}


def save_grid(path: str | Path, seed: int = 0, per_grade: int = 4, size: int = 224) -> None:
    """A picture grid: one row per grade (labelled KL0..KL4), per_grade samples each, saved as
    PNG (matplotlib, Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(1.6 * per_grade + 0.5, 1.6 * 5), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(5, per_grade, squeeze=False)
    for g in range(5):
        for j in range(per_grade):
            ax = axes[g][j]
            ax.imshow(render_knee(g, rng, size), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[g][0].set_ylabel(f"KL{g}", fontsize=12)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.99, bottom=0.01, wspace=0.04, hspace=0.04)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
