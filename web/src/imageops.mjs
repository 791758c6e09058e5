// Image operations of the grader page, ported from the Python preprocessing so that the
// browser sees the pixels the model was trained on (koa_core/data/preprocess.py,
// koa_core/data/raster.py). Images are {data: Uint8Array, width, height}, 8-bit grey.
//
// Each function follows OpenCV's own algorithm: the colour-to-grey weights (BT.601 in 14-bit
// fixed point), CLAHE (per-tile clipped histograms, residual redistribution, bilinear
// interpolation of the tile lookup tables, in float32 like OpenCV), INTER_AREA when shrinking
// and the fixed-point INTER_LINEAR when enlarging. The grader's tests compare every step with
// cv2 on the book's sample knees.

const f32 = Math.fround;

/** Round half to even, as OpenCV's cvRound and Python's round do. */
export function roundEven(v) {
  const r = Math.round(v);
  return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

function sat8(v) {
  return v < 0 ? 0 : (v > 255 ? 255 : v);
}

export function makeImage(width, height, data) {
  return { width, height, data: data || new Uint8Array(width * height) };
}

/** RGBA bytes (a canvas's ImageData) to grey: OpenCV's BGR2GRAY for 8-bit, alpha dropped. */
export function rgbaToGrey(rgba, width, height) {
  const out = new Uint8Array(width * height);
  for (let i = 0, j = 0; i < out.length; i++, j += 4) {
    out[i] = (rgba[j] * 4899 + rgba[j + 1] * 9617 + rgba[j + 2] * 1868 + 8192) >> 14;
  }
  return makeImage(width, height, out);
}

function reflect101(i, n) {
  if (n === 1) return 0;
  while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
  return i;
}

function tileLuts(img, tiles, clip) {
  let { width: w, height: h } = img;
  const ext = !(w % tiles === 0 && h % tiles === 0);
  const W = ext ? w + tiles - (w % tiles) : w;
  const H = ext ? h + tiles - (h % tiles) : h;
  const tw = W / tiles, th = H / tiles, area = tw * th;
  const lutScale = f32(255 / area);
  const limit = clip > 0 ? Math.max(Math.trunc(clip * area / 256), 1) : 0;
  const luts = new Uint8Array(tiles * tiles * 256);
  const hist = new Int32Array(256);
  for (let ty = 0; ty < tiles; ty++) {
    for (let tx = 0; tx < tiles; tx++) {
      hist.fill(0);
      for (let y = ty * th; y < (ty + 1) * th; y++) {
        const row = reflect101(y, h) * w;
        for (let x = tx * tw; x < (tx + 1) * tw; x++) hist[img.data[row + reflect101(x, w)]]++;
      }
      if (limit > 0) clipHistogram(hist, limit);
      const base = (ty * tiles + tx) * 256;
      let sum = 0;
      for (let i = 0; i < 256; i++) {
        sum += hist[i];
        luts[base + i] = sat8(roundEven(f32(sum * lutScale)));
      }
    }
  }
  return { luts, tw, th };
}

function clipHistogram(hist, limit) {
  let clipped = 0;
  for (let i = 0; i < 256; i++) {
    if (hist[i] > limit) { clipped += hist[i] - limit; hist[i] = limit; }
  }
  const batch = Math.trunc(clipped / 256);
  let residual = clipped - batch * 256;
  for (let i = 0; i < 256; i++) hist[i] += batch;
  if (residual !== 0) {
    const step = Math.max(Math.trunc(256 / residual), 1);
    for (let i = 0; i < 256 && residual > 0; i += step, residual--) hist[i]++;
  }
}

/** OpenCV's CLAHE (cv2.createCLAHE(clip, (tiles, tiles)).apply) on an 8-bit grey image. */
export function clahe(img, clip, tiles) {
  const { width: w, height: h } = img;
  const { luts, tw, th } = tileLuts(img, tiles, clip);
  const invTw = f32(1 / tw), invTh = f32(1 / th);
  const ind1 = new Int32Array(w), ind2 = new Int32Array(w);
  const xa = new Float32Array(w), xa1 = new Float32Array(w);
  for (let x = 0; x < w; x++) {
    const txf = f32(f32(x * invTw) - 0.5);
    const tx1 = Math.floor(txf);
    xa[x] = f32(txf - tx1);
    xa1[x] = f32(1 - xa[x]);
    ind1[x] = Math.max(tx1, 0) * 256;
    ind2[x] = Math.min(tx1 + 1, tiles - 1) * 256;
  }
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    const tyf = f32(f32(y * invTh) - 0.5);
    const ty1 = Math.floor(tyf);
    const ya = f32(tyf - ty1), ya1 = f32(1 - ya);
    const p1 = Math.max(ty1, 0) * tiles * 256, p2 = Math.min(ty1 + 1, tiles - 1) * tiles * 256;
    for (let x = 0; x < w; x++) {
      const v = img.data[y * w + x];
      const a = f32(f32(luts[p1 + ind1[x] + v] * xa1[x]) + f32(luts[p1 + ind2[x] + v] * xa[x]));
      const b = f32(f32(luts[p2 + ind1[x] + v] * xa1[x]) + f32(luts[p2 + ind2[x] + v] * xa[x]));
      out[y * w + x] = sat8(roundEven(f32(f32(a * ya1) + f32(b * ya))));
    }
  }
  return makeImage(w, h, out);
}

