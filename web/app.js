// stylecam page: camera -> server over WebRTC -> stylized video back; `control` channel for params.
const $ = (id) => document.getElementById(id);
let pc = null;
let control = null;

function setState(text) { $("state").textContent = text; }

function send(message) {
  if (control && control.readyState === "open") control.send(JSON.stringify(message));
}

function onControlMessage(event) {
  const message = JSON.parse(event.data);
  if (message.type === "stats") $("fps").textContent = `${message.fps.toFixed(1)} fps`;
  if (message.type === "params") $("ack").textContent = `applied: ${message.params.prompt}`;
  if (message.type === "error") $("ack").textContent = `error: ${message.error}`;
}

async function waitForIceGathering(peer) {
  if (peer.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") resolve();
    });
  });
}

async function start() {
  $("start").disabled = true;
  setState("connecting");
  try {
    const camera = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    $("local").srcObject = camera;
    const { iceServers } = await (await fetch("/api/ice-servers")).json();
    pc = new RTCPeerConnection({ iceServers });
    pc.addEventListener("connectionstatechange", () => setState(pc.connectionState));
    pc.addEventListener("track", (event) => { $("remote").srcObject = event.streams[0] || new MediaStream([event.track]); });
    camera.getTracks().forEach((track) => pc.addTrack(track, camera));
    control = pc.createDataChannel("control");
    control.addEventListener("message", onControlMessage);
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    const token = new URLSearchParams(location.search).get("token");
    const response = await fetch("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    await pc.setRemoteDescription(answer);
    $("stop").disabled = false;
  } catch (error) {
    setState(`failed: ${error.message}`);
    stop();
  }
}

function stop() {
  if (pc) pc.close();
  pc = null;
  control = null;
  const camera = $("local").srcObject;
  if (camera) camera.getTracks().forEach((track) => track.stop());
  $("local").srcObject = null;
  $("remote").srcObject = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  if (!$("state").textContent.startsWith("failed")) setState("idle");
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  send({ type: "params", prompt: $("prompt").value });
});
fetch("/api/params").then((r) => r.json()).then((schema) => { $("prompt").value = schema.properties.prompt.default; });
