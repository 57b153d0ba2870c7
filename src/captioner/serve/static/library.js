// The library page: search by description, filter by tag, browse the grid, open a photo with its captions,
// tags, the word hover (where the model looked for each word) and a read-aloud button.
const $ = (id) => document.getElementById(id);
const state = { tag: null, query: "", offset: 0, page: 60, photo: null };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function loadLibrary() {
  const about = await getJSON("/api/library");
  state.page = about.page;
  $("library-info").textContent = `${about.name}: ${about.images} photos`;
  const list = $("facets");
  list.replaceChildren();
  about.tags.forEach(({ tag, count }) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "facet";
    button.dataset.tag = tag;
    button.setAttribute("aria-pressed", "false");
    button.textContent = `${tag} (${count})`;
    button.addEventListener("click", () => {
      state.tag = state.tag === tag ? null : tag;
      document.querySelectorAll(".facet").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.tag === state.tag)));
      refresh();
    });
    item.append(button);
    list.append(item);
  });
}

function filterQuery() {
  return state.tag ? `&tag=${encodeURIComponent(state.tag)}` : "";
}

function tile(photo) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "tile";
  button.dataset.id = photo.id;
  button.setAttribute("aria-label", `Open: ${photo.caption}`);
  const image = document.createElement("img");
  image.src = `/api/library/thumbnail/${photo.id}`;
  image.alt = photo.alt || photo.caption;
  image.loading = "lazy";
  const caption = document.createElement("span");
  caption.textContent = photo.caption;
  button.append(image, caption);
  button.addEventListener("click", () => openPhoto(photo.id));
  item.append(button);
  return item;
}

async function refresh(more = false) {
  const grid = $("grid");
  if (!more) { grid.replaceChildren(); state.offset = 0; }
  try {
    if (state.query) {
      const found = await getJSON(`/api/search?q=${encodeURIComponent(state.query)}&top_k=60${filterQuery()}`);
      found.results.forEach((photo) => grid.append(tile(photo)));
      const unknown = found.unknown_words.length ? ` (the model does not know: ${found.unknown_words.join(", ")})` : "";
      setStatus(`${found.results.length} photos for “${state.query}”, best first${unknown}`);
      $("more").hidden = true;
    } else {
      const page = await getJSON(`/api/library/images?offset=${state.offset}${filterQuery()}`);
      page.images.forEach((photo) => grid.append(tile(photo)));
      state.offset += page.images.length;
      setStatus(`${page.total} photos${state.tag ? ` tagged “${state.tag}”` : ""}`);
      $("more").hidden = state.offset >= page.total;
    }
  } catch (error) {
    setStatus(`Could not load the photos: ${error.message}`, true);
  }
}

async function openPhoto(id) {
  const photo = await getJSON(`/api/library/image/${id}`);
  state.photo = photo;
  $("photo").src = `/api/library/photo/${id}`;
  $("photo").alt = photo.alt;
  $("viewer-caption").textContent = photo.captions.length ? photo.captions[0].text : "";
  $("viewer-hint").textContent = "";
  $("viewer-path").textContent = photo.path + (photo.taken ? ` · taken ${photo.taken}` : "");
  const captions = $("viewer-captions");
  captions.replaceChildren(...photo.captions.map(({ text, score }) => {
    const item = document.createElement("li");
    const words = document.createElement("span");
    words.textContent = text;
    const value = document.createElement("span");
    value.className = "score";
    value.textContent = score.toFixed(2);
    item.append(words, value);
    return item;
  }));
  $("viewer-tags").replaceChildren(...photo.tags.map(tagItem));
  clearOverlay();
  $("viewer").showModal();
  $("close").focus();
  loadAttention(id);
}

// The stored captions carry no attention: the photo is captioned again for the word hover.
async function loadAttention(id) {
  try {
    const result = await getJSON(`/api/library/image/${id}/caption`, { method: "POST" });
    if (!state.photo || state.photo.id !== id) return;
    const best = result.captions[0];
    if (!best || !Array.isArray(best.attention)) {
      $("viewer-hint").textContent = "This model has no attention, so there is no heatmap to show.";
      return;
    }
    const sentence = $("viewer-caption");
    sentence.replaceChildren();
    best.tokens.forEach((word, index) => sentence.append(wordButton(word, best.attention[index]), " "));
    $("viewer-hint").textContent = "Point at a word, or Tab to it, to light up where the model looked.";
  } catch (error) {
    $("viewer-hint").textContent = `No heatmap: ${error.message}`;
  }
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  state.query = $("query").value.trim();
  refresh();
});
$("clear").addEventListener("click", () => { $("query").value = ""; state.query = ""; state.tag = null;
  document.querySelectorAll(".facet").forEach((b) => b.setAttribute("aria-pressed", "false")); refresh(); });
$("more").addEventListener("click", () => refresh(true));
$("close").addEventListener("click", () => $("viewer").close());
$("speak").addEventListener("click", () => {
  const text = state.photo && state.photo.captions.length ? state.photo.alt : "";
  if (!text || !("speechSynthesis" in window)) return;
  window.speechSynthesis.cancel();
  window.speechSynthesis.speak(new SpeechSynthesisUtterance(text));
});

loadLibrary().then(() => refresh()).catch((error) => setStatus(`Could not open the library: ${error.message}`, true));
