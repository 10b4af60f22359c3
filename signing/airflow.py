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
("dagseal REFUSED bundle NAME (REF) for team T: [check] reason / fix: ...") and raised.
A refused refresh keeps the version accepted before.

The team (checked in `__init__`, before anything is fetched). Airflow 3.3.2's DagBundlesManager
reads the entry's `team_name` but does not pass it to the bundle class (`get_bundle` calls
`bundle_class(name=, version=, **kwargs)`), so the bundle reads its own entry from the same
config. With `[core] multi_team = True` the entry must have `team_name` (without it Airflow treats
the bundle's DAGs as belonging to no team, so verifying them for some team would be a lie); a
`team` kwarg is accepted only if it equals `team_name`. With multi-team off Airflow forbids
`team_name`, and the `team` kwarg names the team the images must be signed for. Both refusals
raise `Refused(check="team")` from the constructor: Airflow logs "Error creating bundle" and
skips the bundle; workers fail the task.

Versions are manifest digests (for a multi-platform bundle the signed index's digest; the tree is
that index's image for this machine's platform) (`get_current_version()` returns a `BundleVersion` whose `data`
records the bundle version, team and signer in `dag_version.version_data`). A worker asking for a
specific version (the digest Airflow recorded when the DAG was parsed: `get_bundle(name, version)`
then `initialize()`) gets exactly that digest of the configured repository, verified again; a
version that is not `sha256:<64 hex>` is refused before any store is opened. Because Airflow
itself chose that digest, such a pinned start may be older than the newest accepted version (the
explicit downgrade of rule 5), unless `allow_versioned_downgrade` is False. A pinned bundle never
refreshes.

How other Airflow 3.3.2 components reach this class (read from the installed source):

- `airflow dag-processor -B NAME ...`: `validate_dag_bundle_arg`, `sync_bundles_to_db` and
  `get_all_dag_bundles` construct EVERY configured bundle, then the processor keeps only the
  named ones; `initialize()`/`refresh()` (where verification happens) run only for those. So the
  constructor must stay cheap and offline (it only reads the config), a misconfigured entry is
  reported by every processor, and a processor limited to team A's bundles never fetches or
  verifies team B's images. Team ownership in the DB (`dag_bundle_team`) comes from `team_name`,
  the same value this class verifies against.
- `airflow triggerer --team-name T`: the triggerer never builds DAG bundles; it only picks the
  Trigger rows whose denormalised `team_name` (from `dag_bundle_team`) is T, and imports trigger
  classes from its own environment. This class is therefore not on that path; a team's triggerer
  gets verified trigger code by being started as `dagseal run --team T --policy P --bundle REF --
  airflow triggerer --team-name T` (site-packages of the verified image on PYTHONPATH).
- Task workers (`task_runner.parse`) and callback runners call `get_bundle(name, version)` then
  `initialize()`; the DAG processor's callback path catches `initialize()` errors (but not
  constructor errors other than ValueError), which is why version checks happen in `initialize()`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NoReturn

from airflow.dag_processing.bundles.base import BaseDagBundle

from registry.errors import BadInput, DagsealError, Refused

log = logging.getLogger(__name__)


def config_entry(name: str) -> dict[str, Any] | None:
    """The dag_bundle_config_list entry called `name` (None if there is none)."""
    from airflow.configuration import conf

    for entry in conf.getjson("dag_processor", "dag_bundle_config_list") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    return None


def team_of_entry(name: str) -> str | None:
    """The `team_name` of the dag_bundle_config_list entry called `name` (None if it has none)."""
    entry = config_entry(name)
    return entry.get("team_name") if entry else None


