"""Core math of kd_probe: pure torch, no Lightning import."""
