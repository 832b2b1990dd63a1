// The stats overlay: stylized fps, an estimate of glass-to-glass latency, round trip, bitrate.

export class StatsOverlay {
  constructor(elements) {
    this.elements = elements;
    this.reset();
  }

  reset() {
    this.serverLatencyMs = null;
    this.rttMs = null;
    this.lastBytes = null;
    this.set({ fps: "–", latency: "–", rtt: "–", bitrate: "–" });
  }

  set(values) {
    for (const [name, value] of Object.entries(values)) this.elements[name].textContent = value;
  }

  serverStats(message) {
    this.serverLatencyMs = message.latency_ms;
  }

  roundTrip(ms) {
    this.rttMs = ms;
    this.set({ rtt: ms.toFixed(0) });
  }

  /** Reads the inbound video's figures from getStats(); latency = server + round trip + jitter buffer. */
  async sample(pc) {
    const report = await pc.getStats();
    report.forEach((entry) => {
      if (entry.type !== "inbound-rtp" || entry.kind !== "video") return;
      if (entry.framesPerSecond !== undefined) this.set({ fps: entry.framesPerSecond.toFixed(1) });
      if (this.lastBytes) {
        const kbps = ((entry.bytesReceived - this.lastBytes.bytes) * 8) / (entry.timestamp - this.lastBytes.at);
        this.set({ bitrate: kbps.toFixed(0) });
      }
      this.lastBytes = { bytes: entry.bytesReceived, at: entry.timestamp };
      const jitterMs = entry.jitterBufferEmittedCount ? (1000 * entry.jitterBufferDelay) / entry.jitterBufferEmittedCount : 0;
      if (this.serverLatencyMs !== null && this.rttMs !== null) {
        this.set({ latency: (this.serverLatencyMs + this.rttMs + jitterMs).toFixed(0) });
      }
    });
  }
}
