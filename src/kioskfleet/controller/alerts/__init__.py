"""Alerts, decided without I/O (docs/decisions.md, "Where alerts are decided").

- :mod:`.config`: the ``[alerts]`` section (:class:`~.config.AlertsSettings`) and its compiled
  :class:`~.config.AlertPolicy`;
- :mod:`.rules`: a station's picture → the conditions active now;
- :mod:`.lifecycle`: a station's alerts + those conditions → transitions; people's actions;
- :mod:`.sites`: one ``site_offline`` incident when a site drops;
- :mod:`.suppress`: maintenance mode and silences;
- :mod:`.routing`: which team, and when an alert escalates.

The writer (and the API for people's changes) applies the :class:`~.model.Transition` values
they return; nothing here reads a clock, a database or the network.
"""
