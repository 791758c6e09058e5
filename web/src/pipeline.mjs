// The grader's pipeline, without the page: from a decoded image's 8-bit grey pixels to its
// views, its input check, the model's run, the calibrated probabilities and the set of
// grades, by the rules of koa predict (koa_core/data/preprocess.py, inputcheck.py,
// koa_core/metrics/calibration.py and conformal.py). No DOM and no state of its own:
// grader.json's settings (`cfg`) and the model (an onnxruntime session and its Tensor
// class) come in as arguments, so Node runs it as the page does
// (tests/report/test_grader_pipeline.py compares it with Python). grade.mjs is the page.
import { clahe, crop, cropBox, resizeSquare } from './imageops.mjs';
import { inputFlags } from './inputcheck.mjs';
import { conformalSet, setLabel } from './conformal.mjs';

/** A file the page cannot grade: its message is the page's whole answer. */
export class GraderError extends Error {}

/** Whether a file is DICOM: the DICM preamble at byte 128 of its first bytes (`head`), or
 * a DICOM suffix of its name (grader.json `decode.dicom_suffixes`), as koa predict tells. */
export function isDicom(head, name, decode) {
  const magic = head.length >= 132 && String.fromCharCode(...head.slice(128, 132)) === 'DICM';
  const lower = (name || '').toLowerCase();
  return magic || decode.dicom_suffixes.some((s) => lower.endsWith(s));
}

/** Refuse a DICOM file: koa predict grades those (their rescale, window and photometry). */
export function refuseDicom(head, name, decode) {
  if (isDicom(head, name, decode)) {
    throw new GraderError(`${name}: DICOM files are graded by koa predict, not on this page `
      + '(export the image as PNG to grade it here).');
  }
}

/** Refuse an image of more pixels than the decoders' limit (grader.json `decode`), before
 * its pixels are drawn. */
export function checkPixels(width, height, name, decode) {
  if (width * height > decode.max_pixels) {
    throw new GraderError(`${name}: ${width}x${height} pixels is larger than the `
      + `${decode.max_pixels.toLocaleString('en')}-pixel limit.`);
  }
}

/** The checkpoint's two 8-bit views of a decoded grey image (preprocess.Preprocessor), with
 * the input-transformed image they come from. */
export function views(grey, pre) {
  let img = pre.input_clahe_clip == null ? grey
    : clahe(grey, pre.input_clahe_clip, pre.input_clahe_tiles);
  const transformed = img;
  if (pre.crop) img = crop(img, cropBox(img));
  const raw = resizeSquare(img, pre.size);
  return { transformed, raw, clahe: clahe(raw, pre.clahe_clip, pre.clahe_tiles) };
}

/** The input check's flags of a decoded grey image (inputcheck.InputCheck.flags). */
export function checkInput(grey, cfg) {
  return inputFlags(grey, cfg.input_profile, cfg.input_check);
}

/** The model's input of one knee: its raw then its CLAHE view, uint8 [1, 2, size, size]. */
export function modelInput(v, size) {
  const n = size * size, data = new Uint8Array(2 * n);
  data.set(v.raw.data);
  data.set(v.clahe.data, n);
  return { data, dims: [1, 2, size, size] };
}

/** softmax(log p / t): the temperature koa calibrate fitted, as koa predict applies it. */
export function calibrated(p, t) {
  if (!t) return p;
  const z = p.map((v) => Math.log(Math.min(Math.max(v, 1e-12), 1)) / t);
  const top = Math.max(...z);
  const e = z.map((v) => Math.exp(v - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** The grade, the set of grades and its words from the model's probabilities (and gate). */
export function outcome(modelProbabilities, gate, cfg) {
  const probabilities = calibrated(Array.from(modelProbabilities), cfg.temperature);
  const grade = probabilities.indexOf(Math.max(...probabilities));
  const inSet = conformalSet(probabilities, cfg.conformal);
  return { probabilities, gate: gate ? Array.from(gate) : null, grade,
    set: inSet && inSet.flatMap((v, g) => (v ? [g] : [])), setLabel: inSet && setLabel(inSet) };
}

/** Run the model (`model.session`, tensors made by `model.Tensor`) on one knee's views. */
export async function runModel(model, v, cfg) {
  const { data, dims } = modelInput(v, cfg.preprocess.size);
  const out = await model.session.run({ views: new model.Tensor('uint8', data, dims) });
  return outcome(out.probabilities.data, out.gate ? out.gate.data : null, cfg);
}

/** Check, preprocess and grade one decoded grey image: the result the page shows and its
 * views. */
export async function gradeGrey(model, grey, name, cfg) {
  const flags = checkInput(grey, cfg);
  const v = views(grey, cfg.preprocess);
  return { result: { name, flags, ...(await runModel(model, v, cfg)) }, v };
}
