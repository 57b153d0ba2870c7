// What the caption page and the library page show alike: a tag with its probability, and the word hover
// (both show the photo as #photo with the canvas #overlay above it, the caption's words as .caption .word).

function markActive(token) {
  document.querySelectorAll(".caption .word.active").forEach((w) => w.classList.remove("active"));
  if (token) token.classList.add("active");
}

function clearOverlay() {
  const canvas = document.getElementById("overlay");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  delete canvas.dataset.drawn;
}

// Spotlight: the photo stays bright where the model looked and is dimmed elsewhere.
function drawAttention(map) {
  const photo = document.getElementById("photo");
  const canvas = document.getElementById("overlay");
  canvas.width = photo.clientWidth;
  canvas.height = photo.clientHeight;
  const rows = map.length, columns = map[0].length;
  const peak = Math.max(...map.flat()) || 1;
  const small = document.createElement("canvas");
  small.width = columns;
  small.height = rows;
  const pixels = small.getContext("2d").createImageData(columns, rows);
  map.forEach((row, y) => row.forEach((value, x) => {
    const offset = 4 * (y * columns + x);
    pixels.data[offset] = 10; pixels.data[offset + 1] = 14; pixels.data[offset + 2] = 30;
    pixels.data[offset + 3] = Math.round(190 * (1 - value / peak));
  }));
  small.getContext("2d").putImageData(pixels, 0, 0);
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(small, 0, 0, canvas.width, canvas.height);
  canvas.dataset.drawn = "true";
}

// One tag of the photo: "dog 97%".
function tagItem({ tag, probability }) {
  const item = document.createElement("li");
  item.className = "tag";
  item.textContent = `${tag} `;
  const share = document.createElement("span");
  share.className = "probability";
  share.textContent = `${Math.round(probability * 100)}%`;
  item.append(share);
  return item;
}

// A caption's word as a button that lights up where the model looked while it has the pointer or the focus.
function wordButton(word, map) {
  const token = document.createElement("button");
  token.type = "button";
  token.className = "word";
  token.textContent = word;
  token.setAttribute("aria-label", `${word}: show where the model looked`);
  const show = () => { markActive(token); drawAttention(map); };
  token.addEventListener("mouseenter", show);
  token.addEventListener("focus", show);
  token.addEventListener("mouseleave", () => { markActive(null); clearOverlay(); });
  token.addEventListener("blur", () => { markActive(null); clearOverlay(); });
  return token;
}
