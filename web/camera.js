// The local camera: opening it, listing the cameras, and saying plainly why it is unavailable.

export class CameraError extends Error {}

const REASONS = {
  NotAllowedError: "Camera access was refused. Allow the camera for this page in the browser's site settings, then press Start again.",
  SecurityError: "Camera access was refused. Allow the camera for this page in the browser's site settings, then press Start again.",
  NotFoundError: "No camera was found. Connect one and press Start again.",
  NotReadableError: "The camera is busy or unavailable: another application may be using it.",
  OverconstrainedError: "The camera cannot deliver that resolution; choose another one.",
};

/** Why this page cannot ask for a camera at all, or null when it can. */
export function cameraBlockedReason() {
  if (!window.isSecureContext) {
    return `Browsers show the camera only to pages on https:// or localhost. Open this page over HTTPS (start the server with --cert and --key) or from the server itself at http://localhost:${location.port || 80}.`;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return "This browser cannot share a camera with a web page.";
  }
  return null;
}

export async function openCamera({ deviceId, width, height }) {
  const video = { width: { ideal: width }, height: { ideal: height } };
  if (deviceId) video.deviceId = { exact: deviceId };
  try {
    return await navigator.mediaDevices.getUserMedia({ video, audio: false });
  } catch (error) {
    throw new CameraError(REASONS[error.name] || `The camera could not be opened (${error.name || error}).`);
  }
}

/** Video inputs; their labels are known once the camera has been allowed. */
export async function listCameras() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((device) => device.kind === "videoinput");
}
