"""Airflow sensors of gd_provider."""