function trimBox(img) {
  const { width: w, height: h, data } = img;
  let peak = 0;
  for (let i = 0; i < data.length; i++) if (data[i] > peak) peak = data[i];
  if (peak === 0) return [0, 0, h, w];
  const thresh = 0.02 * peak;
  const rows = new Float64Array(h), cols = new Float64Array(w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) { rows[y] += data[y * w + x]; cols[x] += data[y * w + x]; }
  }
  const keptRows = [...rows.keys()].filter((y) => rows[y] / w > thresh);
  const keptCols = [...cols.keys()].filter((x) => cols[x] / h > thresh);
  if (!keptRows.length || !keptCols.length) return [0, 0, h, w];
  const top = keptRows[0], left = keptCols[0];
  return [top, left, keptRows.at(-1) + 1 - top, keptCols.at(-1) + 1 - left];
}

/** (top, left, height, width) of the paper's square crop (preprocess.crop_box). */
export function cropBox(img) {
  const [top, left, h, w] = trimBox(img);
  if (h === w) return [top, left, h, w];
  const side = Math.min(h, w), W = img.width;
  const along = new Float64Array(Math.max(h, w));
  let total = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = img.data[(top + y) * W + left + x];
      along[h > w ? y : x] += v;
      total += v;
    }
  }
  const n = Math.max(h, w);
  let centre = n / 2;
  if (total) centre = along.reduce((acc, v, i) => acc + v * i, 0) / total;
  const start = Math.min(Math.max(roundEven(centre - side / 2), 0), n - side);
  return h > w ? [top + start, left, side, side] : [top, left + start, side, side];
}

export function crop(img, box) {
  const [top, left, h, w] = box;
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    out.set(img.data.subarray((top + y) * img.width + left, (top + y) * img.width + left + w),
      y * w);
  }
  return makeImage(w, h, out);
}

function areaTable(ssize, dsize) {
  // OpenCV's computeResizeAreaTab: each destination cell's source pixels and weights.
  const scale = ssize / dsize, tab = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale, fsx2 = fsx1 + scale;
    const cell = Math.min(scale, ssize - fsx1);
    let sx2 = Math.min(Math.floor(fsx2), ssize - 1);
    const sx1 = Math.min(Math.ceil(fsx1), sx2);
    const entries = [];
    if (sx1 - fsx1 > 1e-3) entries.push([sx1 - 1, (sx1 - fsx1) / cell]);
    for (let sx = sx1; sx < sx2; sx++) entries.push([sx, 1 / cell]);
    if (fsx2 - sx2 > 1e-3) entries.push([sx2, Math.min(Math.min(fsx2 - sx2, 1), cell) / cell]);
    tab.push(entries);
  }
  return tab;
}

