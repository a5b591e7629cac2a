// personalive serve: the page. Camera frames go to the server tagged with an id; every animated frame that
// comes back names the camera frame it animates, so glass-to-glass latency is the time it is shown minus
// the time that camera frame was captured, both on this page's performance.now() clock (no clock skew).
"use strict";

// The frame-id strip under WebRTC pictures: the layout of personalive_cli/serve/framestamp.py.
const STRIP = 16, CELLS = 16, ID_BITS = 12, ID_MODULO = 1 << ID_BITS;
const checksum = (id) => (id * 7 + 5 + (id >> 4) + (id >> 8)) & 0xF;

const $ = (id) => document.getElementById(id);
const state = {
  status: null, portrait: null, session: null, transport: null, camera: null, ws: null, pc: null, channel: null,
  running: false, nextId: 0, captures: new Map(), shownTimes: [], latencies: [], allLatencies: [], shown: 0,
  server: {}, pageDropped: 0, recorder: null, chunks: [], sendCanvas: null, sendTrack: null,
};

function say(text, isError = false, where = "message") {
  $(where).textContent = text;
  $(where).classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = {};
  try { body = await response.json(); } catch (e) { body = { error: `${response.status} ${response.statusText}` }; }
  if (!response.ok) { const err = new Error(body.error || response.statusText); err.status = response.status; throw err; }
  return body;
}

async function loadStatus() {
  state.status = await api("api/status");
  const s = state.status;
  $("server").textContent = `${s.method} · ${s.size}² · ${s.active}/${s.max_sessions} live session(s)`;
  $("output").width = $("output").height = s.size;
  const wanted = new URLSearchParams(location.search).get("transport");
  if (wanted === "webrtc" || wanted === "websocket") $("transport").value = wanted;
}

// ---------- portrait ----------
async function upload(file) {
  if (!file) return;
  say("checking the portrait…", false, "portrait-message");
  $("start").disabled = true;
  try {
    const body = await api("api/portrait", { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    state.portrait = body.portrait;
    $("preview").src = body.preview;
    $("preview").classList.add("shown");
    $("drop-text").textContent = "Drop or click to change";
    say(body.message, body.face === false, "portrait-message");
    $("start").disabled = state.running;
  } catch (e) {
    state.portrait = null;
    say(e.message, true, "portrait-message");
  }
}

// ---------- figures ----------
function recordShown(displayTime, captureTime, stats) {
  state.shown += 1;
  state.shownTimes.push(displayTime);
  if (captureTime !== undefined && captureTime !== null) {
    const latency = displayTime - captureTime;
    if (latency >= 0 && latency < 60000) {
      state.latencies.push(latency);
      state.allLatencies.push(latency);
      if (state.latencies.length > 200) state.latencies.shift();
    }
  }
  if (stats) state.server = stats;
}

function percentile(values, p) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

function showFigures() {
  const now = performance.now();
  state.shownTimes = state.shownTimes.filter((t) => now - t < 1000);
  const s = state.server;
  $("fig-fps").textContent = state.running ? `${state.shownTimes.length} fps` : "–";
  const last = state.latencies[state.latencies.length - 1];
  $("fig-latency").textContent = last === undefined ? "–" : `${Math.round(last)} ms`;
  $("fig-latency-stats").textContent = state.latencies.length
    ? `${Math.round(percentile(state.latencies, 0.5))} / ${Math.round(percentile(state.latencies, 0.95))} ms` : "–";
  const dropped = (s.dropped || 0) + (s.send_dropped || 0) + state.pageDropped;
  $("fig-dropped").textContent = state.running || dropped ? `${dropped}` : "–";
  $("fig-queue").textContent = s.queue === undefined ? "–" : `${s.queue}`;
  $("fig-shown").textContent = `${state.shown}`;
}
setInterval(showFigures, 250);

// ---------- camera side ----------
function onCameraFrame(callback) {
  const video = $("camera");
  const tick = (now, meta) => {
    if (!state.running) return;
    // the camera's own capture time where the browser gives one (same clock), else when the page got it
    let t = meta && meta.captureTime;
    if (!(t > now - 1000 && t <= now)) t = now;
    callback(t);
    schedule();
  };
  const schedule = () => ("requestVideoFrameCallback" in video
    ? video.requestVideoFrameCallback(tick) : requestAnimationFrame((now) => tick(now, null)));
  schedule();
}

function newFrameId(captureTime) {
  const id = state.nextId;
  state.nextId = (state.nextId + 1) % ID_MODULO;
  state.captures.set(id, captureTime);
  return id;
}

function drawStrip(ctx, id, width, top) {
  const value = id | (checksum(id) << ID_BITS);
  const cell = Math.floor(width / CELLS);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, top, width, STRIP);
  ctx.fillStyle = "#fff";
  for (let i = 0; i < CELLS; i++) if ((value >> i) & 1) ctx.fillRect(i * cell, top, cell, STRIP);
}

function readStrip(pixels, width) {
  const cell = Math.floor(width / CELLS);
  let value = 0;
  for (let i = 0; i < CELLS; i++) {
    let sum = 0, n = 0;
    for (let y = STRIP / 4; y < STRIP - STRIP / 4; y++) {
      for (let x = i * cell + Math.floor(cell / 4); x < (i + 1) * cell - Math.floor(cell / 4); x++) {
        const k = (y * width + x) * 4;
        sum += pixels[k] + pixels[k + 1] + pixels[k + 2]; n += 3;
      }
    }
    if (n && sum / n > 127) value |= 1 << i;
  }
  const id = value & (ID_MODULO - 1);
  return (value >> ID_BITS) === checksum(id) ? id : null;
}

function cameraSize() {
  const v = $("camera");
  const scale = Math.min(1, 640 / Math.max(v.videoWidth, v.videoHeight));  // the model works at 512² anyway
  return [Math.round(v.videoWidth * scale / 2) * 2, Math.round(v.videoHeight * scale / 2) * 2];
}

// ---------- output side ----------
function startRecording() {
  state.chunks = [];
  $("download").classList.add("disabled");
  if (!window.MediaRecorder) return;
  try {
    state.recorder = new MediaRecorder($("output").captureStream(25), { mimeType: "video/webm" });
  } catch (e) { state.recorder = null; return; }
  state.recorder.ondataavailable = (e) => { if (e.data.size) state.chunks.push(e.data); };
  state.recorder.onstop = () => {
    if (!state.chunks.length) return;
    const link = $("download");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob(state.chunks, { type: "video/webm" }));
    link.classList.remove("disabled");
  };
  state.recorder.start(1000);
}

