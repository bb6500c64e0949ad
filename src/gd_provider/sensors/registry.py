"""ModelVersionSensor: wait for a model version with given tags, or for an alias to move."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException


class ModelVersionSensor(BaseSensorOperator):
    """Succeeds when ``model_name`` has a version carrying every tag in ``tags`` (e.g.
    ``{"gd.blessed": "true", "gd.dag_id": "…"}``), or — with ``alias`` — when the alias exists and, if
    ``alias_changes_from`` is given, points at another version than that one. Pushes
    ``{name, version, alias}``. Reschedule mode by default, so waiting holds no worker slot.
    """

    template_fields: Sequence[str] = ("model_name", "tags", "alias", "alias_changes_from", "mlflow_conn_id")
    ui_color = "#e6f2ff"

    def __init__(
        self,
        *,
        model_name: str,
        tags: dict[str, str] | None = None,
        alias: str | None = None,
        alias_changes_from: str | None = None,
        mlflow_conn_id: str = "mlflow_default",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.model_name = model_name
        self.tags = tags
        self.alias = alias
        self.alias_changes_from = alias_changes_from
        self.mlflow_conn_id = mlflow_conn_id

    def poke(self, context: Any) -> PokeReturnValue:
        from gd_provider.core.registry import find_versions_by_tags, get_alias_version
        from gd_provider.hooks.mlflow import MlflowHook

        if not self.tags and not self.alias:
            raise AirflowFailException("ModelVersionSensor needs tags to match or an alias to watch")
        client = MlflowHook(self.mlflow_conn_id).get_conn()
        if self.tags:
            versions = find_versions_by_tags(client, self.model_name, self.tags)
            if not versions:
                self.log.info("No version of %s with tags %s yet", self.model_name, self.tags)
                return PokeReturnValue(False)
            version = versions[-1]
            return PokeReturnValue(True, {"name": self.model_name, "version": version, "alias": None})
        current = get_alias_version(client, self.model_name, str(self.alias))
        if current is None or (
            self.alias_changes_from is not None and current == str(self.alias_changes_from)
        ):
            self.log.info("%s@%s is %s; waiting", self.model_name, self.alias, current)
            return PokeReturnValue(False)
        return PokeReturnValue(True, {"name": self.model_name, "version": current, "alias": self.alias})
