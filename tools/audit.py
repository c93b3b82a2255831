"""Dependency audit: every pinned package of requirements.lock checked by pip-audit against OSV.

pip-audit answers "no known vulnerabilities" both when it checked and when it could not ask (a
package the service does not know is skipped, not failed), so this wrapper reads its JSON report
and says which of three things happened:

  exit 1  vulnerabilities were found that audit-ignore.txt does not triage: CI fails;
  exit 0  every package was checked and nothing untriaged was found;
  exit 0  the vulnerability service could not be reached or knew none of the packages: the audit
          did NOT run, and the output says so in capitals; `--require` turns this into exit 2
          (for machines that have the network);
  exit 3  pip-audit failed for any other reason (an unpinned line in the lock, a crash): CI fails.

audit-ignore.txt holds one triaged vulnerability id per line, `ID  # why it does not apply`.

usage: python tools/audit.py [--lock requirements.lock] [--osv-url URL] [--out FILE] [--require]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OSV_URL = "https://api.osv.dev/v1/query"


@dataclass
class AuditResult:
    ran: bool
    failed: bool = False  # pip-audit failed for a reason other than the network
    audited: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # package -> pip-audit's reason
    findings: list[dict[str, object]] = field(default_factory=list)  # untriaged
    triaged: list[dict[str, object]] = field(default_factory=list)
    error: str = ""

    @property
    def exit_code(self) -> int:
        return 3 if self.failed else 1 if self.findings else 0


def read_ignores(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


def classify(report: dict[str, object], ignores: set[str]) -> AuditResult:
    """pip-audit's JSON report -> what was audited, skipped, found and triaged."""
    result = AuditResult(ran=True)
    for dep in report.get("dependencies", []):  # type: ignore[union-attr]
        name = f"{dep['name']}=={dep.get('version', '?')}"
        if "skip_reason" in dep:
            result.skipped[dep["name"]] = dep["skip_reason"]
            continue
        result.audited.append(name)
        for vuln in dep.get("vulns", []):
            ids = {vuln["id"], *vuln.get("aliases", [])}
            entry = {
                "package": name,
                "ids": sorted(ids),
                "fix_versions": vuln.get("fix_versions", []),
                "description": vuln.get("description", ""),
            }
            (result.triaged if ids & ignores else result.findings).append(entry)
    # A service that knew none of the packages did not audit anything.
    result.ran = bool(result.audited)
    return result


# How requests and pip-audit say that the service could not be reached at all.
_UNREACHABLE = re.compile(
    r"ConnectionError|NameResolutionError|Max retries exceeded|Could not connect|timed out"
)


def run_pip_audit(
    pip_audit: Path, lock: Path, osv_url: str, timeout: int
) -> tuple[dict[str, object] | None, str]:
    """(JSON report, "") or (None, why pip-audit produced no report)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        completed = subprocess.run(
            [
                str(pip_audit),
                "--requirement", str(lock),
                "--no-deps",  # the lock pins every package already; no resolution needed
                "--disable-pip",
                "--vulnerability-service", "osv",
                "--osv-url", osv_url,
                "--timeout", str(timeout),
                "--progress-spinner", "off",
                "--format", "json",
                "--output", str(out),
            ],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if out.is_file():
            return json.loads(out.read_text()), ""
        last_line = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"pip-audit exited {completed.returncode}: {last_line}"


def unreachable(error: str) -> bool:
    return bool(_UNREACHABLE.search(error))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--ignore", type=Path, default=ROOT / "audit-ignore.txt")
    parser.add_argument("--osv-url", default=OSV_URL)
    parser.add_argument("--pip-audit", type=Path, default=ROOT / ".venv-audit" / "bin" / "pip-audit")
    parser.add_argument("--timeout", type=int, default=15)
    parser.add_argument("--out", type=Path, help="Also write the summary as JSON here.")
    parser.add_argument("--require", action="store_true", help="Exit 2 when the audit could not run.")
    args = parser.parse_args()

    report, error = run_pip_audit(args.pip_audit, args.lock, args.osv_url, args.timeout)
    if report is not None:
        result = classify(report, read_ignores(args.ignore))
    else:
        result = AuditResult(ran=False, failed=not unreachable(error), error=error)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.__dict__, indent=1))

    for finding in result.findings:
        ids, fixed = " ".join(finding["ids"]), finding["fix_versions"]  # type: ignore[arg-type]
        print(f"VULNERABLE {finding['package']}: {ids} (fixed in {fixed})")  # noqa: T201
    for finding in result.triaged:
        ids = " ".join(finding["ids"])  # type: ignore[arg-type]
        print(f"triaged    {finding['package']}: {ids} (see {args.ignore.name})")  # noqa: T201
    if result.failed:
        print(f"AUDIT FAILED: {error}")  # noqa: T201
        return result.exit_code
    if not result.ran:
        why = error or f"the service knew none of the {len(result.skipped)} packages"
        print(f"AUDIT NOT RUN: {why} ({args.osv_url})")  # noqa: T201
        return 2 if args.require else 0
    if result.skipped:
        print(f"not audited ({len(result.skipped)}): {', '.join(sorted(result.skipped))}")  # noqa: T201
    print(  # noqa: T201
        f"audited {len(result.audited)} packages: {len(result.findings)} untriaged, "
        f"{len(result.triaged)} triaged vulnerabilities"
    )
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
