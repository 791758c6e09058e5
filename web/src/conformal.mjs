// Conformal sets of grades in the page, by the rule of koa_core/metrics/conformal.py: the
// grades whose score is within the threshold koa calibrate fitted (one, or one per grade),
// the most probable grade always in, and for a per-grade ordinal calibration the run of
// neighbouring grades that holds them all. grader.json carries the sidecar's `conformal`.

/** Each grade's score as the knee's label (lower fits better). */
export function gradeScores(p, method) {
  const k = p.length;
  if (method === 'lac') return p.map((v) => 1 - v);
  if (method !== 'ordinal') throw new Error(`unknown conformal method ${method}`);
  const out = new Array(k).fill(Infinity);
  let lo = p.indexOf(Math.max(...p)), hi = lo, mass = p[lo];
  out[lo] = mass;
  for (let step = 1; step < k; step++) {
    const left = lo > 0 ? p[lo - 1] : -1, right = hi < k - 1 ? p[hi + 1] : -1;
    const next = left > right ? --lo : ++hi; // a tie grows towards the higher grade
    mass += p[next];
    out[next] = mass;
  }
  return out;
}

/** The grades in the knee's set (booleans), or null without a calibration. */
export function conformalSet(p, conformal) {
  if (!conformal) return null;
  const { method, thresholds } = conformal;
  const t = thresholds.map((v) => (v == null ? Infinity : v));
  const scores = gradeScores(p, method);
  const inSet = scores.map((s, g) => s <= (t.length === 1 ? t[0] : t[g]));
  inSet[p.indexOf(Math.max(...p))] = true; // never empty
  if (method === 'ordinal' && conformal.class_conditional) {
    const lo = inSet.indexOf(true), hi = inSet.lastIndexOf(true);
    return inSet.map((_, g) => g >= lo && g <= hi);
  }
  return inSet;
}

/** A set in words, as koa predict writes it: KL2, KL1–KL3 (a run), KL0, KL2. */
export function setLabel(inSet) {
  const g = inSet.flatMap((v, i) => (v ? [i] : []));
  if (g.length === 1) return `KL${g[0]}`;
  if (g[g.length - 1] - g[0] === g.length - 1) return `KL${g[0]}–KL${g[g.length - 1]}`;
  return g.map((v) => `KL${v}`).join(', ');
}
