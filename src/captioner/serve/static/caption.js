"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, captions: [], tags: [], current: 0, grid: null, busy: false };

async function loadModelInfo() {
  let info;
  try {
    const response = await fetch("/api/model");
    info = await response.json();
    const decoder = { attention: "LSTM with soft attention", lstm: "LSTM (show and tell)", gru: "GRU (show and tell)" };
    $("model-info").textContent = `${decoder[info.decoder] || info.decoder} on ${info.encoder}` +
      (info.trained_on ? ` · trained on ${info.trained_on}` : "");
    if (!info.review) $("review-link").title = "Start the server with --eval_dir to review an evaluation";
  } catch {
    $("model-info").textContent = "model information unavailable";
    return;
  }
  useRecommended(info.recommended_decoding);
}

// A model trained from a preset says how it captions best: the controls start there, and still change it.
function useRecommended(decoding) {
  if (!decoding) return;
  const strategy = document.querySelector(`#settings input[name=strategy][value="${decoding.strategy}"]`);
  if (strategy) strategy.checked = true;
  if (decoding.beam_size) $("beam_size").value = decoding.beam_size;
  if (decoding.length_penalty !== undefined) $("length_penalty").value = decoding.length_penalty;
  if (decoding.temperature !== undefined) {
    $("temperature").value = decoding.temperature;
    $("temperature-value").textContent = Number(decoding.temperature).toFixed(1);
  }
  const n = Number(decoding.no_repeat_ngram);
  if (n) $("no_repeat_ngram").value = n;
  if (n && n !== 2) $("no_repeat_ngram-text").textContent = `Never repeat a sequence of ${n} words`;
  $("no_repeat_ngram").checked = Boolean(decoding.no_repeat_ngram);
  $("flip_average").checked = Boolean(decoding.flip_average);
  $("settings").dispatchEvent(new Event("change"));
  $("recommended-hint").hidden = false;
}

function settings() {
  const form = new FormData($("settings"));
  const strategy = form.get("strategy");
  const options = new FormData();
  options.append("strategy", strategy);
  if (strategy === "beam") {
    options.append("beam_size", form.get("beam_size"));
    options.append("length_penalty", form.get("length_penalty") || "0");
    if (form.get("no_repeat_ngram")) options.append("no_repeat_ngram", form.get("no_repeat_ngram"));
    options.append("num_captions", Math.min(Number(form.get("beam_size")) || 1, 5));
  } else if (strategy === "sample") {
    options.append("temperature", form.get("temperature"));
    options.append("num_captions", 3);
  }
  if (form.get("flip_average")) options.append("flip_average", "true");
  return options;
}

