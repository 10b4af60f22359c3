"""`OciDagBundle`: an Airflow 3 DAG bundle whose code comes only from verified, team-signed images.

Configured in `[dag_processor] dag_bundle_config_list`:

    [{"name": "team_a_analytics", "classpath": "signing.airflow.OciDagBundle",
      "kwargs": {"ref": "registry.acme.io/airflow/team_a/team_a_analytics:2026.11.1",
                 "policy": "/etc/dagseal/policy.json"},
      "team_name": "team_a"}]

Guards against the gap DESIGN.md describes: a GitDagBundle runs whatever it finds; this bundle
runs nothing that `signing.gate.admit` did not accept for the entry's team (signature, signer,
team, bundle, expiry, rollback, blob digests, safe extraction). Until a bundle is accepted its
`path` is a non-existent folder, so a refused bundle yields no DAGs, and the refusal is logged
with its check and reason. A refused refresh keeps the version accepted before.

The team: Airflow 3.3.2's DagBundlesManager reads the entry's `team_name` but does not pass it to
the bundle class (it calls `bundle_class(name=, version=, **kwargs)`), so the bundle reads its own
entry from the same config. A `team` kwarg is accepted only if it agrees with `team_name`.

Versions are manifest digests. A worker asking for a specific version (a digest Airflow recorded
when the DAG was parsed) gets exactly that digest, verified again; because Airflow itself chose
that digest, such a pinned start may be older than the newest accepted version (the explicit
downgrade of rule 5), unless `allow_versioned_downgrade` is False.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NoReturn

from airflow.dag_processing.bundles.base import BaseDagBundle

from registry.errors import DagsealError, Refused

log = logging.getLogger(__name__)


def team_of_entry(name: str) -> str | None:
    """The `team_name` of the dag_bundle_config_list entry called `name` (None if it has none)."""
    from airflow.configuration import conf

    for entry in conf.getjson("dag_processor", "dag_bundle_config_list") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get("team_name")
    return None


class OciDagBundle(BaseDagBundle):
    """A DAG bundle materialised from a signed OCI image (see the module docstring)."""

    supports_versioning = True

    def __init__(self, *, ref: str, policy: str, state_dir: str | None = None, team: str | None = None,
                 plain_http: bool = False, allow_versioned_downgrade: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ref = ref
        self.policy_path = policy
        self.state_dir = state_dir
        self.plain_http = plain_http
        self.allow_versioned_downgrade = allow_versioned_downgrade
        configured = team_of_entry(self.name)
        if team and configured and team != configured:
            raise DagsealError(f"bundle {self.name}: kwargs team {team!r} disagrees with team_name {configured!r}")
        self.team = configured or team
        self._dags: Path | None = None
        self._digest: str | None = None

    # -- BaseDagBundle ------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The verified dags/ folder; before acceptance (or after a refusal) a folder that does not exist."""
        return self._dags if self._dags is not None else self.base_dir / "not-verified"

    def get_current_version(self) -> str | None:
        return self._digest

    def initialize(self) -> None:
        with self.lock():
            self._admit()
        super().initialize()

    def refresh(self) -> None:
        if self.version:
            return  # a pinned version never changes
        with self.lock():
            self._admit()

    def view_url(self, version: str | None = None) -> str | None:
        return None

    # -- dagseal ------------------------------------------------------------------------------------
    def _reference(self) -> str:
        if not self.version:
            return self.ref
        from registry.ref import parse_reference

        return str(parse_reference(self.ref).pinned(self.version))

    def _admit(self) -> None:
        from registry.ref import parse_reference
        from signing.gate import Options, admit
        from signing.state import HostState, state_dir
        from signing.trust import load_policy

        if not self.team:
            self._refused(Refused(f"bundle {self.name} has no team_name in dag_bundle_config_list",
                                  check="team", hint="set team_name on the entry ([core] multi_team = True)"))
        opts = Options(team=self.team, policy=load_policy(self.policy_path), state=HostState(state_dir(self.state_dir)),
                       allow_downgrade=bool(self.version) and self.allow_versioned_downgrade,
                       plain_http=self.plain_http)
        expected = parse_reference(self.ref).repository.rsplit("/", 1)[-1]
        try:
            admitted = admit(self._reference(), opts, expected_bundle=expected)
        except Refused as exc:
            self._refused(exc)
        assert admitted.entry is not None
        for note in admitted.notes:
            log.warning("dagseal: bundle %s: %s", self.name, note)
        self._dags, self._digest = admitted.entry.dags, admitted.verified.digest
        log.info("dagseal accepted bundle %s for team %s: version %s digest %s signer %s", self.name, self.team,
                 admitted.verified.version, admitted.verified.digest, admitted.verified.signer)

    def _refused(self, exc: Refused) -> NoReturn:
        """Log and raise. A refused refresh keeps serving the version accepted before (a moved
        tag or a tampered push must not take a team's DAGs down); a refused first start serves
        nothing."""
        log.error("dagseal REFUSED bundle %s (%s) for team %s: [%s] %s", self.name, self.ref, self.team,
                  exc.check, exc)
        raise exc
