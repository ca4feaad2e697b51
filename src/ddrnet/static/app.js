// The demo page: send an image to POST predict?format=overlay and show the answer.
// Plain JavaScript with relative URLs, so the page also works behind a path prefix.
"use strict";

const $ = (id) => document.getElementById(id);
let shownUrl = null;

function say(text) { $("status").textContent = text; }
function fail(text) { $("error").textContent = text; say(""); }

async function loadModelInfo() {
  try {
    const health = await (await fetch("health")).json();
    const names = health.classes.map((c) => c.name).join(", ");
    $("model").textContent =
      `model ${health.architecture}, ${health.num_classes} classes: ${names}`;
    $("limits").textContent = `up to ${health.max_upload_mb} MB and ` +
      `${(health.max_pixels / 1e6).toFixed(1)} megapixels`;
  } catch (error) {
    $("model").textContent = `cannot reach the server (${error})`;
  }
}

async function loadDemos() {
  const frames = await (await fetch("demo")).json();
  if (!frames.length) return;  // no demo frames shipped: keep the section hidden
  for (const frame of frames) {
    const button = document.createElement("button");
    button.textContent = frame.name;
    button.addEventListener("click", async () => {
      const blob = await (await fetch(frame.url.replace(/^\//, ""))).blob();
      segment(blob, frame.name);
    });
    $("demo-list").appendChild(button);
  }
  $("demos").hidden = false;
}

async function segment(blob, name) {
  $("error").textContent = "";
  $("latency").textContent = "";
  say(`segmenting ${name} ...`);
  const form = new FormData();
  form.append("file", blob, name);
  const started = performance.now();
  let response;
  try {
    response = await fetch("predict?format=overlay", { method: "POST", body: form });
  } catch (error) {
    fail(`request failed: ${error}`);
    return;
  }
  const roundTrip = performance.now() - started;
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error; } catch (ignored) { /* not JSON */ }
    fail(`${name}: ${response.status} ${message}`);
    return;
  }
  const picture = await response.blob();
  const headers = response.headers;
  const result = $("result");
  result.onload = () => {
    if (shownUrl) URL.revokeObjectURL(shownUrl);
    shownUrl = result.src;
    result.style.display = "block";
    say(`${name} (${headers.get("X-Image-Size")} pixels)`);
    // Written last: a reader (or a test) seeing it knows the picture is in place.
    $("latency").textContent =
      `latency: model ${Number(headers.get("X-Latency-Ms")).toFixed(1)} ms, ` +
      `server ${Number(headers.get("X-Total-Ms")).toFixed(1)} ms, ` +
      `round trip ${roundTrip.toFixed(1)} ms`;
  };
  result.onerror = () => fail(`${name}: the server's answer is not a displayable image`);
  result.src = URL.createObjectURL(picture);
}

function setUp() {
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) segment(file, file.name);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) segment(file, file.name);
  });
  loadModelInfo();
  loadDemos().catch((error) => fail(`cannot list demo frames: ${error}`));
}

setUp();
