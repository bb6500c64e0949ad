"""Extensions to Feast used by gd_provider (importable by the ``feast`` CLI through ``offline_store.type``)."""
