"""stylecam: restyle a webcam live over WebRTC. `python server.py --help` lists the settings."""

from __future__ import annotations

import logging
import ssl
import sys
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from settings import Settings, SettingsFileError, describe_errors, load_settings
from signaling.app import build_app
from transforms.catalog import build_engine
from transforms.host import EngineHost, TransformLoadError
from transforms.selfcheck import run_check

logger = logging.getLogger("stylecam")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.cert is None or settings.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.cert, settings.key)
    except (ssl.SSLError, OSError) as exc:
        message = f"stylecam: cannot use --cert {settings.cert} / --key {settings.key}: {exc}"
        raise SystemExit(message) from exc
    return context


def check(settings: Settings) -> None:
    """`--check`: load, run frames through the real engine, report on stdout; exit 1 on failure."""
    # The check times the model: the similarity filter would answer some frames without it.
    settings = settings.model_copy(update={"similarity_threshold": 0.0})
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        logger.warning("%s", message)

    try:
        engine = build_engine(settings, warn)
    except TransformLoadError as exc:
        raise SystemExit(f"stylecam check: FAILED: {exc}") from None
    except Exception as exc:
        logger.debug("loading failed", exc_info=True)
        raise SystemExit(f"stylecam check: FAILED: {type(exc).__name__}: {exc} (--log-level DEBUG: details)") from None
    engine.start()
    try:
        report = run_check(engine, engine.transform.details(), warnings)
    finally:
        engine.stop()
    sys.stdout.write(report.render() + "\n")
    if report.failure is not None:
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:
        raise SystemExit(f"stylecam: invalid settings:\n{describe_errors(exc)}") from None
    except SettingsFileError as exc:
        raise SystemExit(f"stylecam: {exc}") from None
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":
        logging.getLogger("aioice").setLevel(logging.WARNING)  # a line per ICE check otherwise
    if settings.check:
        check(settings)
        return
    context = tls_context(settings)
    host = EngineHost(lambda warn: build_engine(settings, warn), transform=settings.transform, device=settings.device)
    scheme = "https" if context else "http"
    logger.info("stylecam %s on %s://%s:%d", settings.transform, scheme, settings.host, settings.port)
    web.run_app(
        build_app(settings, host),
        host=settings.host,
        port=settings.port,
        ssl_context=context,
        access_log=None,
        print=logger.info,
    )


if __name__ == "__main__":
    main()
