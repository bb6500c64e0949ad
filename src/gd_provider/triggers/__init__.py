"""Airflow triggers (async, run by the triggerer) of gd_provider."""
