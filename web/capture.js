// Snapshot (PNG of the stylized frame) and recording (WebM of the stylized stream).

export function download(blob, name) {
  const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function stamp() {
  return new Date().toISOString().replace(/[:.]/g, "-");
}

/** The video's current frame at its own size, as a PNG download. */
export function snapshot(video) {
  const canvas = Object.assign(document.createElement("canvas"), { width: video.videoWidth, height: video.videoHeight });
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => {
    canvas.toBlob((blob) => {
      download(blob, `stylecam-${stamp()}.png`);
      resolve(blob);
    }, "image/png");
  });
}

export class Recorder {
  constructor() {
    this.recorder = null;
    this.chunks = [];
  }

  get recording() {
    return this.recorder !== null && this.recorder.state === "recording";
  }

  start(stream) {
    const type = ["video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm"].find((t) => MediaRecorder.isTypeSupported(t));
    this.chunks = [];
    this.recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
    this.recorder.addEventListener("dataavailable", (event) => {
      if (event.data.size) this.chunks.push(event.data);
    });
    this.recorder.start(1000);
  }

  stop() {
    if (!this.recorder) return Promise.resolve();
    const recorder = this.recorder;
    this.recorder = null;
    return new Promise((resolve) => {
      recorder.addEventListener("stop", () => {
        download(new Blob(this.chunks, { type: "video/webm" }), `stylecam-${stamp()}.webm`);
        resolve();
      }, { once: true });
      recorder.stop();
    });
  }
}
