"""The local demo's server (server.py: the JSON API, the checks, one generation at a time), what it
generates with (backends.py: a Pipeline, or the mini's three models) and its page (static/). Driven by
the command `python -m sd.demo`; it sits with the commands on the top floor (it reads sd.mini's runs)."""
