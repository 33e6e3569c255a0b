"""Simulation: traffic scenarios with delayed outcomes, and the demo story."""
