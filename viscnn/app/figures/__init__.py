"""Pure figure builders: plain dicts and numpy in, Plotly/Cytoscape-ready dicts out (no Dash)."""
