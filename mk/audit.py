"""pip-audit against PyPI's advisories, where only PyPI's project JSON is served (`make audit`).

pip-audit's PyPI service reads a release's advisories from ``/pypi/<name>/<version>/json``.
Where that route is not served (the PyPI mirror of this project's machines answers it with
404), pip-audit skips every package and reports nothing. ``/pypi/<name>/json`` is served: it
carries the advisories of the project's latest release. So, for a 404, this answers with the
project JSON when the pinned version is that latest release (the same advisories, the same
format); a pin below the latest stays skipped, and pip-audit names it as such. Everything else
(formats, ``--ignore-vuln``, exit 1 on a finding) is pip-audit's. Run by the pinned pip-audit
of ``mk/audit.mk``, whose internals (``pip_audit._cli``, ``_service.pypi``) this relies on.
"""

from __future__ import annotations

import re
import sys

from packaging.utils import canonicalize_version
from pip_audit import _cli
from pip_audit._service import pypi
from pip_audit._service.interface import SkippedDependency

_RELEASE_JSON = re.compile(r"https://pypi\.org/pypi/(?P<name>[^/]+)/(?P<version>[^/]+)/json")


class _ProjectJSONFallback:
    """A requests session whose per-release JSON 404 falls back to the project JSON."""

    def __init__(self, session):
        self._session = session
        self.latest: dict[str, str] = {}  # name -> latest release, for pins below it

    def get(self, url, **kwargs):
        response = self._session.get(url, **kwargs)
        release = _RELEASE_JSON.fullmatch(url)
        if response.status_code != 404 or release is None:
            return response
        project = self._session.get(f"https://pypi.org/pypi/{release['name']}/json", **kwargs)
        if not project.ok:
            return response
        latest = project.json()["info"]["version"]
        if canonicalize_version(latest) == canonicalize_version(release["version"]):
            return project
        self.latest[release["name"]] = latest
        return response


class PyPIService(pypi.PyPIService):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.session = _ProjectJSONFallback(self.session)

    def query(self, spec):
        dep, vulns = super().query(spec)
        latest = self.session.latest.get(getattr(spec, "canonical_name", None))
        if dep.is_skipped() and latest:
            dep = SkippedDependency(name=spec.name, skip_reason=(
                f"not audited: {spec.version} is below the latest release {latest}, "
                "and only the latest's advisories are served here"))
        return dep, vulns


if __name__ == "__main__":
    _cli.PyPIService = PyPIService
    sys.exit(_cli.audit())
