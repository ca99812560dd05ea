"""Shipped configuration data (package data only, no code): accelerator configs (``*.yaml``), energy tables
(``energy/``), DSE sweep specs (``sweeps/``) and the resource-model calibration runs (``calibration/runs.csv``).
Find them with :mod:`hw.data_files`."""
