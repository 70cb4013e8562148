"""Offline preprocessing of a model into ``prepped_models/NAME`` (see :mod:`viscnn.prepped`)."""

from viscnn.prep.config import PrepConfig, load_config
from viscnn.prep.pipeline import run_prep

__all__ = ["PrepConfig", "load_config", "run_prep"]
