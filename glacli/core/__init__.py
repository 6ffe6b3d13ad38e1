"""The math on arrays: prior estimation, calibration, combination, label shift, metrics, bootstrap,
probe fitting and prompt learning. No files, no console, no command line."""
