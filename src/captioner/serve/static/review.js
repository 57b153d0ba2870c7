"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 20;
const LABELS = { fluency: "Fluency", relevance: "Relevance" };
const review = { items: [], ratings: {}, aspects: [], shown: PAGE, about: {} };

function element(tag, properties = {}, ...children) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

function fmt(value) {
  return value === null || value === undefined ? "–" : value.toFixed(1);
}

async function load() {
  const response = await fetch("/api/review");
  const answer = await response.json();
  if (!response.ok) {
    $("items").replaceChildren(element("p", { className: "empty card" }, answer.error));
    $("toolbar").hidden = true;
    $("summary").hidden = true;
    return;
  }
  Object.assign(review, { items: answer.items, ratings: answer.ratings, aspects: answer.aspects, about: answer.about });
  $("folder").textContent = `Evaluation: ${answer.folder}`;
  renderSummary();
  renderItems();
}

// Every setting that changes the captions: evaluations of one model often differ only in these.
function describeDecoding(decoding) {
  if (!decoding) return "–";
  const beam = decoding.strategy === "beam";
  return [beam ? `beam ${decoding.beam_size}` : decoding.strategy,
    beam && decoding.length_penalty ? `length penalty ${decoding.length_penalty}` : null,
    beam && decoding.no_repeat_ngram ? `no ${decoding.no_repeat_ngram}-gram twice` : null,
    decoding.flip_average ? "mirror image averaged in" : null].filter(Boolean).join(", ");
}

function renderSummary() {
  const about = review.about;
  const rated = (aspect) => Object.values(review.ratings).map((r) => r[aspect]).filter((v) => v !== undefined);
  const mean = (values) => values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
  const entries = [
    ["Images", review.items.length],
    ["Split", about.split || "–"],
    ["Decoding", describeDecoding(about.decoding)],
    ["Mean BLEU-4", fmt(mean(review.items.map((i) => i.bleu4).filter((v) => v !== null)))],
    ["Mean CIDEr", fmt(mean(review.items.map((i) => i.cider).filter((v) => v !== null)))],
  ];
  for (const aspect of review.aspects) {
    const values = rated(aspect);
    entries.push([`${LABELS[aspect] || aspect} (${values.length} rated)`, fmt(mean(values))]);
  }
  $("summary").replaceChildren(...entries.map(([label, value]) =>
    element("div", {}, element("span", { className: "label" }, label), element("span", { className: "value" }, String(value)))));
}

function visibleItems() {
  const word = $("word").value.trim().toLowerCase();
  const [key, order] = $("sort").value.split("-");
  let items = review.items.filter((item) => {
    if ($("unrated").checked && review.ratings[item.image_id] &&
        review.aspects.every((a) => review.ratings[item.image_id][a] !== undefined)) return false;
    if (!word) return true;
    const pattern = new RegExp(`\\b${word.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\b`);
    return pattern.test(item.caption) || item.references.some((r) => pattern.test(r.toLowerCase()));
  });
  if (key !== "index") {
    items = [...items].sort((a, b) => ((a[key] ?? 0) - (b[key] ?? 0)) * (order === "asc" ? 1 : -1));
  }
  return items;
}

function scoreChip(name, value, low, high) {
  const chip = element("span", { className: "chip" }, `${name} ${fmt(value)}`);
  if (value !== null && value < low) chip.classList.add("low");
  if (value !== null && value >= high) chip.classList.add("high");
  return chip;
}

function ratingGroup(item, aspect) {
  const current = (review.ratings[item.image_id] || {})[aspect];
  const legendId = `legend-${item.index}-${aspect}`;
  const stars = element("div", { className: "stars" });
  for (let score = 1; score <= 5; score++) {
    const input = element("input", { type: "radio", name: `${aspect}-${item.index}`, value: String(score) });
    input.checked = current === score;
    input.setAttribute("aria-label", `${LABELS[aspect]} ${score} of 5`);
    input.addEventListener("change", () => rate(item, aspect, score, stars));
    stars.append(element("label", {}, input, element("span", { ariaHidden: "true" }, String(score))));
  }
  const saved = element("div", { className: "saved", role: "status" });
  const fieldset = element("fieldset", {}, element("legend", { id: legendId }, LABELS[aspect] || aspect), stars, saved);
  return fieldset;
}

async function rate(item, aspect, score, stars) {
  const saved = stars.parentElement.querySelector(".saved");
  saved.classList.remove("error");
  saved.textContent = "Saving…";
  try {
    const response = await fetch("/api/review/rate", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image_id: item.image_id, aspect, score }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error);
    review.ratings[item.image_id] = answer.ratings;
    saved.textContent = `Saved: ${score} of 5`;
    renderSummary();
  } catch (error) {
    saved.classList.add("error");
    saved.textContent = `Not saved: ${error.message}`;
  }
}

function renderItem(item) {
  const image = element("img", { src: `/api/review/image/${item.index}`, alt: item.caption, loading: "lazy" });
  const text = element("div", {},
    element("p", { className: "generated" }, item.caption),
    element("div", { className: "chips" }, scoreChip("BLEU-4", item.bleu4, 10, 40), scoreChip("CIDEr", item.cider, 30, 100)),
    element("p", { className: "id" }, `References for ${item.image_id}:`),
    element("ol", { className: "references" }, ...item.references.map((r) => element("li", {}, r))));
  const rating = element("div", { className: "rating" }, ...review.aspects.map((a) => ratingGroup(item, a)));
  return element("article", { className: "item card", ariaLabel: `Image ${item.index + 1}: ${item.caption}` }, image, text, rating);
}

function renderItems() {
  const items = visibleItems();
  const container = $("items");
  container.replaceChildren(...items.slice(0, review.shown).map(renderItem));
  if (!items.length) container.append(element("p", { className: "empty card" }, "No image matches these filters."));
  $("count").textContent = `${Math.min(review.shown, items.length)} of ${items.length} shown`;
  $("more").hidden = items.length <= review.shown;
}

$("sort").addEventListener("change", () => { review.shown = PAGE; renderItems(); });
$("word").addEventListener("input", () => { review.shown = PAGE; renderItems(); });
$("unrated").addEventListener("change", () => { review.shown = PAGE; renderItems(); });
$("toolbar").addEventListener("submit", (event) => event.preventDefault());
$("more").addEventListener("click", () => { review.shown += PAGE; renderItems(); });
load();
