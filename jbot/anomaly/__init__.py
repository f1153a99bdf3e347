"""Anomaly scores of a frozen encoder: ``detect``, ``scores``, ``sculpting``, ``report``."""
