// One WebRTC session with the server: offer/answer, the `control` data channel, request/reply.

const REPLY_TIMEOUT_MS = 10000;

export class OfferError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/**
 * Events: "track" (detail: MediaStream), "message" (detail: a server message that answers no
 * request: stats, frame errors), "drop" (the connection is gone; the app decides what next).
 */
export class StreamSession extends EventTarget {
  constructor({ camera, token }) {
    super();
    this.camera = camera;
    this.token = token;
    this.pc = null;
    this.control = null;
    this.id = null;
    this.replies = [];
    this.closed = false;
  }

  async connect(params) {
    const { iceServers } = await (await fetch("/api/ice-servers")).json();
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    pc.addEventListener("track", (event) => {
      this.dispatchEvent(new CustomEvent("track", { detail: event.streams[0] || new MediaStream([event.track]) }));
    });
    pc.addEventListener("connectionstatechange", () => {
      if (["failed", "closed"].includes(pc.connectionState)) this.drop(`connection ${pc.connectionState}`);
    });
    this.camera.getVideoTracks().forEach((track) => pc.addTrack(track, this.camera));
    this.control = pc.createDataChannel("control");
    this.control.addEventListener("message", (event) => this.receive(event.data));
    this.control.addEventListener("close", () => this.drop("control channel closed"));
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    const headers = { "Content-Type": "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const response = await fetch("/offer", {
      method: "POST",
      headers,
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", params }),
    });
    const answer = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new OfferError(response.status, answer.error || response.statusText);
    this.id = answer.session;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    await waitForOpen(this.control);
  }

  /** Send a request and resolve with its reply (the server answers requests in order). */
  request(message) {
    return new Promise((resolve, reject) => {
      if (!this.control || this.control.readyState !== "open") {
        reject(new Error("not connected"));
        return;
      }
      const timer = setTimeout(() => reject(new Error("no reply from the server")), REPLY_TIMEOUT_MS);
      this.replies.push((reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
      this.control.send(JSON.stringify(message));
    });
  }

  receive(text) {
    const message = JSON.parse(text);
    const unsolicited = message.type === "stats" || (message.type === "error" && message.request === "frame");
    if (!unsolicited && this.replies.length) {
      this.replies.shift()(message);
    } else {
      this.dispatchEvent(new CustomEvent("message", { detail: message }));
    }
  }

  replaceCamera(camera) {
    this.camera = camera;
    const sender = this.pc && this.pc.getSenders().find((s) => s.track && s.track.kind === "video");
    return sender ? sender.replaceTrack(camera.getVideoTracks()[0]) : Promise.resolve();
  }

  drop(reason) {
    if (this.closed) return;
    this.close();
    this.dispatchEvent(new CustomEvent("drop", { detail: reason }));
  }

  close() {
    this.closed = true;
    this.replies = [];
    if (this.pc) this.pc.close();
  }
}

function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);
  });
}

function waitForOpen(channel) {
  if (channel.readyState === "open") return Promise.resolve();
  return new Promise((resolve, reject) => {
    channel.addEventListener("open", resolve, { once: true });
    setTimeout(() => reject(new Error("the control channel did not open")), 10000);
  });
}