function afterPaint(callback) { requestAnimationFrame((t) => callback(t)); }

// ---------- WebSocket transport: JPEG + capture time up, JPEG + the capture time it animates down ----------
async function startWebSocket() {
  const { session } = await api("api/sessions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ portrait: state.portrait, transport: "websocket" }),
  });
  state.session = session;
  const url = new URL(`ws/${session}`, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("the WebSocket did not open")); });
  ws.onclose = () => { if (state.running) stop("the server closed the connection"); };
  const ctx = $("output").getContext("2d");
  ws.onmessage = async (event) => {
    if (typeof event.data === "string") { handleControl(JSON.parse(event.data)); return; }
    const view = new DataView(event.data);
    const length = view.getUint32(0, true);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(event.data, 4, length)));
    const bitmap = await createImageBitmap(new Blob([new Uint8Array(event.data, 4 + length)], { type: "image/jpeg" }));
    ctx.drawImage(bitmap, 0, 0, ctx.canvas.width, ctx.canvas.height);
    bitmap.close();
    afterPaint((t) => recordShown(t, header.capture, header));
  };
  const canvas = document.createElement("canvas");
  const sendCtx = canvas.getContext("2d");
  onCameraFrame((captureTime) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > 1 << 20) { state.pageDropped += 1; return; }  // the network is behind: do not queue
    const [w, h] = cameraSize();
    if (!w) return;
    canvas.width = w; canvas.height = h;
    sendCtx.drawImage($("camera"), 0, 0, w, h);
    const id = newFrameId(captureTime);
    canvas.toBlob(async (blob) => {
      if (!blob || ws.readyState !== WebSocket.OPEN) return;
      const head = new DataView(new ArrayBuffer(12));
      head.setFloat64(0, captureTime, true);
      head.setUint32(8, id, true);
      ws.send(new Blob([head.buffer, blob]));
    }, "image/jpeg", 0.85);
  });
}

