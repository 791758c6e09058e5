// "Grade your own knee": the book's in-browser grader page. The reader's image is decoded
// here (the browser's own decoders) and checked, preprocessed and graded by pipeline.mjs
// (no DOM: imageops.mjs, inputcheck.mjs, conformal.mjs) with the shipped model exported to
// ONNX, run by onnxruntime-web's WebAssembly backend from the book's own files. This module
// is the page: the decoding, the DOM, its style, the model's session and the tests' hooks.
// Nothing leaves the page: no request goes outside the book's origin and nothing of the
// image is stored. Everything the page needs is read from grader.json, written at build
// time by koa_core/book/grader.py.
import * as ort from './ort/ort.wasm.min.mjs';
import { clahe, makeImage, rgbaToGrey } from './imageops.mjs';
import { GraderError, checkInput, checkPixels, gradeGrey, refuseDicom, views }
  from './pipeline.mjs';

const BASE = new URL('./', import.meta.url);
const state = { config: null, model: null, queue: Promise.resolve(), timings: {} };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

/** A file's pixels as 8-bit grey, by the rule of koa_core/data/raster.py, as the browser
 * displays it (EXIF orientation applied); DICOM and images over the pixel limit refused. */
export async function decode(blob, name, cfg) {
  refuseDicom(new Uint8Array(await blob.slice(0, 132).arrayBuffer()), name, cfg.decode);
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none',
      premultiplyAlpha: 'none' });
  } catch {
    throw new GraderError(`${name}: not a readable PNG, JPEG or WebP image `
      + '(truncated or corrupt?).');
  }
  const { width, height } = bitmap;
  try {
    checkPixels(width, height, name, cfg.decode);
  } catch (err) {
    bitmap.close();
    throw err;
  }
  const canvas = el('canvas', { width, height });
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return rgbaToGrey(ctx.getImageData(0, 0, width, height).data, width, height);
}

