"""Sphinx configuration file for the stack package documentation (documenteer layout)."""

from documenteer.conf.pipelinespkg import *  # noqa: F403

project = "meas_extensions_deepdisc"
html_theme_options["logotext"] = project  # noqa: F405
html_title = project
html_short_title = project
doxylink = {}
exclude_patterns = ["changes/*"]