// ---------- WebRTC transport: the camera (with its id strip) up as video, the animation down ----------
async function startWebRTC() {
  const [w, h] = cameraSize();
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h + STRIP;
  const sendCtx = canvas.getContext("2d");
  const stream = canvas.captureStream(0);  // a frame is sent exactly when requestFrame() says so
  const track = stream.getVideoTracks()[0];
  const pc = new RTCPeerConnection();
  state.pc = pc;
  const channel = pc.createDataChannel("control");
  state.channel = channel;
  channel.onmessage = (e) => handleControl(JSON.parse(e.data));
  channel.onclose = () => { if (state.running) stop("the server closed the connection"); };
  pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
  const remote = $("remote");
  pc.ontrack = (e) => { remote.srcObject = new MediaStream([e.track]); remote.play().catch(() => {}); };
  pc.onconnectionstatechange = () => {
    if (["failed", "closed"].includes(pc.connectionState) && state.running) stop(`WebRTC connection ${pc.connectionState}`);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {  // no trickle ICE: the offer goes with every candidate in it
    if (pc.iceGatheringState === "complete") return resolve();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") resolve(); };
    setTimeout(resolve, 3000);
  });
  const answer = await api("api/sessions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ portrait: state.portrait, transport: "webrtc", sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  state.session = answer.session;
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });

  onCameraFrame((captureTime) => {
    const id = newFrameId(captureTime);
    sendCtx.drawImage($("camera"), 0, 0, w, h);
    drawStrip(sendCtx, id, w, h);
    track.requestFrame();
  });

  const out = $("output").getContext("2d");
  const stripCanvas = document.createElement("canvas");
  const stripCtx = stripCanvas.getContext("2d", { willReadFrequently: true });
  const onRemote = (now, meta) => {
    if (!state.running) return;
    const vw = remote.videoWidth, vh = remote.videoHeight - STRIP;
    if (vh > 0) {
      out.drawImage(remote, 0, 0, vw, vh, 0, 0, out.canvas.width, out.canvas.height);
      stripCanvas.width = vw; stripCanvas.height = STRIP;
      stripCtx.drawImage(remote, 0, vh, vw, STRIP, 0, 0, vw, STRIP);
      const id = readStrip(stripCtx.getImageData(0, 0, vw, STRIP).data, vw);
      const shownAt = meta && meta.expectedDisplayTime ? meta.expectedDisplayTime : now;
      recordShown(shownAt, id === null ? null : state.captures.get(id), null);
    }
    remote.requestVideoFrameCallback(onRemote);
  };
  remote.requestVideoFrameCallback(onRemote);
}

function handleControl(message) {
  if (message.type === "stats" || message.type === "frame") state.server = message;
  if (message.type === "error") stop(message.message, true);
}

// ---------- start / stop ----------
async function start() {
  $("start").disabled = true;
  say("starting the camera…");
  try {
    state.camera = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    say(`the camera is not available: ${e.message}`, true);
    $("start").disabled = false;
    return;
  }
  const video = $("camera");
  video.srcObject = state.camera;
  await video.play().catch(() => {});
  while (!video.videoWidth) await new Promise((r) => setTimeout(r, 20));
  Object.assign(state, { running: true, latencies: [], allLatencies: [], shownTimes: [], shown: 0, server: {}, pageDropped: 0 });
  state.transport = $("transport").value;
  $("transport").disabled = true;
  try {
    await (state.transport === "webrtc" ? startWebRTC() : startWebSocket());
  } catch (e) {
    stop(e.message, true);
    return;
  }
  startRecording();
  $("stop").disabled = false;
  $("reset").disabled = false;
  say(`live over ${state.transport === "webrtc" ? "WebRTC" : "WebSocket"}`);
}

function stop(reason = "stopped", isError = false) {
  const session = state.session;
  state.running = false;
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  if (state.pc) { state.pc.onconnectionstatechange = null; if (state.channel) state.channel.onclose = null; state.pc.close(); state.pc = null; }
  if (state.camera) { state.camera.getTracks().forEach((t) => t.stop()); state.camera = null; }
  if (state.recorder && state.recorder.state !== "inactive") state.recorder.stop();
  if (session) fetch(`api/sessions/${session}/close`, { method: "POST", credentials: "same-origin", keepalive: true }).catch(() => {});
  state.session = null;
  $("stop").disabled = true;
  $("reset").disabled = true;
  $("transport").disabled = false;
  $("start").disabled = !state.portrait;
  say(reason, isError);
  showFigures();
}

function reset() {
  const seed = parseInt($("seed").value, 10);
  const message = JSON.stringify({ type: "reset", seed: Number.isFinite(seed) ? seed : null });
  if (state.ws) state.ws.send(message);
  if (state.channel && state.channel.readyState === "open") state.channel.send(message);
  state.latencies = [];
  say(`reset with seed ${seed}`);
}

// what tests and the latency benchmark read
window.personalive = {
  figures: () => ({ shown: state.shown, latencies: [...state.allLatencies], server: { ...state.server },
    pageDropped: state.pageDropped, running: state.running, session: state.session, transport: state.transport }),
};

$("portrait-file").addEventListener("change", (e) => upload(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files[0]); });
$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => stop());
$("reset").addEventListener("click", reset);
window.addEventListener("pagehide", () => {
  if (state.session) navigator.sendBeacon(`api/sessions/${state.session}/close`);
});
loadStatus().catch((e) => say(`cannot reach the server: ${e.message}`, true));
