"""The microscope app (``viscnn serve``): a thin Dash layer over pure figure builders and circuit queries."""
