"""Notifications about alerts: stored in an outbox with the alert change, sent later.

- :mod:`.config`: the ``[alerts.receivers]`` section (webhooks, Alertmanagers, teams);
- :mod:`.formats`: the bodies (JSON, WeCom and DingTalk robots, Alertmanager v2), pure;
- :mod:`.outbox`: an alert change → the rows to insert with it, pure;
- :mod:`.sender`: the controller's thread that delivers the rows and retries them.
"""
