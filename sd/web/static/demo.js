// The demo page: reads /api/info, sends /api/generate, shows the image(s), their timings and a history.
// In mini mode it regenerates as the prompt is typed (debounced); otherwise on the Generate button.
// With a refiner (sd.demo --refiner), Refine sends the last image's parameters to /api/refine.
"use strict";
const $ = (id) => document.getElementById(id);
let info = null, timer = null, pending = 0, last = null;

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function params() {
  if ($("randomize").checked) $("seed").value = Math.floor(Math.random() * 2 ** 31);
  const p = { prompt: $("prompt").value, seed: Number($("seed").value) };
  if (info.mode !== "mini") {
    p.negative_prompt = $("negative_prompt").value;
    for (const k of ["steps", "height", "width"]) p[k] = Number($(k).value);
    p.guidance = Number($("guidance").value);
  }
  return p;
}

function figure(src, caption) {
  const f = document.createElement("figure");
  const img = document.createElement("img");
  img.src = src; img.alt = caption;
  const c = document.createElement("figcaption");
  c.textContent = caption;
  f.append(img, c);
  return f;
}

function ms(s) { return (1000 * s).toFixed(1) + " ms"; }

function show(answer) {
  const results = $("results");
  results.replaceChildren();
  let first;
  if (answer.images) {                       // mini: one image per model
    for (const r of answer.images) results.append(figure(r.image, `${r.model}: ${ms(r.seconds.total)}`));
    first = answer.images[answer.images.length - 1].image;
    $("timing").textContent = `seed ${answer.seed}`;
  } else {
    const s = answer.seconds, sum = (xs) => ms(xs.reduce((a, b) => a + b, 0));
    results.append(figure(answer.image, s.refine ? `seed ${answer.seed}, refined (strength ${answer.strength})`
                                                 : `seed ${answer.seed}`));
    first = answer.image;
    $("timing").textContent = `total ${ms(s.total)}: text encoder ${ms(s.text_encoder)}, ` +
      `${s.steps.length} step(s) ${sum(s.steps)}, VAE ${ms(s.vae)}` + (s.refine ?
      ` · refiner ${ms(s.refine.total)}: ${s.refine.steps.length} step(s) ${sum(s.refine.steps)}` : "");
  }
  const thumb = document.createElement("img");
  thumb.src = first; thumb.title = `${$("prompt").value} (seed ${answer.seed})`;
  const history = $("history");
  history.prepend(thumb);
  while (history.children.length > 8) history.lastChild.remove();
}

async function generate(refine = false) {
  const id = ++pending;
  let answer;
  const body = refine ? { ...last, strength: Number($("strength").value) } : params();
  if (!refine) last = body;
  try {
    const r = await fetch(refine ? "/api/refine" : "/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    answer = await r.json();
    if (id !== pending) return;                // a newer request was sent meanwhile
    if (!r.ok) { showError(answer.error || `HTTP ${r.status}`); return; }
  } catch (e) {
    showError(`the server did not answer (${e})`);
    return;
  }
  showError("");
  show(answer);
}

async function start() {
  info = await (await fetch("/api/info")).json();
  $("model").textContent = `${info.model} · ${info.sampler} · ${info.dtype} on ${info.device}`;
  document.body.classList.toggle("mini", info.mode === "mini");
  for (const [k, v] of Object.entries(info.defaults)) if ($(k)) $(k).value = v;
  $("form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  if (info.refiner) {
    $("refine").hidden = $("strength-label").hidden = false;
    $("strength").value = info.refine_defaults.strength;
    $("refine").addEventListener("click", () => (last ? generate(true) : showError("generate an image first")));
  }
  if (info.mode === "mini") {
    $("generate").textContent = "Generate (or type)";
    $("prompt").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(generate, 150); });
    generate();
  }
}

start();
