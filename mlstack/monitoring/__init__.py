"""Monitoring: live-traffic profiles, drift scoring, the monitor's steps."""
