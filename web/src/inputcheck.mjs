// The input check of the grader page: koa_core/data/inputcheck.py in JavaScript, reading
// from grader.json the checkpoint's fitted profile (its sidecar's `input_profile`) and the
// measures' geometry (`input_check`: the crop side, the thumbnail side, the tile grid and
// the CLAHE twin, the Python module's SIZE, THUMB, GRID, TWIN_CLIP and TWIN_TILES). An image
// is judged as read, before the input transform, on the paper's square crop at that side.
import { clahe, crop, cropBox, laplacian, resizeArea, resizeSquare } from './imageops.mjs';

function meanStd(values) {
  let s = 0;
  for (const v of values) s += v;
  const mean = s / values.length;
  let q = 0;
  for (const v of values) q += (v - mean) * (v - mean);
  return [mean, Math.sqrt(q / values.length)];
}

function tileStats(x, grid) {
  const n = x.width / grid, stds = [], means = [];
  for (let ty = 0; ty < grid; ty++) {
    for (let tx = 0; tx < grid; tx++) {
      const vals = [];
      for (let y = ty * n; y < (ty + 1) * n; y++) {
        for (let x0 = tx * n; x0 < (tx + 1) * n; x0++) vals.push(x.data[y * x.width + x0]);
      }
      const [m, s] = meanStd(vals);
      means.push(m);
      stds.push(s);
    }
  }
  return [meanStd(stds)[0], meanStd(means)[1]];
}

/** The six features of inputcheck._features (logs), on a crop from measureCrop. */
export function features(x, geometry) {
  const [tileStd, tileMeanSpread] = tileStats(x, geometry.grid);
  const lap = laplacian(x).reduce((a, v) => a + Math.abs(v), 0) / x.data.length;
  const twin = clahe(x, geometry.twin_clip, geometry.twin_tiles).data;
  let change = 0;
  const hist = new Float64Array(256);
  for (let i = 0; i < x.data.length; i++) {
    change += Math.abs(twin[i] - x.data[i]);
    hist[x.data[i]]++;
  }
  let entropy = 0;
  for (const c of hist) if (c > 0) entropy -= (c / x.data.length) * Math.log2(c / x.data.length);
  const raw = [tileStd, tileMeanSpread, lap, change / x.data.length, entropy,
    meanStd(x.data)[1]];
  return raw.map((v) => Math.log(Math.max(v, 1e-3)));
}

function thumb(x, side) {
  const t = Array.from(resizeArea(x, side, side).data);
  const [m, s] = meanStd(t);
  return t.map((v) => (v - m) / (s + 1e-6));
}

function corr(t, template) {
  let s = 0;
  for (let i = 0; i < t.length; i++) s += t[i] * template[i];
  return s / t.length;
}

/** The square crop every measure is taken on (inputcheck._crop224), geometry.size a side. */
export function measureCrop(img, geometry) {
  return resizeSquare(crop(img, cropBox(img)), geometry.size);
}

/** The logistic "CLAHE-enhanced already" score of a crop. */
export function enhancedScore(x, profile, geometry) {
  const e = profile.enhanced;
  const z = features(x, geometry).map((v, i) => (v - e.mean[i]) / e.scale[i]);
  return z.reduce((acc, v, i) => acc + v * e.coef[i], e.intercept);
}

/** The input check's flags (inputcheck.InputCheck.flags) of one decoded grey image, with
 * grader.json's `input_profile` and `input_check` (the geometry). */
export function inputFlags(img, profile, geometry) {
  const out = [];
  const { width: w, height: h } = img;
  const [lo, hi] = profile.aspect;
  const k = profile.knee;
  const x = measureCrop(img, geometry);
  const t = thumb(x, geometry.thumb);
  const corrs = k.templates.map((tpl) => corr(t, tpl));
  const best = Math.max(...corrs);
  const squareEnough = lo / 1.25 <= w / h && w / h <= hi * 1.25;
  if (corrs.some((c, i) => -c >= k.typical_correlation[i])) out.push('inverted');
  else if (best < k.min_correlation || !squareEnough) out.push('not-a-knee-crop');
  const kneeLike = squareEnough && Math.max(...corrs.map(Math.abs)) >= k.min_correlation / 2;
  if (kneeLike && enhancedScore(x, profile, geometry) > profile.enhanced.threshold) {
    out.push('enhanced');
  }
  if (Math.min(h, w) < profile.min_side / 2) out.push('small');
  if (meanStd(x.data)[1] < profile.min_std / 2) out.push('low-contrast');
  return out;
}
