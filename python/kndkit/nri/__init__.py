"""NRI (Node Resource Interface) plugin support: multiplexer, ttrpc, model and plugin."""
