// stylecam studio: camera -> server over WebRTC -> stylized video back, with live style controls.
import { CameraError, cameraBlockedReason, listCameras, openCamera } from "./camera.js";
import { Recorder, snapshot } from "./capture.js";
import { PRESETS, StyleControls } from "./controls.js";
import { StatsOverlay } from "./overlay.js";
import { OfferError, StreamSession } from "./session.js";

const $ = (id) => document.getElementById(id);
const STATES = {
  idle: "Idle",
  connecting: "Connecting…",
  warming: "Warming up…",
  live: "Live",
  reconnecting: "Reconnecting…",
  failed: "Failed",
};
const SILENCE_LIMIT_MS = 3500; // the server sends stats every second; this long without means it is gone
const RETRY_MAX_DELAY_MS = 8000;
const RETRY_LIMIT = 40; // about five minutes of retrying
const PING_INTERVAL_MS = 2000;

const token = new URLSearchParams(location.search).get("token");
const overlay = new StatsOverlay({ fps: $("stat-fps"), latency: $("stat-latency"), rtt: $("stat-rtt"), bitrate: $("stat-bitrate") });
const recorder = new Recorder();
let controls = null;
let camera = null;
let session = null;
let wanted = false;
let attempts = 0;
let retryTimer = null;
let lastHeard = 0;

function setState(state, detail = "") {
  $("state").dataset.state = state;
  $("state").textContent = detail ? `${STATES[state]} ${detail}` : STATES[state];
  const busy = state !== "idle" && state !== "failed";
  $("start").disabled = busy;
  $("stop").disabled = !busy;
  $("snapshot").disabled = state !== "live";
  $("record").disabled = state !== "live" && !recorder.recording;
}

// What the server says about its setup (e.g. a full-size model on a CPU: seconds per frame).
async function showAdvice() {
  try {
    const health = await (await fetch("/health")).json();
    $("advice").textContent = health.warning || "";
    $("advice").hidden = !health.warning;
  } catch {
    // an unreachable server is reported by the connection itself
  }
}

function showNotice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

async function start() {
  showNotice("");
  const blocked = cameraBlockedReason();
  if (blocked) {
    showNotice(blocked);
    setState("failed");
    return;
  }
  wanted = true;
  attempts = 0;
  setState("connecting");
  try {
    camera = await openCamera(cameraChoice());
  } catch (error) {
    wanted = false;
    showNotice(error instanceof CameraError ? error.message : String(error));
    setState("failed");
    return;
  }
  $("local").srcObject = camera;
  refreshCameraList();
  await connect();
}

async function connect() {
  if (!wanted) return;
  setState(attempts ? "reconnecting" : "connecting");
  const current = new StreamSession({ camera, token });
  session = current;
  current.addEventListener("track", (event) => showStylized(current, event.detail));
  current.addEventListener("message", (event) => onServerMessage(event.detail));
  current.addEventListener("drop", () => current === session && retry());
  try {
    await current.connect(controls ? controls.values() : undefined);
  } catch (error) {
    current.close();
    if (current !== session) return;
    if (error instanceof OfferError && [400, 401].includes(error.status)) {
      wanted = false;
      showNotice(`The server refused the connection: ${error.message}`);
      setState("failed");
      return;
    }
    if (error instanceof OfferError && error.status === 503) {
      setState("warming", `(${error.message})`);
    }
    retry();
    return;
  }
  attempts = 0;
  lastHeard = performance.now();
  showNotice("");
  setState("warming");
  showAdvice();
}

function retry() {
  if (!wanted) return;
  if (session) session.close();
  attempts += 1;
  if (attempts > RETRY_LIMIT) {
    wanted = false;
    showNotice("The server cannot be reached. Check that it runs, then press Start again.");
    setState("failed");
    return;
  }
  if ($("state").dataset.state !== "warming") setState("reconnecting");
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, Math.min(500 * 2 ** (attempts - 1), RETRY_MAX_DELAY_MS));
}

function showStylized(owner, stream) {
  const video = $("remote");
  video.srcObject = stream;
  const firstFrame = () => {
    if (owner === session && wanted) setState("live");
  };
  if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(firstFrame);
  else video.addEventListener("playing", firstFrame, { once: true });
}

function onServerMessage(message) {
  lastHeard = performance.now();
  if (message.type === "stats") {
    overlay.serverStats(message);
  } else if (message.type === "error") {
    $("applied").textContent = `Server: ${message.error}`;
  }
}