function howDecoded(settings) {
  let how = settings.strategy === "greedy" ? "greedily"
    : settings.strategy === "sample" ? `by sampling (temperature ${settings.temperature})`
    : `with beam search (beam ${settings.beam_size}` +
      (settings.length_penalty ? `, length penalty ${settings.length_penalty}` : "") +
      (settings.no_repeat_ngram === 2 ? ", no word pair twice)"
        : settings.no_repeat_ngram ? `, no ${settings.no_repeat_ngram}-word sequence twice)` : ")");
  if (settings.flip_average) how += ", averaged with the mirror image";
  return how;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showPhoto(file) {
  const photo = $("photo");
  if (photo.dataset.url) URL.revokeObjectURL(photo.dataset.url);
  photo.dataset.url = URL.createObjectURL(file);
  photo.src = photo.dataset.url;
  photo.alt = "The photo being captioned";
  $("stage").classList.add("shown");
  $("dropzone").hidden = true;
  clearOverlay();
}

async function caption(file) {
  if (!file || state.busy) return;
  state.file = file;
  state.busy = true;
  $("again").disabled = true;
  showPhoto(file);
  setStatus("Captioning…");
  await modelInfoLoaded;  // a photo chosen as the page opens is captioned with the recommended decoding
  const body = settings();
  body.append("file", file, file.name || "pasted-image.png");
  try {
    const response = await fetch("/api/caption", { method: "POST", body });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
    state.captions = answer.captions;
    state.tags = answer.tags || [];
    state.grid = answer.grid;
    state.current = 0;
    render();
    setStatus(`Captioned in ${answer.seconds.toFixed(2)} s ${howDecoded(answer.settings)}`);
  } catch (error) {
    state.captions = [];
    state.tags = [];
    render();
    setStatus(`Could not caption this file: ${error.message}`, true);
  } finally {
    state.busy = false;
    $("again").disabled = false;
  }
}

function render() {
  const result = $("result");
  result.replaceChildren();
  const best = state.captions[state.current];
  if (!best) {
    const empty = document.createElement("p");
    empty.className = "placeholder";
    empty.textContent = "No caption yet.";
    result.append(empty);
    $("alternatives-panel").hidden = true;
    return;
  }
  $("photo").alt = best.text;
  const sentence = document.createElement("p");
  sentence.className = "caption";
  sentence.id = "caption-text";
  const hasAttention = Array.isArray(best.attention);
  best.tokens.forEach((word, index) => {
    let token = document.createElement("span");
    if (hasAttention) {
      token = wordButton(word, best.attention[index]);
    } else {
      token.className = "word";
      token.textContent = word;
    }
    sentence.append(token, document.createTextNode(" "));
  });
  result.append(sentence);
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.textContent = hasAttention
    ? "Point at a word, or Tab to it, to light up the regions the model attended to."
    : "This model has no attention (show-and-tell decoder), so there is no heatmap to show.";
  result.append(hint);
  renderTags(result);
  renderAlternatives();
}

// The concepts the model sees in the photo, likeliest first, each with its probability.
function renderTags(result) {
  if (!state.tags.length) return;
  const list = document.createElement("ul");
  list.className = "tags";
  list.id = "tags";
  list.setAttribute("aria-label", "Tags the model gives this photo, with their probabilities");
  state.tags.forEach((tag) => list.append(tagItem(tag)));
  result.append(list);
}

function renderAlternatives() {
  const list = $("alternatives");
  list.replaceChildren();
  $("alternatives-panel").hidden = state.captions.length < 2;
  state.captions.forEach((candidate, index) => {
    const item = document.createElement("li");
    item.classList.toggle("current", index === state.current);
    const choose = document.createElement("button");
    choose.type = "button";
    choose.textContent = candidate.text;
    choose.setAttribute("aria-label", `Show candidate ${index + 1}: ${candidate.text}`);
    choose.addEventListener("click", () => { state.current = index; render(); });
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = candidate.score.toFixed(2);
    item.append(choose, score);
    list.append(item);
  });
}

function pickFile(files) {
  const file = [...files].find((f) => f.type.startsWith("image/") || f.type === "");
  if (file) caption(file);
  else if (files.length) setStatus("That is not an image file.", true);
}

$("file").addEventListener("change", (event) => pickFile(event.target.files));
for (const target of [$("dropzone"), $("stage")]) {  // a new photo can be dropped on the old one too
  ["dragenter", "dragover"].forEach((name) => target.addEventListener(name, (event) => {
    event.preventDefault();
    target.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((name) => target.addEventListener(name, () => target.classList.remove("dragging")));
  target.addEventListener("drop", (event) => { event.preventDefault(); pickFile(event.dataTransfer.files); });
}
document.addEventListener("paste", (event) => {
  const files = [...event.clipboardData.items].filter((i) => i.kind === "file").map((i) => i.getAsFile());
  if (files.length) pickFile(files);
});
$("replace").addEventListener("click", () => $("file").click());
$("settings").addEventListener("submit", (event) => { event.preventDefault(); caption(state.file); });
$("settings").addEventListener("change", () => {
  const strategy = new FormData($("settings")).get("strategy");
  $("beam-row").hidden = strategy !== "beam";
  $("length-row").hidden = strategy !== "beam";
  $("repeat-row").hidden = strategy !== "beam";
  $("temperature-row").hidden = strategy !== "sample";
});
$("temperature").addEventListener("input", (event) => {
  $("temperature-value").textContent = Number(event.target.value).toFixed(1);
});
window.addEventListener("resize", clearOverlay);
const modelInfoLoaded = loadModelInfo();
