"""The demo's second domain: retail demand for dynamic pricing (a regression and a multiclass model).

* :mod:`.schema` - column names, labels, classes, the training spec;
* :mod:`.generator` - seeded synthetic sales and daily feature snapshots, corruptions;
* :mod:`.feature_repo` - the Feast repo (project ``gd_demand``, its own folder ``<home>/demand_repo``);
* :mod:`.expectations` - the validation suites of both models;
* :mod:`.setup` - all of it in a project home, plus the ``feast_demand`` connection
  (``python -m gd_provider.demo.demand``).

The retraining configs are ``example_dags/configs/demand_regression.yaml`` and
``example_dags/configs/demand_level_multiclass.yaml``.
"""
