"""Privileged access broker for HPC and AI-factory clusters."""

__version__ = "0.1.0"
