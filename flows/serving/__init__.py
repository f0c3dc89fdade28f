"""Serving registered generators over HTTP on Ray Serve (`ganpipe deploy`): the champion of each
served name, rolled out when its alias moves. api.py is pure (parsing, validation, encoding);
model.py loads and checks a version; rollout.py follows the alias; app.py holds the deployments."""