async function loadModel(cfg) {
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmPaths = new URL('ort/', BASE).href;
  const session = await ort.InferenceSession.create(new URL(cfg.model.file, BASE).href,
    { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
  return { session, Tensor: ort.Tensor };
}

/** Decode, check, preprocess and grade one image (a Blob), in this page. */
export async function gradeBlob(blob, name) {
  const t0 = performance.now();
  const grey = await decode(blob, name, state.config);
  const { result, v } = await gradeGrey(state.model, grey, name, state.config);
  result.ms = performance.now() - t0;
  result.at = performance.now();
  return { result, v };
}

const STYLE = `
#koa-grader .kg-drop{border:2px dashed #8a9bb0;border-radius:8px;padding:1.2em;text-align:center;
  cursor:pointer;margin:.5em 0}
#koa-grader .kg-drop.kg-over{background:#eef3f8}
#koa-grader .kg-samples{display:flex;flex-wrap:wrap;gap:4px;margin:.5em 0}
#koa-grader .kg-samples button{padding:0;border:2px solid transparent;background:none;cursor:pointer}
#koa-grader .kg-samples button:hover{border-color:#d62728}
#koa-grader .kg-samples img{width:44px;height:44px;display:block}
#koa-grader .kg-status{margin:.5em 0;min-height:1.5em}
#koa-grader .kg-error{color:#b00020;font-weight:600}
#koa-grader .kg-grade{font-size:1.4em;font-weight:700;margin:.3em 0}
#koa-grader .kg-bar{display:flex;align-items:center;gap:.5em;margin:2px 0}
#koa-grader .kg-bar span:first-child{width:8.5em}
#koa-grader .kg-bar .kg-track{flex:1;background:#eef1f5;height:1em;max-width:24em}
#koa-grader .kg-bar .kg-fill{background:#a6b4c4;height:100%}
#koa-grader .kg-bar.kg-top .kg-fill{background:#d62728}
#koa-grader .kg-bar.kg-inset span:first-child{font-weight:700}
#koa-grader .kg-bar.kg-inset .kg-track{outline:2px solid #1f77b4}
#koa-grader .kg-set{margin:.3em 0}
#koa-grader .kg-views{display:flex;gap:1em;margin:.5em 0}
#koa-grader .kg-views figure{margin:0;text-align:center;font-size:.85em}
#koa-grader .kg-flag{color:#9a5b00;font-weight:600}
#koa-grader .kg-caveat,#koa-grader .kg-about{font-size:.85em;color:#555}`;

function greyCanvas(img) {
  const c = el('canvas', { width: img.width, height: img.height });
  const rgba = new Uint8ClampedArray(img.data.length * 4);
  for (let i = 0; i < img.data.length; i++) {
    rgba.fill(img.data[i], 4 * i, 4 * i + 3);
    rgba[4 * i + 3] = 255;
  }
  c.getContext('2d').putImageData(new ImageData(rgba, img.width, img.height), 0, 0);
  return c;
}

function bars(probabilities, grade, names, set) {
  return probabilities.map((p, k) => {
    const fill = el('div', { class: 'kg-fill', style: `width:${(100 * p).toFixed(1)}%` });
    const cls = `kg-bar${k === grade ? ' kg-top' : ''}${set && set.includes(k) ? ' kg-inset' : ''}`;
    return el('div', { class: cls, 'data-grade': k },
      el('span', {}, names[k]), el('div', { class: 'kg-track' }, fill),
      el('span', {}, `${(100 * p).toFixed(1)} %`));
  });
}

function setLine(result, conformal) {
  if (!conformal) return el('p', { class: 'kg-set' }, 'No set of grades: this checkpoint '
    + 'carries no conformal calibration.');
  const cover = `${Math.round(100 * conformal.coverage)} %`;
  return el('p', { class: 'kg-set' }, `Set: ${result.setLabel} at ${cover} (outlined below): `
    + `for ${cover} of knees like the validation knees it was calibrated on, the true grade is `
    + 'in the set; a flagged input is not such a knee.');
}

function checkLine(flags, words) {
  if (!flags.length) return el('p', { class: 'kg-check' }, 'Input check: ok (it looks like the '
    + 'knee-joint crops the model was trained on).');
  const said = flags.map((f) => words[f] || f).join('; ');
  return el('p', { class: 'kg-check kg-flag' }, `Input check: ${said}. It is still graded, `
    + 'but the grade means less.');
}

function render(ui, result, v) {
  const cfg = state.config, names = cfg.class_names;
  const p = result.probabilities[result.grade];
  const parts = [el('p', { class: 'kg-grade' },
    `Grade: ${names[result.grade]} (${(100 * p).toFixed(0)} %)`),
  setLine(result, cfg.conformal),
  ...bars(result.probabilities, result.grade, names, result.set)];
  if (result.gate) {
    parts.push(el('p', { class: 'kg-gate' }, `Stream weights: raw ${result.gate[0].toFixed(2)}, `
      + `CLAHE ${result.gate[1].toFixed(2)} (how much each view counted; they add up to 1).`));
  }
  parts.push(checkLine(result.flags, cfg.flag_words),
    el('div', { class: 'kg-views' },
      el('figure', {}, greyCanvas(v.raw), el('figcaption', {}, 'raw view')),
      el('figure', {}, greyCanvas(v.clahe), el('figcaption', {}, 'CLAHE view'))),
    el('p', { class: 'kg-caveat' }, `${result.name}. ${cfg.caveat}`));
  ui.result.replaceChildren(...parts);
}

function setStatus(ui, text, error = false) {
  ui.status.className = `kg-status${error ? ' kg-error' : ''}`;
  ui.status.textContent = text;
}

function submit(ui, blob, name) {
  const job = state.queue.then(async () => {
    setStatus(ui, `Grading ${name} ...`);
    try {
      const { result, v } = await gradeBlob(blob, name);
      render(ui, result, v);
      setStatus(ui, `Graded ${name} in ${Math.round(result.ms)} ms, in this page.`);
      state.timings.first ??= result.at;
      return result;
    } catch (err) {
      ui.result.replaceChildren();
      setStatus(ui, err instanceof GraderError ? err.message
        : `${name}: could not be graded (${err.message || err}).`, true);
      return { name, error: ui.status.textContent };
    }
  });
  state.queue = job;
  return job;
}

function dropZone(ui) {
  const input = el('input', { type: 'file', accept: '.png,.jpg,.jpeg,.webp,image/png,image/jpeg,'
    + 'image/webp', class: 'kg-file', hidden: '' });
  const zone = el('div', { class: 'kg-drop', role: 'button', tabindex: '0' },
    'Drop a knee-joint crop here, or click to choose one (PNG, JPEG or WebP).', input);
  const take = (file) => { if (file) submit(ui, file, file.name); };
  zone.addEventListener('click', (e) => { if (e.target !== input) input.click(); });
  zone.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') input.click(); });
  input.addEventListener('change', () => { take(input.files[0]); input.value = ''; });
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('kg-over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('kg-over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('kg-over');
    take(e.dataTransfer.files[0]);
  });
  return zone;
}

async function fetchBlob(url) {
  const r = await fetch(url);
  if (!r.ok) throw new GraderError(`${url}: not found (${r.status}).`);
  return r.blob();
}

function sampleRow(ui, cfg) {
  const buttons = cfg.samples.map((s) => {
    const url = new URL(s.file, BASE).href;
    const b = el('button', { type: 'button', class: 'kg-sample', 'data-file': s.file,
      title: `${s.name}: read as KL${s.grade} by the dataset's graders` },
    el('img', { src: url, alt: `sample knee ${s.name}` }));
    b.addEventListener('click', async () => submit(ui, await fetchBlob(url), s.name));
    return b;
  });
  return el('div', { class: 'kg-samples' }, ...buttons);
}

function about(cfg) {
  const m = cfg.model;
  return el('p', { class: 'kg-about' }, `Model: ${m.precision}, ${m.megabytes.toFixed(1)} MB, `
    + `run by onnxruntime-web ${cfg.runtime.version} (WebAssembly, one thread; `
    + `${cfg.runtime.megabytes.toFixed(1)} MB). ${m.agreement || ''}`);
}

async function init(root) {
  const ui = { status: el('p', { class: 'kg-status', 'aria-live': 'polite' }, 'Loading the model ...'),
    result: el('div', { class: 'kg-result', 'aria-live': 'polite' }) };
  root.replaceChildren(el('style', {}, STYLE), ui.status);
  const cfg = await (await fetch(new URL('grader.json', BASE))).json();
  state.config = cfg;
  root.replaceChildren(el('style', {}, STYLE), dropZone(ui),
    el('p', {}, 'Or try one of the book\'s sample knees:'), sampleRow(ui, cfg), ui.status,
    ui.result, about(cfg));
  state.model = await loadModel(cfg);
  state.timings.ready = performance.now();
  setStatus(ui, 'Ready: the model runs in this page; your image is not sent anywhere.');
  return ui;
}

function b64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function unb64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function hooks(ready) {
  // What the book's tests and benchmark drive: the page's own code, on the page's own data.
  const grey = (text, w, h) => makeImage(w, h, unb64(text));
  return {
    ready,
    timings: state.timings,
    config: () => state.config,
    gradeUrl: async (url) => submit(await ready, await fetchBlob(url), url.split('/').pop()),
    gradeBytes: async (text, name) => submit(await ready, new Blob([unb64(text)]), name),
    decodeUrl: async (url) => b64((await decode(await fetchBlob(url), url, state.config)).data),
    views: (text, w, h) => {
      const v = views(grey(text, w, h), state.config.preprocess);
      return { transformed: b64(v.transformed.data), raw: b64(v.raw.data),
        clahe: b64(v.clahe.data) };
    },
    clahe: (text, w, h, clip, tiles) => b64(clahe(grey(text, w, h), clip, tiles).data),
    flags: (text, w, h) => checkInput(grey(text, w, h), state.config),
  };
}

const root = document.getElementById('koa-grader');
if (root) {
  const ready = init(root).catch((err) => {
    root.append(el('p', { class: 'kg-status kg-error' },
      `The grader could not start in this browser (${err.message || err}).`));
    throw err;
  });
  window.koaGrader = hooks(ready);
}
