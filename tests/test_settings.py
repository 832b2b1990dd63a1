"""Settings from every source, --help, clear errors, HTTPS."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.serve import ROOT, free_port, wait_healthy
from settings import Settings, load_settings


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "server.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_sources_rank_defaults_file_environment_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "stylecam.json"
    config.write_text(json.dumps({"port": 7000, "transform": "edges", "max-sessions": 2, "delay_ms": 5}))
    monkeypatch.setenv("STYLECAM_PORT", "7100")
    monkeypatch.setenv("STYLECAM_MAX_SESSIONS", "3")
    settings = load_settings(["--config", str(config), "--port", "7200"])
    assert settings.port == 7200, "a flag beats the environment"
    assert settings.max_sessions == 3, "the environment beats the file"
    assert settings.transform == "edges", "the file beats the default"
    assert settings.delay_ms == 5
    assert settings.host == Settings().host == "127.0.0.1", "listens on loopback by default"
    monkeypatch.setenv("STYLECAM_CONFIG", str(config))
    assert load_settings([]).transform == "edges", "STYLECAM_CONFIG names the file too"


def test_help_lists_every_setting_with_its_default() -> None:
    result = run_server("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name, field in Settings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in text, name
        assert field.description and " ".join(field.description.split()[:4]) in text
    assert "(default: 8080)" in text and "(default: 127.0.0.1)" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "--port"),
        (["--transform", "sepia"], "sepia"),
        (["--cert", "/nonexistent.pem"], "--key"),
        (["--config", "/nonexistent.json"], "cannot read config file"),
    ],
)
def test_bad_settings_fail_with_a_message_not_a_traceback(args: list[str], message: str) -> None:
    result = run_server(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def write_self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_https_with_cert_and_key(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *[
            sys.executable,
            "server.py",
            "--transform",
            "invert",
            "--port",
            str(port),
            "--cert",
            str(cert),
            "--key",
            str(key),
        ],
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector) as http:
            await wait_healthy(f"https://127.0.0.1:{port}", session=http)
            async with http.get(f"https://127.0.0.1:{port}/") as response:
                assert response.status == 200
    finally:
        process.terminate()
        await process.wait()


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in readme, name