def resolve_team(name: str, kwarg_team: str | None) -> str:
    """The team bundle `name` is verified for; refuses a missing or contradicting team (check "team")."""
    from airflow.configuration import conf

    configured = team_of_entry(name)
    if conf.getboolean("core", "multi_team", fallback=False):
        if not configured:
            raise Refused(f"bundle {name}: its dag_bundle_config_list entry has no team_name, and [core] multi_team "
                          "is on, so Airflow would give its DAGs to no team", check="team",
                          hint=f'add "team_name": "<team>" to the entry of {name} (the team the dagseal policy gives '
                               "this bundle to) and create it with `airflow teams create <team>`")
        if kwarg_team and kwarg_team != configured:
            raise Refused(f"bundle {name}: kwargs team {kwarg_team!r} contradicts the entry's team_name "
                          f"{configured!r}", check="team",
                          hint=f"remove \"team\" from the kwargs of {name} (team_name is what Airflow uses) "
                               "or make both the same team")
        return configured
    if not kwarg_team:
        raise Refused(f"bundle {name}: no team to verify for ([core] multi_team is off and the entry's kwargs "
                      "have no team)", check="team",
                      hint=f'add "team": "<team>" to the kwargs of {name}, or turn on [core] multi_team and set '
                           "team_name on the entry")
    return kwarg_team


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
        self.team: str | None = None
        try:
            self.team = resolve_team(self.name, team)
        except Refused as exc:
            self._refused(exc)
        self._dags: Path | None = None
        self._digest: str | None = None
        self._data: dict[str, str] | None = None

    # -- BaseDagBundle ------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The verified dags/ folder; before acceptance (or after a refusal) a folder that does not exist."""
        return self._dags if self._dags is not None else self.base_dir / "not-verified"

    def get_current_version(self) -> Any:
        """The accepted manifest digest (as a BundleVersion with the signed facts, where Airflow has it)."""
        if self._digest is None:
            return None
        try:
            from airflow.dag_processing.bundles.base import BundleVersion
        except ImportError:  # Airflow before 3.3: plain strings
            return self._digest
        return BundleVersion(version=self._digest, data=dict(self._data or {}))

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
        """The reference to admit: the configured one, or its repository pinned at `version`."""
        from registry.digest import is_digest
        from registry.ref import parse_reference

        if not self.version:
            return self.ref
        if not is_digest(self.version):
            raise BadInput(f"bundle {self.name}: version {self.version!r} is not a manifest digest "
                           "(sha256:<64 lowercase hex>)",
                           hint="OciDagBundle versions are the digests Airflow recorded from get_current_version(); "
                                "ask for one of those, or for no version (the configured tag)")
        return str(parse_reference(self.ref).pinned(self.version))

    def _admit(self) -> None:
        from registry.ref import parse_reference
        from signing.gate import Options, admit
        from signing.state import HostState, state_dir
        from signing.trust import load_policy

        try:
            reference = self._reference()
            opts = Options(team=str(self.team), policy=load_policy(self.policy_path),
                           state=HostState(state_dir(self.state_dir)),
                           allow_downgrade=bool(self.version) and self.allow_versioned_downgrade,
                           plain_http=self.plain_http)
            expected = parse_reference(self.ref).repository.rsplit("/", 1)[-1]
            admitted = admit(reference, opts, expected_bundle=expected)
        except DagsealError as exc:
            self._refused(exc)
        assert admitted.entry is not None
        for note in admitted.notes:
            log.warning("dagseal: bundle %s: %s", self.name, note)
        v = admitted.verified
        if self.version and v.digest != self.version:  # defence in depth: admit works by digest
            self._refused(Refused(f"bundle {self.name}: asked for {self.version}, verified {v.digest}",
                                  check="blob-digest"))
        self._dags, self._digest = admitted.entry.dags, v.digest
        self._data = {"bundle_version": v.version, "team": v.team, "signer": v.signer}
        log.info("dagseal accepted bundle %s for team %s: version %s digest %s signer %s", self.name, self.team,
                 v.version, v.digest, v.signer)

    def _refused(self, exc: DagsealError) -> NoReturn:
        """Log and raise. A refused refresh keeps serving the version accepted before (a moved
        tag or a tampered push must not take a team's DAGs down); a refused first start serves
        nothing."""
        check = exc.check if isinstance(exc, Refused) else type(exc).__name__
        log.error("dagseal REFUSED bundle %s (%s) for team %s: [%s] %s", self.name,
                  f"{self.ref}@{self.version}" if self.version else self.ref, self.team or "<none>", check, exc)
        raise exc