function stop() {
  wanted = false;
  clearTimeout(retryTimer);
  if (recorder.recording) recorder.stop();
  if (session) session.close();
  session = null;
  if (camera) camera.getTracks().forEach((track) => track.stop());
  camera = null;
  $("local").srcObject = null;
  $("remote").srcObject = null;
  overlay.reset();
  setState("idle");
}

function cameraChoice() {
  const [width, height] = $("resolution").value.split("x").map(Number);
  return { deviceId: $("camera").value, width, height };
}

async function refreshCameraList() {
  const select = $("camera");
  const chosen = select.value || (camera && camera.getVideoTracks()[0].getSettings().deviceId);
  const cameras = await listCameras();
  select.replaceChildren(
    ...cameras.map((device, index) => new Option(device.label || `Camera ${index + 1}`, device.deviceId, false, device.deviceId === chosen)),
  );
}

async function switchCamera() {
  if (!camera) return;
  try {
    const next = await openCamera(cameraChoice());
    if (session) await session.replaceCamera(next);
    camera.getTracks().forEach((track) => track.stop());
    camera = next;
    $("local").srcObject = camera;
  } catch (error) {
    showNotice(error instanceof CameraError ? error.message : String(error));
  }
}

async function sendParams(changes) {
  if (!session || !session.control || session.control.readyState !== "open") {
    $("applied").textContent = "Saved: it applies when the stream starts.";
    return;
  }
  try {
    const reply = await session.request({ type: "params", ...changes });
    if (reply.type === "params") {
      controls.markApplied(reply.params);
      $("applied").textContent = "Applied.";
    } else {
      controls.markRefused(Object.keys(changes));
      $("applied").textContent = `Server: ${reply.error}`;
    }
  } catch (error) {
    $("applied").textContent = `Not applied: ${error.message}`;
  }
}

async function tick() {
  if (!session || !session.pc) return;
  if (["live", "warming"].includes($("state").dataset.state) && performance.now() - lastHeard > SILENCE_LIMIT_MS) {
    session.drop("the server went silent");
    return;
  }
  await overlay.sample(session.pc).catch(() => {});
}

async function ping() {
  if (!session || !session.control || session.control.readyState !== "open") return;
  const sent = performance.now();
  try {
    const reply = await session.request({ type: "ping", t: sent });
    if (reply.type === "pong") overlay.roundTrip(performance.now() - reply.t);
  } catch {
    // a reply lost to a reconnect is not worth a message
  }
}

function toggle(button, apply) {
  const pressed = button.getAttribute("aria-pressed") !== "true";
  button.setAttribute("aria-pressed", String(pressed));
  apply(pressed);
}

async function init() {
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  $("camera").addEventListener("change", switchCamera);
  $("resolution").addEventListener("change", switchCamera);
  $("swap").addEventListener("click", (e) => toggle(e.currentTarget, (on) => $("stage").classList.toggle("swapped", on)));
  $("layout").addEventListener("click", (e) =>
    toggle(e.currentTarget, (on) => {
      $("stage").classList.toggle("layout-side", on);
      $("stage").classList.toggle("layout-pip", !on);
    }),
  );
  $("toggle-overlay").addEventListener("click", (e) => toggle(e.currentTarget, (on) => { $("overlay").hidden = !on; }));
  $("fullscreen").addEventListener("click", () =>
    document.fullscreenElement ? document.exitFullscreen() : $("stage").requestFullscreen().catch(() => {}),
  );
  $("snapshot").addEventListener("click", () => snapshot($("remote")));
  $("record").addEventListener("click", async (e) => {
    const button = e.currentTarget;
    if (recorder.recording) {
      await recorder.stop();
      button.textContent = "Record";
      button.classList.remove("recording");
      button.setAttribute("aria-pressed", "false");
    } else {
      recorder.start($("remote").srcObject);
      button.textContent = "Stop recording";
      button.classList.add("recording");
      button.setAttribute("aria-pressed", "true");
    }
  });
  for (const preset of PRESETS) $("preset").append(new Option(preset.name, preset.name));
  $("preset").addEventListener("change", (event) => {
    const preset = PRESETS.find((p) => p.name === event.target.value);
    if (!preset || !controls) return;
    const { name, ...look } = preset;
    controls.set(look);
  });
  $("style").addEventListener("submit", (event) => event.preventDefault());
  setInterval(tick, 1000);
  setInterval(ping, PING_INTERVAL_MS);
  setState("idle");
  const blocked = cameraBlockedReason();
  if (blocked) showNotice(blocked);
  showAdvice();
  try {
    const schema = await (await fetch("/api/params")).json();
    controls = new StyleControls($("params"), schema, sendParams);
  } catch (error) {
    showNotice(`Could not load the style controls: ${error.message}`);
  }
}

init();
