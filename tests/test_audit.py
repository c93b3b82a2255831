"""The dependency audit (tools/audit.py) with the real pip-audit against a local OSV service.

The public OSV API cannot be reached from the machines this project is built on, so these tests
stand up a small server that speaks OSV's /v1/query protocol and report a vulnerability in one
pinned package. They prove that the CI step fails on an untriaged finding, passes once the finding
is triaged, and says loudly when it could not audit at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.live import free_port

ROOT = Path(__file__).resolve().parents[1]
PIP_AUDIT = ROOT / ".venv-audit" / "bin" / "pip-audit"
VULNERABLE = ("pillow", "10.0.0")  # the package and version our fake advisory names
LOCK = "fastapi==0.115.0\npillow==10.0.0\nnumpy==2.1.0\n"


class OsvService:
    """Answers OSV queries: one advisory for VULNERABLE, none for anything else; counts queries."""

    def __init__(self) -> None:
        self.queries: list[dict[str, object]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                service.queries.append(query)
                package = query["package"]["name"], query["version"]
                body = json.dumps(_advisory() if package == VULNERABLE else {}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/v1/query"

    def __enter__(self) -> OsvService:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


def _advisory() -> dict[str, object]:
    return {
        "vulns": [
            {
                "id": "GHSA-test-0000-0000",
                "aliases": ["CVE-2099-0001"],
                "summary": "a test advisory",
                "affected": [
                    {
                        "package": {"name": "pillow", "ecosystem": "PyPI"},
                        "ranges": [
                            {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "10.0.1"}]}
                        ],
                    }
                ],
            }
        ]
    }


@pytest.fixture(scope="module")
def osv() -> Iterator[OsvService]:
    if not PIP_AUDIT.is_file():
        pytest.fail(f"{PIP_AUDIT} is missing: `make audit-tools` installs it (make test does)")
    with OsvService() as service:
        yield service


def audit(
    tmp_path: Path, osv_url: str, *extra: str, ignores: str = "", lock: str = LOCK
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "requirements.lock").write_text(lock)
    (tmp_path / "ignore.txt").write_text(ignores)
    return subprocess.run(
        [
            sys.executable, str(ROOT / "tools" / "audit.py"),
            "--lock", str(tmp_path / "requirements.lock"),
            "--ignore", str(tmp_path / "ignore.txt"),
            "--osv-url", osv_url,
            "--timeout", "5",
            "--out", str(tmp_path / "audit.json"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def test_an_untriaged_vulnerability_fails_the_audit(tmp_path: Path, osv: OsvService) -> None:
    before = len(osv.queries)
    completed = audit(tmp_path, osv.url)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "VULNERABLE pillow==10.0.0: CVE-2099-0001 GHSA-test-0000-0000" in completed.stdout
    asked = {(q["package"]["name"], q["version"]) for q in osv.queries[before:]}  # type: ignore[index]
    assert asked == {("fastapi", "0.115.0"), ("pillow", "10.0.0"), ("numpy", "2.1.0")}
    summary = json.loads((tmp_path / "audit.json").read_text())
    assert summary["ran"] is True and len(summary["audited"]) == 3
    assert summary["findings"][0]["fix_versions"] == ["10.0.1"]


def test_a_triaged_vulnerability_passes_and_is_still_listed(tmp_path: Path, osv: OsvService) -> None:
    # Triage may name the advisory by any of its aliases.
    completed = audit(tmp_path, osv.url, ignores="CVE-2099-0001  # not reachable: we never call it\n")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "triaged    pillow==10.0.0: CVE-2099-0001 GHSA-test-0000-0000" in completed.stdout
    assert "audited 3 packages: 0 untriaged, 1 triaged" in completed.stdout


def test_an_unreachable_service_is_reported_not_passed_silently(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1/query"
    completed = audit(tmp_path, closed)
    assert completed.returncode == 0
    assert "AUDIT NOT RUN" in completed.stdout
    assert json.loads((tmp_path / "audit.json").read_text())["ran"] is False
    assert audit(tmp_path, closed, "--require").returncode == 2


def test_any_other_pip_audit_failure_fails_the_audit(tmp_path: Path, osv: OsvService) -> None:
    # Not a network problem: an unpinned line makes pip-audit refuse the lock. That must fail CI,
    # not pass as "not run".
    completed = audit(tmp_path, osv.url, lock="pillow>=10\n")
    assert completed.returncode == 3, completed.stdout + completed.stderr
    assert "AUDIT FAILED" in completed.stdout and "AUDIT NOT RUN" not in completed.stdout
