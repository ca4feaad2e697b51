// The demo page: send an image (a file, a demo frame, or the camera's frames one after
// another) to POST predict?format=overlay (or confidence, as chosen; with min_confidence
// when a threshold is set) and show the answer.
// Plain JavaScript with relative URLs, so the page also works behind a path prefix.
"use strict";

const $ = (id) => document.getElementById(id);
let shownUrl = null;
let camera = null;  // while the camera runs: its stream, frames shown, and when it started

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

// Resolves to true once the answer is shown, false when there was an error (shown too).
// Camera frames (live) keep the last answer's lines until the next is shown: no flicker.
async function segment(blob, name, live = false) {
  $("error").textContent = "";
  if (!live) {
    $("latency").textContent = "";
    say(`segmenting ${name} ...`);
  }
  const form = new FormData();
  form.append("file", blob, name);
  const threshold = Number($("threshold").value);
  if (threshold > 0) form.append("min_confidence", String(threshold));
  const started = performance.now();
  let response;
  try {
    response = await fetch(`predict?format=${$("show").value}`, { method: "POST", body: form });
  } catch (error) {
    fail(`request failed: ${error}`);
    return false;
  }
  const roundTrip = performance.now() - started;
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error; } catch (ignored) { /* not JSON */ }
    fail(`${name}: ${response.status} ${message}`);
    return false;
  }
  const picture = await response.blob();
  const headers = response.headers;
  const result = $("result");
  const shown = new Promise((resolve) => {
    result.onload = () => {
      if (shownUrl) URL.revokeObjectURL(shownUrl);
      shownUrl = result.src;
      result.style.display = "block";
      if (!live) say(`${name} (${headers.get("X-Image-Size")} pixels)`);
      // Written last: a reader (or a test) seeing it knows the picture is in place.
      $("latency").textContent =
        `latency: model ${Number(headers.get("X-Latency-Ms")).toFixed(1)} ms, ` +
        `server ${Number(headers.get("X-Total-Ms")).toFixed(1)} ms, ` +
        `round trip ${roundTrip.toFixed(1)} ms`;
      resolve(true);
    };
    result.onerror = () => {
      fail(`${name}: the server's answer is not a displayable image`);
      resolve(false);
    };
  });
  result.src = URL.createObjectURL(picture);
  return shown;
}

async function startCamera() {
  $("error").textContent = "";
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (error) {
    // No camera, permission refused, or a page not served from localhost or https.
    fail(`cannot use the camera: ${error.message || error}`);
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  await video.play();
  camera = { stream, frames: 0, started: performance.now() };
  $("camera").textContent = "stop the camera";
  cameraLoop();
}

function stopCamera() {
  if (!camera) return;
  camera.stream.getTracks().forEach((track) => track.stop());
  camera = null;
  $("camera").textContent = "use the camera";
}

// One frame at a time: the next is taken when the answer to the last is shown, so what is
// shown is as fresh as the server allows and requests never pile up behind a slow link.
async function cameraLoop() {
  const video = $("video");
  const canvas = document.createElement("canvas");
  while (camera) {
    if (!video.videoWidth) {  // no frame decoded yet
      await new Promise((resolve) => setTimeout(resolve, 50));
      continue;
    }
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
    if (!(await segment(blob, "camera.jpg", true))) {
      stopCamera();
      return;
    }
    if (camera) {
      camera.frames += 1;
      const seconds = (performance.now() - camera.started) / 1000;
      say(`camera: ${camera.frames} frames, ${(camera.frames / seconds).toFixed(1)} per second`);
    }
  }
}

function setUp() {
  $("camera").addEventListener("click", () => (camera ? stopCamera() : startCamera()));
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