/** cv2.resize(..., INTER_AREA) when shrinking: the area-weighted mean of each cell. */
export function resizeArea(img, dw, dh) {
  const xt = areaTable(img.width, dw), yt = areaTable(img.height, dh);
  const out = new Uint8Array(dw * dh), W = img.width;
  const fast = img.width % dw === 0 && img.height % dh === 0;
  const half = img.width === 2 * dw && img.height === 2 * dh; // OpenCV's (sum + 2) >> 2
  const inv = f32(1 / ((img.width / dw) * (img.height / dh)));
  for (let dy = 0; dy < dh; dy++) {
    for (let dx = 0; dx < dw; dx++) {
      let s = 0;
      for (const [sy, wy] of yt[dy]) {
        let r = 0;
        for (const [sx, wx] of xt[dx]) r += (fast ? 1 : wx) * img.data[sy * W + sx];
        s += (fast ? 1 : wy) * r;
      }
      out[dy * dw + dx] = sat8(half ? (s + 2) >> 2 : roundEven(fast ? f32(s * inv) : s));
    }
  }
  return makeImage(dw, dh, out);
}

function linearTable(ssize, dsize, rows) {
  // OpenCV's resize tables: columns outside the image take the edge pixel with weight 1,
  // rows keep their weights and read the edge row twice.
  const scale = 1 / (dsize / ssize);
  const idx = new Int32Array(dsize * 2), coef = new Int32Array(dsize * 2);
  const clamp = (i) => Math.min(Math.max(i, 0), ssize - 1);
  for (let d = 0; d < dsize; d++) {
    let f = f32((d + 0.5) * scale - 0.5);
    let s = Math.floor(f);
    f = f32(f - s);
    if (!rows && s < 0) { f = 0; s = 0; }
    if (!rows && s >= ssize - 1) { f = 0; s = ssize - 1; }
    const c0 = roundEven(f32(f32(1 - f) * 2048));
    idx[2 * d] = clamp(s); idx[2 * d + 1] = clamp(s + 1);
    coef[2 * d] = c0; coef[2 * d + 1] = roundEven(f32(f * 2048));
  }
  return { idx, coef };
}

/** cv2.resize(..., INTER_LINEAR) on 8-bit: 11-bit fixed-point weights in each direction. */
export function resizeLinear(img, dw, dh) {
  const xt = linearTable(img.width, dw, false), yt = linearTable(img.height, dh, true);
  const out = new Uint8Array(dw * dh), W = img.width;
  const rowAt = (sy, dx) => img.data[sy * W + xt.idx[2 * dx]] * xt.coef[2 * dx]
    + img.data[sy * W + xt.idx[2 * dx + 1]] * xt.coef[2 * dx + 1];
  for (let dy = 0; dy < dh; dy++) {
    const [y0, y1] = [yt.idx[2 * dy], yt.idx[2 * dy + 1]];
    const [b0, b1] = [yt.coef[2 * dy], yt.coef[2 * dy + 1]];
    for (let dx = 0; dx < dw; dx++) {
      // OpenCV's VResizeLinear for 8-bit: each row's term shifted before the sum
      const v = ((b0 * (rowAt(y0, dx) >> 4)) >> 16) + ((b1 * (rowAt(y1, dx) >> 4)) >> 16);
      out[dy * dw + dx] = sat8((v + 2) >> 2);
    }
  }
  return makeImage(dw, dh, out);
}

/** preprocess.resize_square: area averaging when shrinking, bilinear when enlarging. */
export function resizeSquare(img, size) {
  if (img.width === size && img.height === size) return img;
  const shrinking = img.width * img.height > size * size;
  return shrinking ? resizeArea(img, size, size) : resizeLinear(img, size, size);
}

/** cv2.Laplacian(x, CV_32F) (3x3 cross kernel, reflected border) as float values. */
export function laplacian(img) {
  const { width: w, height: h, data } = img, out = new Float64Array(w * h);
  for (let y = 0; y < h; y++) {
    const up = reflect101(y - 1, h) * w, down = reflect101(y + 1, h) * w;
    for (let x = 0; x < w; x++) {
      const l = reflect101(x - 1, w), r = reflect101(x + 1, w);
      out[y * w + x] = data[up + x] + data[down + x] + data[y * w + l] + data[y * w + r]
        - 4 * data[y * w + x];
    }
  }
  return out;
}
